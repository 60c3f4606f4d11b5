"""The posterior head that fit_variational adds: every preset fits wide, funnel-shaped and skewed
targets with its defaults, and the head keeps the flow rebuildable and starts as the identity.

Measured (300 steps, lr 1e-2, 128 samples, transforms=2, hidden 16, seed 0; ``benchmarks/
variational_defaults.py`` has the full grid at the issue's sizes): std(v) of the 5-D funnel under q
maf 2.74, iaf 2.69, realnvp 2.73, nsf 2.60, nsf_coupling 2.60 (without the head NSF gives 1.3);
std-10 Gaussian: every preset's stds within 2% of 10; log-normal coordinate (mean 1.133, std
0.604, 95% quantile 2.28): means 1.09-1.11, stds 0.49-0.53, 95% quantiles 2.08-2.16.
Set FLOWKIT_FULL_VARIATIONAL=1 to run every preset on every target (about 4 minutes on 1 core);
by default one preset per target runs (about 1.5 minutes together on a loaded core).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

import flowkit
from flowkit.data.targets import GaussianMixture, NealsFunnel
from flowkit.importance import importance_sample
from flowkit.posterior_head import attach_posterior_head, has_posterior_head
from flowkit.train import fit_variational

PRESETS = ["maf", "iaf", "realnvp", "nsf", "nsf_coupling"]
FULL = os.environ.get("FLOWKIT_FULL_VARIATIONAL") == "1"
LOGNORMAL_SIGMA = 0.5


def grid(default: str) -> list:
    return [pytest.param(name, marks=() if FULL or name == default else pytest.mark.skip(
        reason="FLOWKIT_FULL_VARIATIONAL=1 runs every preset")) for name in PRESETS]


def wide_gaussian(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((x - torch.tensor([5.0, -3.0])) / 10.0).square().sum(-1)


def lognormal_coordinate(x: torch.Tensor) -> torch.Tensor:
    """x_0 ~ LogNormal(0, 0.5^2), x_1 ~ N(0, 1); outside x_0 > 0 a steep finite wall keeps the
    pathwise gradient pointing back into the support."""
    first = x[:, 0]
    inside = first > 0
    log_first = torch.where(inside, first, torch.ones_like(first)).log()
    density = -0.5 * (log_first / LOGNORMAL_SIGMA).square() - log_first
    return torch.where(inside, density, -1e3 * (1 + first.square())) - 0.5 * x[:, 1].square()


def fit(preset: str, target, features: int, steps: int = 300, **options) -> tuple[flowkit.Flow, dict]:
    torch.manual_seed(0)
    flow = flowkit.build(preset, features=features, transforms=2, hidden_features=16)
    result = fit_variational(flow, target, steps=steps, num_samples=128, learning_rate=1e-2, progress=False,
                             diagnostic_samples=2000, **options)
    return flow, result.diagnostics


@pytest.mark.parametrize("preset", grid("realnvp"))
def test_every_preset_finds_the_width_of_a_5d_funnel_neck(preset: str) -> None:
    flow, report = fit(preset, NealsFunnel(features=5), 5)
    neck = flow.sample(20_000)[:, 0].double()
    assert abs(neck.std().item() - 3.0) < 0.45
    assert abs(neck.mean().item()) < 0.3
    assert report["elbo"] > -0.15  # KL(q || p) below 0.15 nats (measured 0.04-0.06)


@pytest.mark.parametrize("preset", grid("nsf_coupling"))
def test_every_preset_fits_a_gaussian_of_standard_deviation_10(preset: str) -> None:
    flow, report = fit(preset, wide_gaussian, 2)
    samples = flow.sample(20_000).double()
    assert (samples.std(0) / 10 - 1).abs().max() < 0.06
    assert (samples.mean(0) - torch.tensor([5.0, -3.0], dtype=torch.float64)).abs().max() < 0.6
    assert report["log_z"] == pytest.approx(2 * math.log(10 * math.sqrt(2 * math.pi)), abs=0.05)


@pytest.mark.parametrize("preset", grid("maf"))
def test_every_preset_fits_a_log_normal_coordinate(preset: str) -> None:
    # An affine preset alone cannot skew a coordinate that is independent of the others; the
    # head's elementwise spline can.
    flow, _ = fit(preset, lognormal_coordinate, 2)
    first = flow.sample(20_000)[:, 0].double()
    mean = math.exp(LOGNORMAL_SIGMA**2 / 2)
    std = math.sqrt(math.expm1(LOGNORMAL_SIGMA**2)) * mean
    assert first.mean().item() == pytest.approx(mean, abs=0.08)
    assert first.median().item() == pytest.approx(1.0, abs=0.05)
    assert first.std().item() == pytest.approx(std, rel=0.2)
    upper = math.exp(1.6449 * LOGNORMAL_SIGMA)
    assert torch.quantile(first, 0.95).item() == pytest.approx(upper, rel=0.12)
    assert (first > 0).double().mean() > 0.995  # the mass is where the target is
    assert first.mean() - first.median() > 0.05  # skewed to the right, as a log-normal is


def test_two_separated_modes_with_annealing_and_importance_weights() -> None:
    # The stated limit of reverse KL: q's mass moves between separated modes only through the
    # low-density gap, so plain fits collapse onto one mode (measured: maf, weight 1.00 of the
    # right mode) and the weights of those found are not trustworthy. anneal_fraction (a tempered
    # start) finds both modes (measured q weight 0.15); importance weights then correct them.
    target = GaussianMixture(torch.tensor([[-4.0, 0.0], [4.0, 0.0]]), 0.7)
    flow, report = fit("maf", target, 2, steps=400, anneal_fraction=0.5)
    assert abs(report["log_z"]) < 0.1  # both modes are covered, or log Z would be log(1/2)
    result = importance_sample(flow, target, 8000)
    right = result.expectation(lambda x: (x[:, 0] > 0).double()).item()
    assert right == pytest.approx(0.5, abs=0.1)


def test_the_head_starts_as_the_identity_and_is_rebuilt_from_the_config() -> None:
    torch.manual_seed(0)
    flow = flowkit.nsf(features=3, context_features=2, transforms=1, hidden_features=8)
    x, context = torch.randn(6, 3), torch.randn(6, 2)
    before = flow.log_prob(x, context)
    attach_posterior_head(flow)
    attach_posterior_head(flow)  # idempotent
    assert has_posterior_head(flow) and flow.config["posterior_head"] is True
    torch.testing.assert_close(flow.log_prob(x, context), before, atol=1e-5, rtol=0)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    rebuilt = flowkit.build(**flow.config)
    rebuilt.load_state_dict(flow.state_dict())
    torch.testing.assert_close(rebuilt.log_prob(x, context), flow.log_prob(x, context))
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in flow.parameters())


def test_posterior_head_false_trains_the_flow_as_built() -> None:
    flow = flowkit.maf(features=2, transforms=1, hidden_features=8)
    names = [name for name, _ in flow.named_parameters()]
    fit_variational(flow, wide_gaussian, steps=2, progress=False, diagnostic_samples=0, posterior_head=False)
    assert [name for name, _ in flow.named_parameters()] == names and not has_posterior_head(flow)
    with pytest.raises(ValueError, match="posterior_head"):
        fit_variational(flow, wide_gaussian, steps=2, progress=False, posterior_head="yes")
    fit_variational(flow, wide_gaussian, steps=2, progress=False, diagnostic_samples=0)
    assert has_posterior_head(flow) and len(list(flow.named_parameters())) > len(names)


def test_the_heads_location_and_scale_take_a_multiple_of_the_learning_rate() -> None:
    from flowkit.posterior_head import HEAD_LR_SCALE
    from flowkit.train.schedule import Schedule, make_optimizer

    flow = attach_posterior_head(flowkit.nsf(features=3, transforms=1, hidden_features=8))
    head = {id(p) for p in (*flow.base.parameters(), *flow.bijector.bijectors[0].parameters())}
    optimizer = make_optimizer(flow.parameters(), 1e-3)
    Schedule(optimizer, 1e-3, total_steps=10, kind="constant").apply(0)
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert len(rates) == sum(1 for p in flow.parameters() if p.requires_grad)
    assert all(rates[key] == pytest.approx(1e-3 * HEAD_LR_SCALE) for key in head)
    assert all(rate == pytest.approx(1e-3) for key, rate in rates.items() if key not in head)
    # a flow rebuilt from its config (as a saved model is) asks for the same rates
    rebuilt = flowkit.build(**flow.config)
    assert sum(1 for p in rebuilt.parameters() if getattr(p, "lr_scale", None)) == len(head)
