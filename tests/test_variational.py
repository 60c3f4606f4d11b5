"""End to end: reverse-KL fits of a flow to targets with known answers, through ``fit_variational``.

Tolerances come from measurement (seeds 0-4 of each configuration, then a margin of 2x or
more); the numbers measured are in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch

import flowkit
import flowkit.presets as presets
from flowkit.bijectors import Chain
from flowkit.data.targets import CorrelatedGaussian, NealsFunnel
from flowkit.train.variational import fit_variational


@pytest.mark.parametrize("preset, transforms", [("realnvp", 4), ("iaf", 2)])
def test_fit_recovers_a_correlated_gaussian(preset: str, transforms: int) -> None:
    torch.manual_seed(0)
    target = CorrelatedGaussian(features=10, seed=0)  # variances 0.1 to 10, rotated; mean ~ N(0, I)
    flow = presets.build(preset, features=10, transforms=transforms, hidden_features=32)
    result = fit_variational(flow, target, steps=400, num_samples=256, learning_rate=1e-2, progress=False)
    assert result.stopped == "completed" and result.steps == 400
    samples = flow.sample(20_000).double()
    # Measured at 400 steps over seeds 0-3, realnvp / iaf: mean error <= 0.044 / 0.055,
    # covariance error <= 0.048 / 0.052, |log Z| <= 0.011 / 0.003, ELBO in [-0.036, -0.026] /
    # [-0.046, -0.038], ESS fraction >= 0.91 / 0.88, k-hat <= 0.36 / 0.55.
    assert (samples.mean(0) - target.mean).abs().max().item() < 0.12
    covariance_error = torch.linalg.norm(torch.cov(samples.T) - target.covariance)
    assert (covariance_error / torch.linalg.norm(target.covariance)).item() < 0.15
    report = result.diagnostics
    assert abs(report["log_z"] - target.log_z) < 0.05
    # The ELBO is log Z minus KL(q || p): below log Z = 0, and close to it when q fits.
    assert -0.15 < report["elbo"] < 0.0
    assert report["ess_fraction"] > 0.5 and report["khat"] < 0.7


@pytest.mark.parametrize("estimator", ["pathwise", "stl"])
def test_fit_finds_the_width_of_the_funnel_neck(estimator: str) -> None:
    # In 2-D an affine coupling can represent the funnel exactly (scale x_2 by e^{v/2} given v),
    # and reverse KL recovers the neck: measured standard deviations 2.92 to 3.03 over seeds
    # 0-4 (300 steps). In 5-D the same flow under-disperses (2.2 to 2.6, the mode-seeking of
    # reverse KL), so the tolerance below is for the 2-D funnel only.
    torch.manual_seed(0)
    target = NealsFunnel(features=2)
    flow = flowkit.realnvp(2, transforms=4, hidden_features=32)
    result = fit_variational(flow, target, steps=300, num_samples=256, learning_rate=1e-2,
                             estimator=estimator, progress=False, diagnostic_samples=0,
                        posterior_head=False)  # q must be exactly this Gaussian family
    neck = flow.sample(20_000)[:, 0].double()
    assert abs(neck.std().item() - 3.0) < 0.25
    assert abs(neck.mean().item()) < 0.3
    # The fitted neck scale really moved: at initialisation the flow is N(0, 1).
    assert result.history[0]["train_loss"] > result.history[-1]["train_loss"]
    assert math.isfinite(result.history[-1]["train_loss"])


def test_stl_and_score_function_stick_the_landing_where_pathwise_jitters() -> None:
    # q = a trainable diagonal Gaussian, p a diagonal Gaussian: q can equal p exactly. There the
    # STL gradient is zero per sample, and so is the score function's (log q - log p is constant,
    # so it equals its leave-one-out baseline), while the pathwise gradient keeps its zero-mean
    # score term. Measured (seeds 0, 1; 300 steps): parameter error 1e-5 to 4e-5 for STL and
    # score function, 0.008 to 0.023 for pathwise.
    mean, scale = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.5, 2.0, 1.0])

    def log_target(x: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(mean, scale).log_prob(x).sum(-1)

    errors = {}
    for estimator in ("pathwise", "stl", "score"):
        torch.manual_seed(0)
        flow = flowkit.Flow(flowkit.DiagGaussian(3, trainable=True), Chain([]))
        fit_variational(flow, log_target, steps=300, num_samples=64, learning_rate=5e-2,
                        estimator=estimator, progress=False, diagnostic_samples=0,
                        posterior_head=False)  # q must be exactly this Gaussian family
        errors[estimator] = max((flow.base.loc - mean).abs().max().item(),
                                (flow.base.scale - scale).abs().max().item())
    assert errors["stl"] < 1e-3 and errors["score"] < 1e-3, errors
    assert errors["pathwise"] > 10 * max(errors["stl"], errors["score"]), errors
