"""Importance-weighted answers from a variational flow: ``importance_sample``.

A reverse-KL fit ``q`` is only an approximation of the target ``p``. Reweighting samples of ``q``
by ``w = p~ / q`` turns it into a proposal: expectations under ``p`` (means, covariances,
quantiles) become consistent however wrong ``q`` is, provided ``q`` covers ``p``'s mass. Raw
weights have heavy tails exactly when ``q`` is too narrow, so the weights are Pareto smoothed
(PSIS, ``flowkit.train.diagnostics.psis_smooth``), and the fitted tail shape ``k-hat`` says
whether to trust the result: below 0.5 good, 0.5 to 0.7 usable, above 0.7 not (a warning).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from flowkit.flow import Flow
from flowkit.train.diagnostics import effective_sample_size, psis_smooth

KHAT_THRESHOLD = 0.7


class ImportanceWarning(UserWarning):
    """The Pareto ``k-hat`` of the weights is above 0.7: the estimates are not to be trusted."""


@dataclass
class ImportanceResult:
    """What ``importance_sample`` returns; tensors are float64 on the CPU.

    Attributes:
        samples: ``(N, features)`` draws from ``q``.
        log_weights: ``(N,)`` raw log-weights ``log p~(x) - log q(x)``.
        weights: ``(N,)`` PSIS-smoothed weights, normalised to sum to one.
        mean: ``(features,)`` weighted mean.
        covariance: ``(features, features)`` weighted covariance.
        quantiles: ``(len(levels), features)`` weighted marginal quantiles at ``levels``.
        levels: the quantile levels.
        log_z: ``log mean(w)`` of the raw weights (``log Z`` of the unnormalised target).
        log_z_se: its standard error, by the delta method: ``std(w) / (sqrt(N) mean(w))``.
        ess: effective sample size of the smoothed weights, ``1 / sum(weights^2)``.
        khat: Pareto shape of the raw weights' tail.
    """

    samples: Tensor
    log_weights: Tensor
    weights: Tensor
    mean: Tensor
    covariance: Tensor
    quantiles: Tensor
    levels: tuple[float, ...]
    log_z: float
    log_z_se: float
    ess: float
    khat: float

    @property
    def reliable(self) -> bool:
        """``k-hat <= 0.7``: the PSIS estimates can be used."""
        return self.khat <= KHAT_THRESHOLD

    def expectation(self, function: Callable[[Tensor], Tensor]) -> Tensor:
        """Weighted ``E_p[function(x)]`` for a function mapping ``(N, features)`` to ``(N, ...)``."""
        values = function(self.samples).double()
        return torch.tensordot(self.weights, values, dims=1)


def importance_sample(
    flow: Flow,
    log_target: Callable[..., Tensor],
    num_samples: int = 4096,
    *,
    context: Tensor | None = None,
    levels: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
    batch_size: int | None = None,
    warn: bool = True,
) -> ImportanceResult:
    """Self-normalised, Pareto-smoothed importance sampling of ``exp(log_target)`` with ``q = flow``.

    Args:
        flow: the proposal ``q`` (typically fitted by ``fit_variational``).
        log_target: unnormalised log-density, ``(n, features) -> (n,)``; called as
            ``log_target(x, context)`` when ``context`` is given.
        num_samples: draws from ``q``.
        context: one ``(context_features,)`` row for a conditional flow.
        levels: quantile levels in ``(0, 1)``.
        batch_size: draw and score in chunks of this many rows (bounded memory).
        warn: emit an ``ImportanceWarning`` when ``k-hat > 0.7``.

    Returns:
        An ``ImportanceResult``.

    Example:
        >>> import torch, flowkit
        >>> q = flowkit.Flow(flowkit.DiagGaussian(1), flowkit.bijectors.Chain([]))  # N(0, 1)
        >>> log_p = lambda x: -0.5 * ((x - 0.5) / 1.2).square().sum(-1)  # N(0.5, 1.2^2), Z = 3.008
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> result = importance_sample(q, log_p, 20000)
        >>> round(result.mean.item(), 1), round(result.covariance.sqrt().item(), 1), round(math.exp(result.log_z), 1)
        (0.5, 1.2, 3.0)
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    levels = tuple(float(level) for level in levels)
    if not all(0 < level < 1 for level in levels):
        raise ValueError(f"quantile levels must lie in (0, 1), got {levels}")
    was_training = flow.training
    flow.eval()
    try:
        with torch.no_grad():
            chunk = batch_size or num_samples
            pieces = [_draw(flow, log_target, min(chunk, num_samples - start), context)
                      for start in range(0, num_samples, chunk)]
    finally:
        flow.train(was_training)
    samples = torch.cat([piece[0] for piece in pieces]).double().cpu()
    log_weights = torch.cat([piece[1] for piece in pieces]).double().cpu()
    smoothed, khat = psis_smooth(log_weights)
    weights = torch.softmax(smoothed, 0)
    mean = weights @ samples
    centred = samples - mean
    covariance = (centred * weights[:, None]).T @ centred
    # log Z from the raw weights (unbiased for Z); the delta method gives its standard error.
    log_z = (torch.logsumexp(log_weights, 0) - math.log(num_samples)).item()
    raw = torch.exp(log_weights - log_weights.max())
    log_z_se = (raw.std() / (math.sqrt(num_samples) * raw.mean())).item()
    result = ImportanceResult(
        samples=samples, log_weights=log_weights, weights=weights, mean=mean, covariance=covariance,
        quantiles=weighted_quantiles(samples, weights, levels), levels=levels, log_z=log_z,
        log_z_se=log_z_se, ess=effective_sample_size(smoothed), khat=khat,
    )
    if warn and not khat <= KHAT_THRESHOLD:
        warnings.warn(f"Pareto k-hat {khat:.2f} > {KHAT_THRESHOLD}: q misses mass of the target, so the "
                      "importance-weighted estimates and log Z are not to be trusted", ImportanceWarning,
                      stacklevel=2)
    return result


def weighted_quantiles(samples: Tensor, weights: Tensor, levels: Sequence[float]) -> Tensor:
    """Marginal quantiles of weighted samples, ``(len(levels), features)``.

    The empirical distribution puts ``weights[i]`` on ``samples[i]``; each quantile interpolates
    linearly between the midpoints of the cumulative weights (the weighted analogue of the
    Hazen rule, which for equal weights is ``torch.quantile``'s ``midpoint``-like rule).

    Example:
        >>> import torch
        >>> x = torch.arange(5.0).double()[:, None]
        >>> round(weighted_quantiles(x, torch.full((5,), 0.2, dtype=torch.float64), [0.5]).item(), 6)
        2.0
    """
    levels_tensor = torch.tensor(list(levels), dtype=torch.float64)
    columns = []
    for column in samples.double().T:
        values, order = torch.sort(column)
        sorted_weights = weights[order]
        midpoints = torch.cumsum(sorted_weights, 0) - 0.5 * sorted_weights
        columns.append(_interpolate(levels_tensor, midpoints, values))
    return torch.stack(columns, dim=1)


def _interpolate(points: Tensor, knots: Tensor, values: Tensor) -> Tensor:
    index = torch.searchsorted(knots, points).clamp(1, knots.numel() - 1)
    left, right = knots[index - 1], knots[index]
    fraction = ((points - left) / (right - left).clamp(min=1e-300)).clamp(0, 1)
    return values[index - 1] + fraction * (values[index] - values[index - 1])


def _draw(flow: Flow, log_target: Callable[..., Tensor], count: int,
          context: Tensor | None) -> tuple[Tensor, Tensor]:
    rows = None if context is None else torch.as_tensor(context).expand(count, -1)
    x, log_q = flow.rsample_and_log_prob(count, rows)
    log_p = log_target(x) if rows is None else log_target(x, rows)
    if not isinstance(log_p, Tensor) or log_p.shape != (count,):
        got = tuple(log_p.shape) if isinstance(log_p, Tensor) else type(log_p).__name__
        raise ValueError(f"log_target must return shape ({count},), got {got}")
    return x, log_p - log_q
