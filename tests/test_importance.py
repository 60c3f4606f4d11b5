"""importance_sample: PSIS-weighted answers beat plain q averages when q is too narrow, log Z
comes with an honest standard error, and k-hat > 0.7 warns."""

from __future__ import annotations

import math

import pytest
import torch

import flowkit
from flowkit.bijectors import Chain
from flowkit.importance import ImportanceWarning, importance_sample, weighted_quantiles
from flowkit.train.diagnostics import psis_khat, psis_smooth

LOC = torch.tensor([1.0, -2.0], dtype=torch.float64)
SCALE = torch.tensor([2.0, 0.5], dtype=torch.float64)
LOG_Z = 3.0


def log_target(x: torch.Tensor) -> torch.Tensor:
    """``exp(3) N(LOC, diag(SCALE^2))``, unnormalised by a known constant."""
    return torch.distributions.Normal(LOC, SCALE).log_prob(x).sum(-1) + LOG_Z


def narrow_q(width: float, offset: float = 0.3) -> flowkit.Flow:
    """A Gaussian q, off-centre by ``offset`` standard deviations and ``width`` times too narrow."""
    base = flowkit.DiagGaussian(2, loc=(LOC + offset * SCALE).float(), scale=(width * SCALE).float())
    return flowkit.Flow(base, Chain([])).double()


def test_weighted_estimates_improve_on_plain_q_averages() -> None:
    torch.manual_seed(0)
    result = importance_sample(narrow_q(0.8), log_target, 20_000)  # k = 1 - 0.8^2 = 0.36 in theory
    assert result.reliable and result.khat < 0.7
    plain = result.samples
    plain_mean_error = (plain.mean(0) - LOC).abs().max()
    weighted_mean_error = (result.mean - LOC).abs().max()
    assert weighted_mean_error < 0.3 * plain_mean_error  # plain: 0.3 sd off; weighted: a few hundredths
    plain_std_error = (plain.std(0) / SCALE - 1).abs().max()  # 0.2 too narrow
    weighted_std_error = (result.covariance.diagonal().sqrt() / SCALE - 1).abs().max()
    assert weighted_std_error < 0.3 * plain_std_error
    assert abs(result.covariance[0, 1].item()) < 0.05
    # quantiles of N(LOC, SCALE^2) at the default levels
    normal = torch.distributions.Normal(LOC, SCALE)
    expected = torch.stack([normal.icdf(torch.tensor(level, dtype=torch.float64)) for level in result.levels])
    assert ((result.quantiles - expected) / SCALE).abs().max() < 0.1
    assert ((torch.quantile(plain, 0.05, dim=0) - expected[0]) / SCALE).abs().min() > 0.4  # q's own: 0.6 sd off
    # log Z: close to the truth in units of its standard error
    assert 0 < result.log_z_se < 0.02
    assert abs(result.log_z - LOG_Z) < 4 * result.log_z_se + 1e-3
    assert 0.3 * 20_000 < result.ess < 20_000
    torch.testing.assert_close(result.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(result.expectation(lambda x: x), result.mean)


def test_standard_error_matches_the_spread_over_repeats() -> None:
    estimates, errors = [], []
    for seed in range(12):
        torch.manual_seed(seed)
        result = importance_sample(narrow_q(0.9), log_target, 2000)
        estimates.append(result.log_z)
        errors.append(result.log_z_se)
    spread = torch.tensor(estimates).std().item()
    assert 0.5 < spread / (sum(errors) / len(errors)) < 2.0


def test_too_narrow_q_warns_and_is_flagged() -> None:
    torch.manual_seed(0)
    with pytest.warns(ImportanceWarning, match="k-hat"):
        result = importance_sample(narrow_q(0.3, offset=0.0), log_target, 4000)  # k = 0.91
    assert not result.reliable and result.khat > 0.7
    torch.manual_seed(0)
    with _no_warning():
        importance_sample(narrow_q(0.3, offset=0.0), log_target, 4000, warn=False)


class _no_warning:
    def __enter__(self) -> None:
        import warnings
        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        warnings.simplefilter("error", ImportanceWarning)

    def __exit__(self, *exc: object) -> None:
        self._catcher.__exit__(*exc)


def test_psis_smoothing_keeps_order_and_caps_the_tail() -> None:
    generator = torch.Generator().manual_seed(0)
    uniform = torch.rand(5000, generator=generator, dtype=torch.float64)
    log_weights = torch.log(((1 - uniform) ** -0.6 - 1) / 0.6)  # Pareto tail, shape 0.6
    smoothed, khat = psis_smooth(log_weights)
    assert khat == psis_khat(log_weights)
    shifted = log_weights - log_weights.max()
    # only the tail changes, ranks are kept, nothing exceeds the largest raw weight
    changed = (smoothed - shifted).abs() > 1e-12
    assert 0 < int(changed.sum()) <= math.ceil(3 * math.sqrt(5000))
    assert torch.equal(torch.argsort(smoothed[changed]), torch.argsort(shifted[changed]))
    assert smoothed.max().item() <= 0.0


def test_weighted_quantiles_with_equal_weights_and_a_point_mass() -> None:
    x = torch.randn(1001, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    equal = torch.full((1001,), 1 / 1001, dtype=torch.float64)
    torch.testing.assert_close(weighted_quantiles(x, equal, [0.5])[0], x.median(0).values)
    heavy = equal.clone()
    heavy[7] = 1e6
    heavy /= heavy.sum()
    torch.testing.assert_close(weighted_quantiles(x, heavy, [0.2, 0.8]), x[7].expand(2, 2), atol=5e-3, rtol=0)


def test_a_conditional_flow_and_bad_arguments() -> None:
    flow = flowkit.maf(features=2, context_features=1, transforms=1, hidden_features=8)
    result = importance_sample(flow, lambda x, context: -0.5 * (x - context).square().sum(-1), 500,
                               context=torch.ones(1), batch_size=128, warn=False)
    assert result.samples.shape == (500, 2) and result.quantiles.shape == (5, 2)
    with pytest.raises(ValueError, match="shape"):
        importance_sample(flow, lambda x, context: x, 16, context=torch.ones(1))
    with pytest.raises(ValueError, match="levels"):
        importance_sample(flow, lambda x, context: x.sum(-1), 16, context=torch.ones(1), levels=[1.5])
