"""FlowDistribution behaves like a torch distribution: checked against MultivariateNormal on a
flow that is exactly Gaussian, and through Independent, TransformedDistribution and Monte Carlo KL."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import (
    ExpTransform,
    Independent,
    LogNormal,
    MultivariateNormal,
    Normal,
    TransformedDistribution,
    constraints,
)

import flowkit
from flowkit.bijectors import Chain, LULinear
from flowkit.torch_distribution import FlowDistribution


def gaussian_flow() -> tuple[flowkit.Flow, MultivariateNormal]:
    """An affine flow (trainable base, LU layer with random weights) and its exact Gaussian."""
    torch.manual_seed(0)
    layer = LULinear(3, seed=0)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    base = flowkit.DiagGaussian(3, loc=torch.tensor([0.5, -1.0, 2.0]), scale=torch.tensor([0.5, 1.5, 1.0]),
                                trainable=True)
    flow = flowkit.Flow(base, Chain([layer])).double()
    # x = f^{-1}(z) is affine: x = A z + c, so x ~ N(A loc + c, A diag(scale^2) A^T).
    z0 = torch.zeros(1, 3, dtype=torch.float64)
    c = flow.bijector.inverse(z0)[0][0].detach()
    jacobian = torch.autograd.functional.jacobian(lambda z: flow.bijector.inverse(z[None])[0][0], z0[0])
    loc = jacobian @ base.loc.double().detach() + c
    covariance = jacobian @ torch.diag(base.scale.double().detach() ** 2) @ jacobian.T
    return flow, MultivariateNormal(loc, covariance_matrix=covariance)


def test_log_prob_matches_multivariate_normal_for_any_sample_shape() -> None:
    flow, reference = gaussian_flow()
    q = FlowDistribution(flow)
    assert q.event_shape == (3,) and q.batch_shape == () and q.has_rsample and q.support is constraints.real_vector
    points = reference.sample((4, 5))
    assert q.log_prob(points).shape == (4, 5)
    torch.testing.assert_close(q.log_prob(points), reference.log_prob(points))
    single = reference.sample()
    torch.testing.assert_close(q.log_prob(single), reference.log_prob(single))


def test_samples_have_the_reference_moments_and_shapes() -> None:
    flow, reference = gaussian_flow()
    q = FlowDistribution(flow)
    assert q.sample().shape == (3,) and q.sample((2, 3)).shape == (2, 3, 3) and q.rsample((7,)).shape == (7, 3)
    draws = q.sample((40_000,))
    assert not draws.requires_grad
    assert (draws.mean(0) - reference.mean).abs().max() < 0.05
    assert (torch.cov(draws.T) - reference.covariance_matrix).abs().max() < 0.1


def test_rsample_is_pathwise() -> None:
    flow, _ = gaussian_flow()
    q = FlowDistribution(flow)
    q.rsample((64,)).square().sum().backward()
    assert flow.base.loc.grad is not None and flow.base.loc.grad.abs().sum() > 0
    assert all(parameter.grad is not None for parameter in flow.bijector.parameters())


def test_monte_carlo_kl_against_the_closed_form() -> None:
    flow, reference = gaussian_flow()
    q = FlowDistribution(flow)
    other = MultivariateNormal(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64) * 2.0)
    torch.manual_seed(1)
    x, log_q = q.rsample_and_log_prob((20_000,))
    monte_carlo = (log_q - other.log_prob(x)).mean()
    exact = torch.distributions.kl_divergence(reference, other)
    assert monte_carlo.item() == pytest.approx(exact.item(), abs=0.05)
    torch.testing.assert_close(log_q, q.log_prob(x))


def test_independent_and_expand() -> None:
    flow, reference = gaussian_flow()
    batch = FlowDistribution(flow).expand(torch.Size([4]))
    assert batch.batch_shape == (4,) and batch.sample((2,)).shape == (2, 4, 3)
    joint = Independent(batch, 1)
    assert joint.batch_shape == () and joint.event_shape == (4, 3)
    points = reference.sample((5, 4))
    torch.testing.assert_close(joint.log_prob(points), reference.log_prob(points).sum(-1))


def test_transformed_distribution_gives_a_log_normal() -> None:
    # A flow that is N(0, 1) in one dimension, pushed through exp: the log-normal density.
    flow = flowkit.Flow(flowkit.DiagGaussian(1), Chain([])).double()
    positive = TransformedDistribution(FlowDistribution(flow), [ExpTransform()])
    reference = Independent(LogNormal(torch.zeros(1, dtype=torch.float64), 1.0), 1)
    points = reference.sample((6,))
    torch.testing.assert_close(positive.log_prob(points), reference.log_prob(points))
    assert bool((positive.sample((100,)) > 0).all())


def test_a_batch_of_contexts_is_a_batch_of_distributions() -> None:
    torch.manual_seed(0)
    flow = flowkit.maf(features=2, context_features=1, transforms=2, hidden_features=8).double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    context = torch.tensor([[0.0], [1.0], [-2.0]], dtype=torch.float64)
    q = FlowDistribution(flow, context)
    assert q.batch_shape == (3,) and q.event_shape == (2,)
    x = q.sample((5,))
    assert x.shape == (5, 3, 2)
    # each batch member is the flow at its own context row
    for member in range(3):
        alone = flow.log_prob(x[:, member], context[member])
        torch.testing.assert_close(q.log_prob(x)[:, member], alone)
    with pytest.raises(ValueError, match="context"):
        FlowDistribution(flow)
    with pytest.raises(ValueError, match="event_shape|last dimension"):
        q.log_prob(torch.zeros(3, 5, dtype=torch.float64))


def test_normal_reference_in_one_dimension() -> None:
    flow = flowkit.Flow(flowkit.DiagGaussian(1, loc=torch.tensor([1.0]), scale=torch.tensor([2.0])), Chain([]))
    q = FlowDistribution(flow)
    points = torch.linspace(-3, 5, 9)[:, None]
    expected = Normal(1.0, 2.0).log_prob(points[:, 0])
    torch.testing.assert_close(q.log_prob(points), expected)
    assert math.isfinite(q.entropy_estimate(256).item())


def test_as_distribution_shares_the_flows_parameters() -> None:
    flow, reference = gaussian_flow()
    q = flow.as_distribution()
    assert isinstance(q, FlowDistribution) and q.flow is flow
    points = reference.sample((4, 3))
    torch.testing.assert_close(q.log_prob(points), reference.log_prob(points))
    # a step on the flow's own parameters moves the distribution: nothing was copied
    q.rsample((64,)).square().sum().backward()
    assert all(p.grad is not None for p in flow.parameters() if p.requires_grad)
