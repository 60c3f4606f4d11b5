"""Fitting a density to a table with defaults that follow the data: ``fit_tabular``.

The model starts as the full-covariance Gaussian of the training rows (a fixed ``Whitening``
layer, its covariance shrunk towards the diagonal by the amount that scores best on the
validation rows) and a flow body that starts as the identity. Training keeps its best
validation weights, and the Gaussian itself is one of the candidates: the fitted model's
validation log-likelihood is never below the Gaussian's, by construction. The body's size,
regularisation and schedule come from ``flowkit.train.sizing.choose`` (rows, columns, time).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowkit.flow import Flow
from flowkit.presets import build
from flowkit.train.density import as_rows, fit_density
from flowkit.train.result import FitResult
from flowkit.train.sizing import SHRINKAGE_GRID, Choice, choose

__all__ = ["TabularFit", "fit_tabular", "gaussian_flow", "mean_nll"]


@dataclass
class TabularFit:
    """What ``fit_tabular`` returns.

    Attributes:
        flow: the fitted flow (its first layer whitens; CPU, eval mode).
        result: the training run's ``FitResult`` (None when the Gaussian won before training).
        choice: the configuration used, with the reason for each choice.
        gaussian: the full-covariance Gaussian of the training rows as a ``Flow`` (for baselines).
        train_nll, validation_nll: mean negative log-likelihood (nats per row) of the flow on
            the training and validation rows (``validation_nll`` None without validation rows).
        gaussian_train_nll, gaussian_validation_nll: the same for ``gaussian``.
        train_rows, validation_rows: indices of the rows of ``data`` in each split.
        kept: ``"flow"``, or ``"gaussian"`` when the flow did not beat the Gaussian on validation.
    """

    flow: Flow
    result: FitResult | None
    choice: Choice
    gaussian: Flow
    train_nll: float
    validation_nll: float | None
    gaussian_train_nll: float
    gaussian_validation_nll: float | None
    train_rows: np.ndarray
    validation_rows: np.ndarray
    kept: str = "flow"
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def mean_nll(flow: Flow, x: Tensor, context: Tensor | None = None, batch_size: int = 8192) -> float:
    """Mean negative log-likelihood of the rows of ``x`` in nats per row (eval mode)."""
    was_training = flow.training
    flow.eval()
    try:
        return float(-flow.log_prob(x, context, batch_size=batch_size).double().mean())
    finally:
        flow.train(was_training)


def gaussian_flow(x: Tensor, shrinkage: float = 0.0, context_features: int = 0) -> Flow:
    """The Gaussian with the rows' mean and (shrunk) covariance, as a flow: a ``Whitening`` layer
    over a standard normal base.

    Example:
        >>> import torch
        >>> x = torch.randn(1000, 2, dtype=torch.float64) * torch.tensor([1.0, 3.0], dtype=torch.float64)
        >>> flow = gaussian_flow(x)
        >>> round(flow.sample(100000).std(0)[1].item(), 1)
        3.0
    """
    flow = build("maf", features=x.shape[1], context_features=context_features, transforms=1,
                 hidden_features=8, whiten=True).to(x.dtype)
    flow.bijector = type(flow.bijector)([flow.bijector[0]])  # the whitening layer alone
    flow.bijector[0].fit(x, shrinkage)
    return flow.eval()


def best_shrinkage(train: Tensor, validation: Tensor | None) -> tuple[float, float | None]:
    """The shrinkage of the covariance towards its diagonal that scores best on ``validation``
    (0 when the covariance is positive definite and there are no validation rows), and that score."""
    best: tuple[float, float | None] = (math.nan, None)
    for shrinkage in SHRINKAGE_GRID:
        try:
            flow = gaussian_flow(train, shrinkage)
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


def _split(rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    held_out = min(int(round(rows * fraction)), rows - 2) if fraction > 0 else 0
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def _seconds_per_step(flow: Flow, x: Tensor, context: Tensor | None, batch_size: int, device: torch.device) -> float:
    """Wall-clock seconds of one training step of ``flow`` at ``batch_size`` (a few steps of a copy)."""
    trial = copy.deepcopy(flow).to(device).train()
    optimizer = torch.optim.Adam(trial.parameters(), lr=1e-6)
    generator = torch.Generator().manual_seed(0)
    timings = []
    for _ in range(4):
        index = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=generator)
        xb = x[index].to(device)
        cb = None if context is None else context[index].to(device)
        started = time.perf_counter()
        loss = -trial(xb, cb).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - started)
    return float(np.median(timings[1:]))  # the first step pays one-off allocation


def fit_tabular(
    data: Tensor | np.ndarray,
    *,
    context: Tensor | np.ndarray | None = None,
    time_limit: float | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    overrides: dict[str, Any] | None = None,
    progress: bool | str | None = "auto",
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    metrics_csv: str | os.PathLike[str] | None = None,
    compile: bool = False,
    bf16: bool = False,
    resume_hint: str | None = None,
    dtype: torch.dtype = torch.float32,
    announce: Callable[[Choice], None] | None = None,
) -> TabularFit:
    """Fit a flow to the rows of ``data`` with a configuration chosen from its size.

    Args:
        data: ``(rows, columns)`` values (standardised or not: the whitening layer adapts).
        context: ``(rows, context_columns)`` conditioning, for a conditional density.
        time_limit: seconds for the whole fit; the schedule is sized to end within it.
        seed: seeds the split, the initialisation and the shuffles.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        overrides: ``Choice`` fields to set instead of choosing them (``preset``, ``transforms``,
            ``hidden_features``, ``num_bins``, ``batch_size``, ``learning_rate``,
            ``weight_decay``, ``epochs``, ``max_steps``, ``patience``, ``validation_fraction``).
        progress, checkpoint, resume, metrics_csv, compile, bf16, resume_hint: as for ``fit_density``.
        dtype: the model's floating-point type.
        announce: called with the final ``Choice`` just before training starts.

    Returns:
        A ``TabularFit``.

    Example:
        >>> import torch
        >>> x = torch.randn(400, 3) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 1.0]])
        >>> fit = fit_tabular(x, overrides={"epochs": 3}, progress=False)
        >>> fit.validation_nll <= fit.gaussian_validation_nll
        True
    """
    started = time.monotonic()
    x = as_rows(data, torch.float64, "data")
    c = None if context is None else as_rows(context, torch.float64, "context")
    if c is not None and c.shape[0] != x.shape[0]:
        raise ValueError(f"context has {c.shape[0]} rows but data has {x.shape[0]}")
    rows, features = x.shape
    choice = choose(rows, features, time_limit, context_features=0 if c is None else c.shape[1],
                    overrides=overrides)
    train_rows, validation_rows = _split(rows, choice.validation_fraction, seed)
    x_train, x_val = x[train_rows], x[validation_rows] if len(validation_rows) else None
    c_train = None if c is None else c[train_rows]
    c_val = None if c is None or x_val is None else c[validation_rows]

    shrinkage, _ = best_shrinkage(x_train, x_val)
    gaussian = gaussian_flow(x_train, shrinkage).to(dtype)
    torch.manual_seed(seed)
    arguments = {"features": features, "context_features": 0 if c is None else c.shape[1],
                 **choice.preset_arguments(seed)}
    try:
        flow = build(choice.preset, whiten=True, **arguments).to(dtype)
        flow.bijector[0].fit(x_train, shrinkage)
    except ValueError:  # a flow without a flowkit chain (nflows_*): no Gaussian start
        torch.manual_seed(seed)
        flow = build(choice.preset, **arguments).to(dtype)
    x_train_d = x_train.to(dtype)
    x_val_d = None if x_val is None else x_val.to(dtype)
    c_train_d = None if c_train is None else c_train.to(dtype)
    c_val_d = None if c_val is None else c_val.to(dtype)
    initial = copy.deepcopy(flow.state_dict())  # the Gaussian: whitening, then the identity

    target = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          ("cpu" if device == "auto" else device))
    max_steps = choice.max_steps
    if time_limit is not None:
        remaining = time_limit - (time.monotonic() - started)
        per_step = _seconds_per_step(flow, x_train_d, c_train_d, choice.batch_size, target)
        epoch_steps = math.ceil(len(train_rows) / min(choice.batch_size, len(train_rows)))
        # Validation costs about a forward pass over the validation rows per epoch.
        per_epoch = per_step * (epoch_steps + 0.5 * (len(validation_rows) / max(choice.batch_size, 1)))
        affordable = int(0.9 * max(remaining, 0.0) / max(per_epoch, 1e-9)) * epoch_steps
        max_steps = max(epoch_steps, min(affordable, max_steps or affordable))
        choice.reasons["max_steps"] = (f"the cosine schedule ends within --time-limit: about {per_step * 1e3:.1f} ms "
                                       f"a step, {max_steps} steps")
        choice.max_steps = max_steps
    if announce is not None:
        announce(choice)
    remaining = None if time_limit is None else max(time_limit - (time.monotonic() - started), 1e-3)
    result = fit_density(
        flow, x_train_d, context=c_train_d, validation_data=x_val_d, validation_context=c_val_d,
        validation_fraction=0.0, epochs=choice.epochs, max_steps=max_steps, batch_size=choice.batch_size,
        learning_rate=choice.learning_rate, weight_decay=choice.weight_decay, patience=choice.patience,
        time_limit=remaining, seed=seed, device=target, checkpoint=checkpoint, resume=resume, progress=progress,
        metrics_csv=metrics_csv, compile=compile, bf16=bf16, resume_hint=resume_hint)
    flow = flow.cpu().eval()
    kept = "flow"
    gaussian_train = mean_nll(gaussian, x_train_d)
    gaussian_val = None if x_val_d is None else mean_nll(gaussian, x_val_d)
    val_nll = None if x_val_d is None else mean_nll(flow, x_val_d, c_val_d)
    if val_nll is not None and not val_nll <= gaussian_val and flow.config.get("whiten"):  # also catches NaN
        flow.load_state_dict(initial)  # the flow's own start: exactly the Gaussian
        kept = "gaussian"
        val_nll = mean_nll(flow, x_val_d, c_val_d)
    return TabularFit(
        flow=flow, result=result, choice=choice, gaussian=gaussian,
        train_nll=mean_nll(flow, x_train_d, c_train_d), validation_nll=val_nll,
        gaussian_train_nll=gaussian_train, gaussian_validation_nll=gaussian_val,
        train_rows=train_rows, validation_rows=validation_rows, kept=kept,
        seconds=time.monotonic() - started, extra={"shrinkage": shrinkage})
