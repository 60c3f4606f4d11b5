"""The Gaussian every tabular model starts as: the full-covariance Gaussian of the training rows
(its covariance shrunk towards the diagonal by the amount that scores best on validation rows),
as a flow of its own (``gaussian_flow``) and as the latent-end ``Whitening`` layer of a flow
whose other layers start as the identity (``fit_whitening``); and ``mean_nll``, the score both
are compared by."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from flowkit.bijectors.linear import block_moments
from flowkit.flow import Flow
from flowkit.memory import scoring_rows, trim_heap
from flowkit.presets import build
from flowkit.train.sizing import SHRINKAGE_GRID


@torch.no_grad()
def mean_nll(flow: Flow, x: Tensor, context: Tensor | None = None, batch_size: int | None = None) -> float:
    """Mean negative log-likelihood of the rows of ``x`` in nats per row (eval mode), in chunks of
    ``batch_size`` rows (by default ``flowkit.memory.scoring_rows``)."""
    batch_size = batch_size or scoring_rows(flow)
    was_training = flow.training
    flow.eval()
    try:
        return float(-flow.log_prob(x, context, batch_size=batch_size).double().mean())
    finally:
        flow.train(was_training)


def gaussian_flow(x: Tensor, shrinkage: float = 0.0, context_features: int = 0,
                  preprocessing: list[dict[str, Any]] | None = None,
                  moments: tuple[Tensor, Tensor] | None = None) -> Flow:
    """The Gaussian with the rows' mean and (shrunk) covariance, as a flow: a ``Whitening`` layer
    over a standard normal base (behind the ``preprocessing`` layers, when given, and then the
    Gaussian of the rows after them).

    Example:
        >>> import torch
        >>> x = torch.randn(1000, 2, dtype=torch.float64) * torch.tensor([1.0, 3.0], dtype=torch.float64)
        >>> flow = gaussian_flow(x)
        >>> torch.allclose(flow.sample(200000).std(0), x.std(0), rtol=0.02)
        True
    """
    # No transforms: the chain is the whitening layer alone, and the config rebuilds exactly that.
    flow = build("maf", features=x.shape[1], context_features=context_features, transforms=0,
                 whiten=True, preprocessing=preprocessing).to(x.dtype)
    flow.bijector[-1].fit_moments(*(moments or preprocessed_moments(x, preprocessing)), shrinkage)
    return flow.eval()


def preprocessed_moments(x: Tensor, preprocessing: list[dict[str, Any]] | None) -> tuple[Tensor, Tensor]:
    """Mean and covariance (``block_moments``) of the rows after the ``preprocessing`` layers in
    eval mode (integer columns at their cells' centres): what the Gaussian behind them is fitted
    to. A block at a time: a float64 copy of a large table would double its memory."""
    if not preprocessing:
        return block_moments(x.split(65_536))
    from flowkit.bijectors.base import Chain
    from flowkit.bijectors.preprocessing import make_preprocessing

    chain = Chain(make_preprocessing(preprocessing, x.shape[1])).eval()
    with torch.no_grad():
        return block_moments(chain(block.to(torch.float64))[0] for block in x.split(65_536))


@torch.no_grad()
def fit_whitening(flow: Flow, x: Tensor, context: Tensor | None = None, shrinkage: float = 0.0,
                  chunk: int = 16_384) -> None:
    """Initialise the latent-end ``Whitening`` layer of ``flow`` on the rows as the layers before it
    map them (at initialisation those are the identity up to permutations), so the flow starts
    as exactly the full-covariance Gaussian of ``x``.

    A layer that leaves a probe of the rows unchanged (to rounding) is the identity and is skipped;
    the others map the rows in chunks. On a million rows a spline body's forward pass would take
    minutes and, with autograd, many times the data's memory."""
    layers = flow.bijector.bijectors
    dtype = layers[-1].loc.dtype
    probe = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:256]
    before = x[probe].to(dtype)
    c_probe = None if context is None else context[probe].to(dtype)
    active = []
    for layer in layers[:-1]:
        after, log_det = layer(before, c_probe)
        tolerance = 1e-5 * (1 + float(before.abs().max()))
        if not (after.shape == before.shape and torch.allclose(after, before, rtol=0, atol=tolerance)
                and torch.allclose(log_det, torch.zeros_like(log_det), rtol=0, atol=1e-5)):
            active.append(layer)
        before = after

    def mapped(start: int) -> Tensor:
        y = x[start:start + chunk].to(dtype)
        c = None if context is None else context[start:start + chunk].to(dtype)
        for layer in active:
            y, _ = layer(y, c)
        return y

    layers[-1].fit_moments(*block_moments(mapped(start) for start in range(0, x.shape[0], chunk)), shrinkage)
    trim_heap()  # the blocks' memory


def best_shrinkage(train: Tensor, validation: Tensor | None, preprocessing: list[dict[str, Any]] | None = None,
                   moments: tuple[Tensor, Tensor] | None = None) -> tuple[float, float | None]:
    """The shrinkage of the covariance towards its diagonal that scores best on ``validation``
    (0 when the covariance is positive definite and there are no validation rows), and that score.
    ``moments``: the training rows' ``preprocessed_moments``, if already taken."""
    best: tuple[float, float | None] = (math.nan, None)
    moments = moments or preprocessed_moments(train, preprocessing)  # one pass over the rows for every shrinkage
    for shrinkage in SHRINKAGE_GRID:
        try:
            flow = gaussian_flow(train, shrinkage, preprocessing=preprocessing, moments=moments)
        except ValueError:  # singular at this shrinkage: fewer rows than columns, collinear columns
            continue
        if validation is None:
            return shrinkage, None
        score = mean_nll(flow, validation)
        if best[1] is None or score < best[1]:
            best = (shrinkage, score)
    if math.isnan(best[0]):
        raise ValueError("no Gaussian fits these rows: their covariance is singular even shrunk to its diagonal")
    return best
