"""How good is a variational flow ``q`` for an unnormalised target ``p``? Importance weights say.

With samples ``x_i ~ q`` and log-weights ``log w_i = log_target(x_i) - log q(x_i)``:

- the ELBO is ``mean(log w)``, a lower bound on ``log Z``;
- ``log Z ~ logsumexp(log w) - log N`` is the importance-sampling estimate (consistent, and
  biased low by Jensen for finite ``N``);
- the effective sample size ``ESS = 1 / sum(normalised w^2)`` counts how many samples the
  weighted set is worth;
- ``k-hat``, the shape of a generalized Pareto distribution fitted to the largest weights
  (Pareto-smoothed importance sampling; Vehtari, Simpson, Gelman, Yao and Gabry), says whether
  the weights have finite variance: below 0.5 the estimates are reliable, between 0.5 and 0.7
  usable, above 0.7 ``q`` misses mass of ``p`` and ``log Z`` cannot be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from flowkit.flow import Flow


def variational_diagnostics(
    flow: Flow,
    log_target: Callable[..., Tensor],
    num_samples: int = 4096,
    context: Tensor | None = None,
) -> dict[str, float]:
    """ELBO, importance-sampling ``log Z``, effective sample size and PSIS ``k-hat`` of ``flow``.

    Args:
        flow: the variational distribution ``q``.
        log_target: unnormalised log-density, ``(n, features) -> (n,)``; called as
            ``log_target(x, context)`` when a context is given (as in ``reverse_kl_loss``).
        num_samples: importance samples drawn from ``q``.
        context: conditioning for a conditional flow.

    Returns:
        ``{"elbo", "log_z", "ess", "ess_fraction", "khat"}`` as Python floats; ``ess`` is a number
        of samples (between 1 and ``num_samples``) and ``ess_fraction`` is ``ess / num_samples``.

    Example:
        >>> import torch, flowkit
        >>> flow = flowkit.Flow(flowkit.DiagGaussian(2), flowkit.bijectors.Chain([]))
        >>> report = variational_diagnostics(flow, lambda x: flow.log_prob(x) + 1.0, 256)
        >>> round(report["log_z"], 4), round(report["ess_fraction"], 4)
        (1.0, 1.0)
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if context is not None and context.dim() == 1:
        context = context.expand(num_samples, -1)
    with torch.no_grad():
        x, log_q = flow.rsample_and_log_prob(num_samples, context)
        log_p = log_target(x) if context is None else log_target(x, context)
        if log_p.shape != (num_samples,):
            raise ValueError(f"log_target must return shape ({num_samples},), got {tuple(log_p.shape)}")
        # float64: logsumexp of thousands of weights and the squared weights of the ESS lose
        # digits in float32 exactly when the weights are spread out, where they matter most.
        log_weights = (log_p - log_q).double()
    return {
        "elbo": log_weights.mean().item(),
        "log_z": (torch.logsumexp(log_weights, 0) - math.log(num_samples)).item(),
        "ess": effective_sample_size(log_weights),
        "ess_fraction": effective_sample_size(log_weights) / num_samples,
        "khat": psis_khat(log_weights),
    }


def effective_sample_size(log_weights: Tensor) -> float:
    """``1 / sum(normalised w^2)``, computed from log-weights without overflow.

    Example:
        >>> import torch
        >>> round(effective_sample_size(torch.zeros(10)), 6)
        10.0
    """
    log_weights = log_weights.double()
    return torch.exp(2 * torch.logsumexp(log_weights, 0) - torch.logsumexp(2 * log_weights, 0)).item()


def psis_khat(log_weights: Tensor) -> float:
    """Pareto-smoothed importance sampling shape estimate ``k-hat`` of a set of log-weights.

    Fits a generalized Pareto distribution to the exceedances of the largest
    ``M = ceil(min(N / 5, 3 sqrt(N)))`` weights over the next largest, by the Zhang and Stephens
    (2009) empirical-Bayes method, and shrinks the shape towards 0.5 with the weakly informative
    prior of the PSIS paper (equivalent to 10 extra observations). Returns ``inf`` when the tail
    has too few distinct weights to fit (five or fewer), and ``nan`` for NaN log-weights.

    Args:
        log_weights: ``(N,)`` log importance weights, unnormalised; ``-inf`` is a zero weight.

    Example:
        >>> import torch
        >>> generator = torch.Generator().manual_seed(0)
        >>> light = psis_khat(0.3 * torch.randn(10000, generator=generator))  # lognormal weights
        >>> uniform = torch.rand(10000, generator=generator, dtype=torch.float64)
        >>> heavy = psis_khat(torch.log(((1 - uniform) ** -0.8 - 1) / 0.8))  # Pareto, shape 0.8
        >>> light < 0.5 < 0.7 < heavy
        True
    """
    return psis_smooth(log_weights)[1]


def psis_smooth(log_weights: Tensor) -> tuple[Tensor, float]:
    """Pareto-smoothed log-weights and ``k-hat`` (Vehtari, Simpson, Gelman, Yao and Gabry).

    The ``M`` largest weights (``M`` as in ``psis_khat``) are replaced by the expected order
    statistics of the generalized Pareto distribution fitted to them, ``cutoff + F^{-1}((j -
    1/2) / M)`` for ``j = 1..M``, capped at the largest raw weight: a few huge raw weights no
    longer dominate the estimates, at a bias that vanishes with ``N`` when ``k-hat < 0.7``. When
    the tail cannot be fitted (``k-hat`` inf or nan) the weights are returned unsmoothed.

    Args:
        log_weights: ``(N,)`` log importance weights, unnormalised.

    Returns:
        ``(smoothed, khat)``: float64 log-weights on the CPU, shifted so their maximum is 0 and in
        the original order, and the shape estimate.

    Example:
        >>> import torch
        >>> log_weights = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> smoothed, khat = psis_smooth(log_weights)
        >>> smoothed.shape, bool(smoothed.max() <= 0), khat < 0.7
        (torch.Size([1000]), True, True)
    """
    log_weights = log_weights.detach().double().flatten().cpu()
    if bool(torch.isnan(log_weights).any()):
        return log_weights, math.nan
    if bool(torch.isposinf(log_weights).any()):
        return log_weights, math.inf
    count = log_weights.numel()
    tail_length = math.ceil(min(0.2 * count, 3 * math.sqrt(count)))
    if tail_length + 1 > count:
        return log_weights - log_weights.max(), math.inf
    log_weights = log_weights - log_weights.max()
    sorted_log_weights, order = torch.sort(log_weights)
    # The cutoff is the largest weight below the tail; floored so exp() stays a normal number.
    cutoff = max(sorted_log_weights[-tail_length - 1].item(), math.log(torch.finfo(torch.float64).tiny))
    in_tail = sorted_log_weights > cutoff
    tail = sorted_log_weights[in_tail]
    if tail.numel() <= 4:
        return log_weights, math.inf
    exceedances = tail.exp() - math.exp(cutoff)
    shape, scale = _generalized_pareto_fit(exceedances)
    # Expected order statistics of the fitted tail, capped at the largest raw weight (0 here).
    levels = (torch.arange(tail.numel(), dtype=torch.float64) + 0.5) / tail.numel()
    if abs(shape) > 1e-12:
        quantiles = scale * torch.expm1(-shape * torch.log1p(-levels)) / shape
    else:
        quantiles = -scale * torch.log1p(-levels)
    smoothed_tail = torch.log(quantiles + math.exp(cutoff)).clamp(max=0.0)
    smoothed = log_weights.clone()
    smoothed[order[in_tail.nonzero().squeeze(1)]] = smoothed_tail
    return smoothed, shape


def _generalized_pareto_fit(exceedances: Tensor) -> tuple[float, float]:
    """Zhang-Stephens posterior-mean GPD shape ``k`` (with the PSIS prior) and scale ``sigma`` of
    sorted positive exceedances.

    In the parameterisation ``F(x) = 1 - (1 + k x / sigma)^(-1/k)``; heavier tails give larger k.
    """
    count = exceedances.numel()
    grid_size = 30 + int(math.sqrt(count))
    # Candidate values of theta = -k / sigma, placed by the quantile rule of Zhang and Stephens.
    index = torch.arange(1, grid_size + 1, dtype=torch.float64)
    first_quartile = exceedances[int(count / 4 + 0.5) - 1]
    theta = 1 / exceedances[-1] + (1 - torch.sqrt(grid_size / (index - 0.5))) / (3 * first_quartile)
    # Profile log-likelihood of each theta, with k(theta) = mean(log1p(-theta x)).
    shape = torch.log1p(-theta[:, None] * exceedances).mean(dim=1)
    profile = count * (torch.log(-theta / shape) - shape - 1)
    # Posterior weights of the grid points, normalised stably (each is 1 / sum exp(l_j - l_i)).
    weights = 1 / torch.exp(profile[None, :] - profile[:, None]).sum(dim=1)
    keep = weights >= 10 * torch.finfo(torch.float64).eps
    weights, theta = weights[keep], theta[keep]
    theta_posterior = (theta * weights).sum() / weights.sum()
    k = torch.log1p(-theta_posterior * exceedances).mean().item()
    scale = -k / theta_posterior.item()  # from the unshrunk k, as in the published algorithm
    # Weakly informative prior: k ~ 0.5 with the weight of 10 observations.
    prior_observations, prior_shape = 10, 0.5
    return (count * k + prior_observations * prior_shape) / (count + prior_observations), scale
