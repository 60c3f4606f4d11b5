"""The seed's Gaussian example: pathwise (reparameterised) gradients of E[f(z)], z = loc + scale * eps,
against closed forms and against numerical integration, and the fused sampling path of a Flow."""

from __future__ import annotations

import math

import pytest
import torch

import flowkit
from flowkit.bijectors import Chain

LOC, SCALE = 0.7, 1.3


def pathwise_estimates(f, repeats: int = 200, samples: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """``repeats`` independent pathwise estimates of (d/dloc, d/dscale) E[f(z)], each from ``samples``."""
    torch.manual_seed(0)
    base = flowkit.DiagGaussian(1, loc=torch.tensor([LOC]), scale=torch.tensor([SCALE]), trainable=True).double()
    estimates = []
    for _ in range(repeats):
        z = base.rsample(samples)
        d_loc, d_log_scale = torch.autograd.grad(f(z).mean(), [base.loc, base.log_scale])
        # The parameter is log(scale); the chain rule gives d/dscale = d/dlog(scale) / scale.
        estimates.append(torch.stack([d_loc[0], d_log_scale[0] / base.scale[0]]))
    estimates = torch.stack(estimates)
    return estimates.mean(0), estimates.std(0) / math.sqrt(repeats)


def assert_within_monte_carlo_error(estimate, standard_error, expected, sigmas: float = 5.0) -> None:
    for got, error, want in zip(estimate.tolist(), standard_error.tolist(), expected):
        assert abs(got - want) < sigmas * error + 1e-12, f"{got} vs {want} (s.e. {error})"
        assert error < 0.02, "the estimate should be precise enough for the check to mean something"


def test_pathwise_gradient_of_square_matches_closed_form() -> None:
    # E[z^2] = loc^2 + scale^2, so the gradients are 2 loc and 2 scale.
    estimate, error = pathwise_estimates(lambda z: z.square().sum(-1))
    assert_within_monte_carlo_error(estimate, error, [2 * LOC, 2 * SCALE])


def test_pathwise_gradient_of_non_polynomial_matches_numerical_integration() -> None:
    f = lambda z: torch.log1p(z.square()) * torch.cos(z)  # noqa: E731

    def expectation(loc: float, scale: float) -> float:
        z = torch.linspace(loc - 12 * scale, loc + 12 * scale, 200_001, dtype=torch.float64)
        density = torch.exp(-0.5 * ((z - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))
        return torch.trapezoid(f(z) * density, z).item()

    h = 1e-4
    d_loc = (expectation(LOC + h, SCALE) - expectation(LOC - h, SCALE)) / (2 * h)
    d_scale = (expectation(LOC, SCALE + h) - expectation(LOC, SCALE - h)) / (2 * h)
    estimate, error = pathwise_estimates(lambda z: f(z).sum(-1))
    assert_within_monte_carlo_error(estimate, error, [d_loc, d_scale])


def test_samples_carry_gradients_but_sample_does_not() -> None:
    base = flowkit.DiagGaussian(2, trainable=True)
    assert base.rsample(3).requires_grad
    assert not base.sample(3).requires_grad
    flow = flowkit.Flow(base, Chain([]))
    assert flow.rsample(3).requires_grad and not flow.sample(3).requires_grad


def test_base_log_prob_matches_torch_distributions() -> None:
    loc, scale = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.3, 1.0, 2.5])
    base = flowkit.DiagGaussian(3, loc=loc, scale=scale)
    z = torch.randn(10, 3) * 2
    expected = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    torch.testing.assert_close(base.log_prob(z), expected)
    z, log_prob = base.rsample_and_log_prob(5)
    torch.testing.assert_close(log_prob, base.log_prob(z))


@pytest.mark.parametrize("context_features", [0, 3])
def test_rsample_and_log_prob_agrees_with_log_prob(context_features: int) -> None:
    torch.manual_seed(1)
    flow = flowkit.realnvp(4, context_features=context_features, transforms=3, hidden_features=16).double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    context = torch.randn(64, context_features, dtype=torch.float64) if context_features else None
    x, log_q = flow.rsample_and_log_prob(64, context)
    torch.testing.assert_close(log_q, flow.log_prob(x, context), atol=1e-10, rtol=1e-10)
    assert log_q.requires_grad and x.requires_grad
