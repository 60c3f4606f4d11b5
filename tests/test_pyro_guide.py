"""AutoFlowGuide: a flowkit flow as a Pyro guide, fitted by SVI with Trace_ELBO to Bayesian linear
regression, whose posterior is Gaussian and known in closed form."""

from __future__ import annotations

import pytest
import torch

pyro = pytest.importorskip("pyro")
import pyro.distributions as dist  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402

import flowkit  # noqa: E402
from flowkit.pyro_guide import AutoFlowGuide  # noqa: E402

NOISE = 0.5
PRIOR_SCALE = 1.0


def model(covariates: torch.Tensor, responses: torch.Tensor | None = None) -> None:
    # two sites, a scalar and a vector, so the guide really packs several latents into one vector
    bias = pyro.sample("bias", dist.Normal(0.0, PRIOR_SCALE))
    weights = pyro.sample("weights", dist.Normal(torch.zeros(2), PRIOR_SCALE).to_event(1))
    with pyro.plate("data", covariates.shape[0]):
        # broadcasts over vectorised particles: latents then carry a (particles, 1) batch shape
        mean = bias + (weights * covariates).sum(-1)
        pyro.sample("y", dist.Normal(mean, NOISE), obs=responses)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    covariates = torch.randn(20, 2, generator=generator)
    covariates[:, 1] += 0.8 * covariates[:, 0]  # correlated covariates give a correlated posterior
    responses = 0.5 + covariates @ torch.tensor([1.0, -2.0]) + NOISE * torch.randn(20, generator=generator)
    return covariates, responses


def exact_posterior(covariates: torch.Tensor, responses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    design = torch.cat([torch.ones(len(covariates), 1), covariates], dim=1).double()
    precision = torch.eye(3, dtype=torch.float64) / PRIOR_SCALE**2 + design.T @ design / NOISE**2
    covariance = torch.linalg.inv(precision)
    return covariance @ design.T @ responses.double() / NOISE**2, covariance


def test_svi_with_a_flow_guide_recovers_the_conjugate_posterior() -> None:
    pyro.clear_param_store()
    torch.manual_seed(0)
    covariates, responses = data()
    guide = AutoFlowGuide(model, transforms=2, hidden_features=16)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.999}), Trace_ELBO(num_particles=16,
                                                                                          vectorize_particles=True))
    losses = [svi.step(covariates, responses) for _ in range(600)]
    assert isinstance(guide.flow, flowkit.Flow) and guide.latent_dim == 3
    assert sum(losses[-50:]) / 50 < sum(losses[:50]) / 50
    mean, covariance = exact_posterior(covariates, responses)
    with torch.no_grad():
        draws = guide.flow_distribution().sample((20_000,)).double()
        samples = guide(covariates)  # a dict of constrained site values, like any autoguide
    assert set(samples) == {"bias", "weights"} and samples["weights"].shape == (2,)
    std = covariance.diagonal().sqrt()
    assert ((draws.mean(0) - mean) / std).abs().max() < 0.35  # measured 0.25 (seed 0)
    assert (draws.std(0) / std - 1).abs().max() < 0.15
    correlation = torch.corrcoef(draws.T)[1, 2]
    exact_correlation = covariance[1, 2] / (std[1] * std[2])
    assert abs(correlation - exact_correlation) < 0.1 and exact_correlation < -0.5
    # the flow's parameters live in Pyro's param store, so pyro.get_param_store sees the training
    assert any(name.endswith("flow$$$base.loc") for name in pyro.get_param_store().keys())


def test_a_given_flow_must_match_the_latent_size() -> None:
    pyro.clear_param_store()
    covariates, responses = data()
    guide = AutoFlowGuide(model, flow=flowkit.iaf(features=5, transforms=1, hidden_features=8))
    with pytest.raises(ValueError, match="3 unconstrained latent dimensions"):
        guide(covariates, responses)
