"""Variational targets: normalised ones integrate to their stated log Z and match scipy, samplers
agree with the stated moments, the Rezende-Mohamed energies are as published, and logistic
regression matches a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from flowkit.data.targets import (
    TARGETS,
    Banana,
    BayesianLogisticRegression,
    CorrelatedGaussian,
    GaussianMixture,
    NealsFunnel,
    RezendeEnergy,
    logistic_regression_data,
    make_target,
)


def grid_integral(log_prob, low: tuple[float, float], high: tuple[float, float], points: int = 801) -> float:
    """Trapezoid integral of exp(log_prob) over a 2-D box, in float64."""
    u = torch.linspace(low[0], high[0], points, dtype=torch.float64)
    v = torch.linspace(low[1], high[1], points, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(u, v, indexing="ij"), dim=-1).reshape(-1, 2)
    density = log_prob(grid).exp().reshape(points, points)
    return torch.trapezoid(torch.trapezoid(density, v, dim=1), u).item()


def assert_moments_match(target, num_samples: int = 40_000, tolerance: float = 0.06) -> None:
    """The exact sampler's moments agree with the stated mean and covariance."""
    samples = target.sample(num_samples, generator=torch.Generator().manual_seed(0))
    covariance = target.covariance
    scale = covariance.diagonal().sqrt()
    assert samples.shape == (num_samples, target.features)
    # Mean error in standard deviations, and correlation-scale covariance error.
    assert bool((((samples.mean(0) - target.mean) / scale).abs() < tolerance).all())
    sample_covariance = torch.cov(samples.T) / torch.outer(scale, scale)
    assert bool(((sample_covariance - covariance / torch.outer(scale, scale)).abs() < 3 * tolerance).all())


def test_correlated_gaussian_matches_scipy_and_its_sampler() -> None:
    target = CorrelatedGaussian(features=6, seed=4)
    x = torch.randn(20, 6, dtype=torch.float64) * 2
    expected = stats.multivariate_normal(target.mean.numpy(), target.covariance.numpy()).logpdf(x.numpy())
    torch.testing.assert_close(target(x), torch.as_tensor(expected), atol=1e-10, rtol=1e-10)
    eigenvalues = torch.linalg.eigvalsh(target.covariance)
    assert eigenvalues.max() / eigenvalues.min() == pytest.approx(100.0, rel=1e-6)
    assert_moments_match(target)


def test_correlated_gaussian_from_a_covariance_integrates_to_one() -> None:
    covariance = torch.tensor([[1.0, 0.8], [0.8, 2.0]])
    target = CorrelatedGaussian(mean=torch.tensor([0.5, -0.5]), covariance=covariance)
    assert target.features == 2 and target.log_z == 0.0
    assert grid_integral(target, (-8, -9), (9, 8)) == pytest.approx(1.0, abs=1e-6)
    # Seeded: the same seed gives the same target, another seed another.
    assert torch.equal(CorrelatedGaussian(3, seed=1).covariance, CorrelatedGaussian(3, seed=1).covariance)
    assert not torch.equal(CorrelatedGaussian(3, seed=1).covariance, CorrelatedGaussian(3, seed=2).covariance)
    with pytest.raises(ValueError, match="positive definite"):
        CorrelatedGaussian(covariance=torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="symmetric"):
        CorrelatedGaussian(covariance=torch.tensor([[1.0, 0.5], [0.4, 1.0]]))
    with pytest.raises(ValueError, match="features=3 but"):
        CorrelatedGaussian(features=3, mean=torch.zeros(2))


def test_funnel_matches_scipy_and_its_sampler() -> None:
    target = NealsFunnel(features=4)
    x = torch.randn(30, 4, dtype=torch.float64) * torch.tensor([3.0, 1.0, 2.0, 0.5], dtype=torch.float64)
    neck = x[:, 0].numpy()
    scales = torch.exp(x[:, :1] / 2).numpy()  # x_i | v has standard deviation e^{v/2}
    expected = stats.norm(0, 3).logpdf(neck) + stats.norm.logpdf(x[:, 1:].numpy(), scale=scales).sum(1)
    torch.testing.assert_close(target(x), torch.as_tensor(expected), atol=1e-10, rtol=1e-10)
    samples = target.sample(40_000, generator=torch.Generator().manual_seed(1))
    # The neck is Gaussian, so its moments can be checked tightly; x_i have heavy tails.
    assert samples[:, 0].std().item() == pytest.approx(3.0, rel=0.02)
    assert samples[:, 1:].square().mean().log().item() == pytest.approx(4.5, abs=0.5)  # log E[e^v]


def test_funnel_integrates_to_one_along_the_neck() -> None:
    # Integrate x out on a grid scaled to each v (the funnel's width changes by e^{v/2}).
    target = NealsFunnel(features=2)
    neck = torch.linspace(-18, 18, 721, dtype=torch.float64)
    unit = torch.linspace(-10, 10, 801, dtype=torch.float64)
    width = torch.exp(neck / 2)
    x = unit[None, :] * width[:, None]
    points = torch.stack([neck[:, None].expand_as(x), x], dim=-1).reshape(-1, 2)
    density = target(points).exp().reshape(x.shape)
    inner = torch.trapezoid(density, unit, dim=1) * width
    assert torch.trapezoid(inner, neck).item() == pytest.approx(1.0, abs=1e-6)


def test_banana_integrates_to_one_and_matches_its_sampler() -> None:
    target = Banana(curvature=1.0, first_scale=1.0)
    assert grid_integral(target, (-7, -9), (7, 52), points=1201) == pytest.approx(1.0, abs=1e-4)
    assert_moments_match(Banana(features=3), tolerance=0.06)
    # The twist has unit Jacobian: log p is the straight Gaussian's at the untwisted point.
    y = torch.tensor([[3.0, 2.0]], dtype=torch.float64)
    untwisted_second = 2.0 - 0.03 * (9.0 - 100.0)
    expected = stats.norm(0, 10).logpdf(3.0) + stats.norm.logpdf(untwisted_second)
    assert Banana()(y).item() == pytest.approx(expected, abs=1e-12)


def test_mixture_matches_scipy_integrates_to_its_log_z_and_matches_its_sampler() -> None:
    means = torch.tensor([[-1.0, 0.0], [2.0, 1.0]])
    scales = torch.tensor([[0.5, 1.0], [1.0, 0.7]], dtype=torch.float64)
    target = GaussianMixture(means, scales=scales, weights=torch.tensor([1.0, 2.0]))
    assert target.log_z == pytest.approx(math.log(3.0))
    assert grid_integral(target, (-6, -6), (7, 7)) == pytest.approx(3.0, abs=1e-5)
    x = torch.randn(10, 2, dtype=torch.float64)
    expected = torch.logsumexp(torch.stack([
        torch.as_tensor(stats.multivariate_normal([-1, 0], [0.25, 1.0]).logpdf(x.numpy())),
        torch.as_tensor(stats.multivariate_normal([2, 1], [1.0, 0.49]).logpdf(x.numpy())) + math.log(2.0),
    ]), dim=0)
    torch.testing.assert_close(target(x), expected, atol=1e-10, rtol=1e-10)
    assert_moments_match(target)
    ring = GaussianMixture.ring()
    assert ring.log_z == 0.0 and grid_integral(ring, (-7, -7), (7, 7)) == pytest.approx(1.0, abs=1e-5)


def test_rezende_energies_as_published() -> None:
    z = torch.tensor([[2.0, 0.0], [0.5, 1.0]], dtype=torch.float64)
    u1 = 0.5 * ((math.hypot(0.5, 1.0) - 2) / 0.4) ** 2 - math.log(
        math.exp(-0.5 * ((0.5 - 2) / 0.6) ** 2) + math.exp(-0.5 * ((0.5 + 2) / 0.6) ** 2))
    assert RezendeEnergy(1).energy(z)[1].item() == pytest.approx(u1, rel=1e-12)
    assert RezendeEnergy(1).energy(z)[0].item() == pytest.approx(-math.log(1 + math.exp(-0.5 * (4 / 0.6) ** 2)))
    w1 = math.sin(2 * math.pi * 0.5 / 4)
    assert RezendeEnergy(2).energy(z)[1].item() == pytest.approx(0.5 * ((1.0 - w1) / 0.4) ** 2, rel=1e-12)
    w2 = 3 * math.exp(-0.5 * ((0.5 - 1) / 0.6) ** 2)
    u3 = -math.log(math.exp(-0.5 * ((1.0 - w1) / 0.35) ** 2) + math.exp(-0.5 * ((1.0 - w1 + w2) / 0.35) ** 2))
    assert RezendeEnergy(3).energy(z)[1].item() == pytest.approx(u3, rel=1e-12)
    w3 = 3 / (1 + math.exp(-(0.5 - 1) / 0.3))
    u4 = -math.log(math.exp(-0.5 * ((1.0 - w1) / 0.4) ** 2) + math.exp(-0.5 * ((1.0 - w1 + w3) / 0.35) ** 2))
    assert RezendeEnergy(4).energy(z)[1].item() == pytest.approx(u4, rel=1e-12)


@pytest.mark.parametrize("index", [1, 2, 3, 4])
def test_rezende_energies_finite_on_a_grid_with_a_wall_that_only_acts_outside(index: int) -> None:
    u = torch.linspace(-6, 6, 121)
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), dim=-1).reshape(-1, 2)
    walled, bare = RezendeEnergy(index)(grid), RezendeEnergy(index, wall=None)(grid)
    assert walled.shape == (grid.shape[0],) and bool(torch.isfinite(walled).all())
    inside = (grid.abs() <= 4).all(dim=1)
    torch.testing.assert_close(walled[inside], bare[inside])
    assert bool((walled[~inside] < bare[~inside]).all())
    # With the wall the improper energies become integrable; far outside, the density vanishes.
    wide, box = (grid_integral(RezendeEnergy(index), (-r, -r), (r, r), points=401) for r in (8.0, 5.0))
    assert wide == pytest.approx(box, rel=1e-3)


def test_u2_to_u4_are_periodic_in_z1_without_the_wall() -> None:
    # w1 = sin(2 pi z1 / 4) has period 4, and U2 depends on z1 only through it: improper in z1.
    z = torch.randn(50, 2, dtype=torch.float64)
    shifted = z + torch.tensor([4.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(RezendeEnergy(2, wall=None)(shifted), RezendeEnergy(2, wall=None)(z))


def test_logistic_regression_matches_a_hand_computation() -> None:
    covariates = torch.tensor([[1.0, 2.0], [1.0, -1.0], [1.0, 0.5]])
    labels = torch.tensor([1.0, 0.0, 1.0])
    target = BayesianLogisticRegression(covariates, labels, prior_scale=2.0)
    weights = [(0.5, -0.3), (-1.0, 2.0)]
    expected = []
    for w0, w1 in weights:
        total = 0.0
        for (c0, c1), y in zip(covariates.tolist(), labels.tolist()):
            p = 1 / (1 + math.exp(-(w0 * c0 + w1 * c1)))
            total += math.log(p) if y == 1 else math.log(1 - p)
        total += sum(-0.5 * (w / 2.0) ** 2 - math.log(2.0) - 0.5 * math.log(2 * math.pi) for w in (w0, w1))
        expected.append(total)
    got = target(torch.tensor(weights, dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=1e-12)


def test_logistic_regression_data_is_reproducible_and_informative() -> None:
    first, again, other = (logistic_regression_data(2000, 3, seed=s) for s in (7, 7, 8))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    covariates, labels, true_weights = first
    assert covariates.shape == (2000, 4) and bool((covariates[:, 0] == 1).all())
    # With 2000 observations the posterior mode sits near the weights that made the labels.
    target = BayesianLogisticRegression(covariates, labels)
    weights = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -target(weights).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    assert bool(((weights[0] - true_weights).abs() < 0.25).all()), (weights, true_weights)


def test_registry_builds_every_target_and_gradients_flow() -> None:
    for name in TARGETS:
        target = make_target(name)
        x = torch.randn(5, target.features, requires_grad=True)  # float32 x, float64 constants
        log_prob = target(x)
        assert log_prob.shape == (5,) and log_prob.dtype == torch.float32, name
        (gradient,) = torch.autograd.grad(log_prob.sum(), x)
        assert bool(torch.isfinite(gradient).all()), name
    assert make_target("gaussian", features=10).features == 10
    with pytest.raises(ValueError, match="unknown target 'nope'"):
        make_target("nope")
    with pytest.raises(ValueError, match=r"expected x of shape \(\.\.\., 2\)"):
        make_target("u1")(torch.zeros(3, 3))


def test_any_batch_shape_dtype_and_device() -> None:
    for name in TARGETS:
        target = make_target(name)
        x = torch.randn(4, 3, target.features, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        batched = target(x)
        assert batched.shape == (4, 3) and batched.dtype == torch.float64, name
        torch.testing.assert_close(batched.reshape(-1), target.log_prob(x.reshape(-1, target.features)))
        assert target.log_prob(x[1, 2]).shape == ()
        assert target(x[1, 2]).item() == pytest.approx(batched[1, 2].item(), rel=1e-12)
        assert target(torch.zeros(0, target.features)).shape == (0,)
        # Half precision is computed in float32 and handed back in the input's dtype.
        half = target(x.half())
        assert half.dtype == torch.float16, name
        torch.testing.assert_close(half.double(), target(x.half().double()), atol=0.05, rtol=2e-3)
        assert target(torch.ones(2, target.features, dtype=torch.long)).dtype == torch.get_default_dtype()
        if torch.cuda.is_available():  # constants follow the input; the target need not be moved
            torch.testing.assert_close(target(x.cuda()).cpu(), batched)


STEIN_TARGETS = {
    "gaussian": lambda: CorrelatedGaussian(features=4, seed=2),
    "funnel": lambda: NealsFunnel(features=3, neck_scale=1.0),
    "banana": lambda: Banana(features=3, curvature=0.5, first_scale=1.5),
    "mixture": lambda: GaussianMixture(torch.tensor([[-1.0, 0.5], [1.5, -1.0], [0.0, 2.0]]),
                                       scales=torch.tensor([0.6, 1.0, 0.8]), weights=torch.tensor([1.0, 2.0, 0.5])),
}


@pytest.mark.parametrize("name", STEIN_TARGETS)
def test_exact_sampler_draws_from_log_prob(name: str) -> None:
    # Stein's identity: for x ~ p, E[grad log p(x)] = 0 and E[x grad log p(x)^T] = -I. It ties the
    # sampler to log_prob (any normalisation), so a sampler of another density breaks it.
    target = STEIN_TARGETS[name]()
    count, features = 40_000, target.features
    x = target.sample(count, generator=torch.Generator().manual_seed(3)).requires_grad_()
    (score,) = torch.autograd.grad(target(x).sum(), x)
    values = torch.cat([score, (x[:, :, None] * score[:, None, :]).flatten(1)], dim=1).detach()
    expected = torch.cat([torch.zeros(features), -torch.eye(features).flatten()]).double()
    standard_error = values.std(0) / math.sqrt(count)
    assert bool(((values.mean(0) - expected).abs() < 5 * standard_error + 1e-3).all()), (values.mean(0), expected)


@pytest.mark.parametrize("curvature, first_scale", [(0.5, 2.0), (-0.2, 0.7)])
def test_banana_integrates_to_one_for_other_parameters(curvature: float, first_scale: float) -> None:
    target = Banana(curvature=curvature, first_scale=first_scale)
    high = 8 * first_scale
    bend = abs(curvature) * (high**2 + first_scale**2) + 8
    assert grid_integral(target, (-high, -bend), (high, bend), points=1601) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("neck_scale", [0.5, 1.5])
def test_funnel_integrates_to_one_for_other_neck_scales(neck_scale: float) -> None:
    target = NealsFunnel(features=2, neck_scale=neck_scale)
    neck = torch.linspace(-10 * neck_scale, 10 * neck_scale, 801, dtype=torch.float64)
    unit = torch.linspace(-10, 10, 801, dtype=torch.float64)
    width = torch.exp(neck / 2)
    x = unit[None, :] * width[:, None]
    density = target(torch.stack([neck[:, None].expand_as(x), x], dim=-1)).exp()
    assert torch.trapezoid(torch.trapezoid(density, unit, dim=1) * width, neck).item() == pytest.approx(1.0, abs=1e-6)


def test_covariance_is_symmetrised_and_validated() -> None:
    nearly = torch.tensor([[2.0, 0.5], [0.5 + 1e-9, 1.0]], dtype=torch.float64)
    target = CorrelatedGaussian(mean=[0.0, 1.0], covariance=nearly)
    torch.testing.assert_close(target.covariance, target.covariance.T, rtol=0, atol=0)
    assert torch.allclose(target.cholesky @ target.cholesky.T, target.covariance, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=r"symmetric \(2, 2\) matrix"):
        CorrelatedGaussian(covariance=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"mean must have shape \(2,\)"):
        CorrelatedGaussian(mean=torch.zeros(3), covariance=torch.eye(2))
