"""Reverse-KL gradient estimators: unbiased against closed-form KL gradients between Gaussians,
ordered by variance as the theory says, and wired correctly into a real flow."""

from __future__ import annotations

import math

import pytest
import torch

import flowkit
from flowkit.bijectors import ActNorm, Affine, BatchNorm, Chain, Coupling, Permutation
from flowkit.estimators import ESTIMATORS, reverse_kl_loss
from tests.cases import perturb

# q = N(LOC, diag(SCALE^2)) is fitted to the normalised target p = N(MEAN, diag(STD^2)).
LOC, SCALE = [0.5, -1.0, 0.2], [1.5, 0.7, 1.0]
MEAN, STD = [1.0, 0.0, -0.3], [1.0, 2.0, 0.8]


def gaussian_q(loc: list[float], scale: list[float]) -> flowkit.Flow:
    """A Flow that is just a trainable diagonal Gaussian (an empty chain), in float64."""
    base = flowkit.DiagGaussian(len(loc), loc=torch.tensor(loc), scale=torch.tensor(scale), trainable=True)
    return flowkit.Flow(base, Chain([])).double()


def gaussian_log_target(mean: list[float], std: list[float]):
    mean_t, std_t = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    return lambda x: torch.distributions.Normal(mean_t, std_t).log_prob(x).sum(-1)


def closed_form_gradient(loc: list[float], scale: list[float]) -> torch.Tensor:
    """d KL(q || p) / d(loc, log_scale); KL = sum log(s/sigma) + (sigma^2 + (mu - m)^2) / (2 s^2) - 1/2."""
    mu, sigma = torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)
    m, s = torch.tensor(MEAN, dtype=torch.float64), torch.tensor(STD, dtype=torch.float64)
    return torch.cat([(mu - m) / s**2, sigma**2 / s**2 - 1])


def gradient_estimates(estimator: str, loc: list[float], scale: list[float], repeats: int,
                       num_samples: int, seed: int = 0) -> torch.Tensor:
    """``repeats`` independent gradient estimates, shape ``(repeats, 2 * features)``."""
    torch.manual_seed(seed)
    flow, log_target = gaussian_q(loc, scale), gaussian_log_target(MEAN, STD)
    estimates = []
    for _ in range(repeats):
        loss = reverse_kl_loss(flow, log_target, num_samples, estimator)
        d_loc, d_log_scale = torch.autograd.grad(loss, [flow.base.loc, flow.base.log_scale])
        estimates.append(torch.cat([d_loc, d_log_scale]))
    return torch.stack(estimates)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gradient_is_unbiased_against_closed_form(estimator: str) -> None:
    estimates = gradient_estimates(estimator, LOC, SCALE, repeats=400, num_samples=16)
    mean = estimates.mean(0)
    standard_error = estimates.std(0) / math.sqrt(estimates.shape[0])
    expected = closed_form_gradient(LOC, SCALE)
    # The estimate must be precise enough that a bias of the size of the gradient would show.
    assert bool((standard_error < 0.1).all()), standard_error
    within = (mean - expected).abs() < 4.5 * standard_error + 1e-12
    assert bool(within.all()), (mean, expected, standard_error)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_value_is_the_negative_elbo(estimator: str) -> None:
    # With a normalised target the loss estimates KL(q || p) >= 0, the same for every estimator.
    flow, log_target = gaussian_q(LOC, SCALE), gaussian_log_target(MEAN, STD)
    mu, sigma = torch.tensor(LOC, dtype=torch.float64), torch.tensor(SCALE, dtype=torch.float64)
    m, s = torch.tensor(MEAN, dtype=torch.float64), torch.tensor(STD, dtype=torch.float64)
    kl = (torch.log(s / sigma) + (sigma**2 + (mu - m) ** 2) / (2 * s**2) - 0.5).sum().item()
    torch.manual_seed(1)
    values = torch.stack([reverse_kl_loss(flow, log_target, 256, estimator).detach() for _ in range(40)])
    assert abs(values.mean().item() - kl) < 5 * values.std().item() / math.sqrt(40)


def test_sticking_the_landing_has_vanishing_variance_near_the_optimum() -> None:
    # q within 1e-2 of p: the STL gradient is (grad_x log q - grad_x log p) dx/dtheta, nearly zero
    # per sample, while the pathwise gradient still carries the zero-mean score term.
    near_loc = [m + 0.01 for m in MEAN]
    near_scale = [s * 1.01 for s in STD]
    pathwise = gradient_estimates("pathwise", near_loc, near_scale, repeats=100, num_samples=16)
    stl = gradient_estimates("stl", near_loc, near_scale, repeats=100, num_samples=16)
    pathwise_variance, stl_variance = pathwise.var(0).sum().item(), stl.var(0).sum().item()
    assert stl_variance < 0.01 * pathwise_variance, (stl_variance, pathwise_variance)


def test_pathwise_has_lower_variance_than_score_function() -> None:
    pathwise = gradient_estimates("pathwise", LOC, SCALE, repeats=200, num_samples=16)
    score = gradient_estimates("score", LOC, SCALE, repeats=200, num_samples=16)
    pathwise_variance, score_variance = pathwise.var(0).sum().item(), score.var(0).sum().item()
    assert 2 * pathwise_variance < score_variance, (pathwise_variance, score_variance)


def small_realnvp() -> flowkit.Flow:
    flow = flowkit.realnvp(3, transforms=3, hidden_features=8).double()
    perturb(flow, scale=0.3, seed=1)  # off the identity, so every weight sits on a gradient path
    return flow


def banana_log_target(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x[:, 0].square() + (x[:, 1] - x[:, 0].square()).square() + x[:, 2].square())


def test_pathwise_and_stl_values_agree_on_a_real_flow() -> None:
    flow = small_realnvp()
    values = {}
    for estimator in ESTIMATORS:
        torch.manual_seed(3)
        values[estimator] = reverse_kl_loss(flow, banana_log_target, 64, estimator).item()
    assert values["stl"] == pytest.approx(values["pathwise"], abs=1e-12)
    # The score-function estimator draws the same base noise, so it reports the same estimate.
    assert values["score"] == pytest.approx(values["pathwise"], abs=1e-9)


def test_pathwise_gradient_reaches_every_parameter() -> None:
    flow = small_realnvp()
    reverse_kl_loss(flow, banana_log_target, 64, "pathwise").backward()
    for name, parameter in flow.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name


def test_stl_drops_exactly_the_score_term() -> None:
    # Total derivative of log q(x(theta); theta) = path term + score term d/dtheta log q(x)|x fixed.
    # So pathwise minus STL must equal the gradient of mean log q at the same samples held fixed.
    flow = small_realnvp()
    parameters = list(flow.parameters())
    gradients = {}
    for estimator in ("pathwise", "stl"):
        torch.manual_seed(5)
        gradients[estimator] = torch.autograd.grad(
            reverse_kl_loss(flow, banana_log_target, 32, estimator), parameters)
    torch.manual_seed(5)
    x = flow.sample(32)
    score_term = torch.autograd.grad(flow.log_prob(x).mean(), parameters)
    for path, stl, score in zip(gradients["pathwise"], gradients["stl"], score_term):
        torch.testing.assert_close(path - stl, score, atol=1e-9, rtol=1e-7)
    assert any(bool(score.abs().max() > 1e-3) for score in score_term), "the score term should not vanish"


def test_context_is_passed_to_the_target_and_conditions_the_flow() -> None:
    flow = flowkit.realnvp(2, context_features=1, transforms=2, hidden_features=8).double()
    perturb(flow, seed=2)
    seen = []

    def log_target(x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(context.shape))
        return -0.5 * (x - context).square().sum(-1)

    for estimator in ESTIMATORS:
        flow.zero_grad()
        context = torch.ones(1, dtype=torch.float64)
        reverse_kl_loss(flow, log_target, 16, estimator, context=context).backward()
        assert all(p.grad is not None for p in flow.parameters())
    assert seen == [(16, 1)] * len(ESTIMATORS)


def test_bad_arguments_fail_clearly() -> None:
    flow = gaussian_q(LOC, SCALE)
    with pytest.raises(ValueError, match="unknown estimator 'reinforce'"):
        reverse_kl_loss(flow, gaussian_log_target(MEAN, STD), 8, "reinforce")
    with pytest.raises(ValueError, match="num_samples"):
        reverse_kl_loss(flow, gaussian_log_target(MEAN, STD), 0)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        reverse_kl_loss(flow, lambda x: x.sum(), 8)


def flow_with_data_dependent_layers() -> flowkit.Flow:
    """ActNorm (initialised by its first training forward) and BatchNorm (batch statistics and
    running updates in a training forward; running statistics in the inverse), in training mode."""
    layers = [ActNorm(3), Coupling(Affine(), 3, hidden_features=8), Permutation.reverse(3),
              BatchNorm(3), Coupling(Affine(), 3, hidden_features=8)]
    flow = flowkit.Flow(flowkit.DiagGaussian(3), Chain(layers)).double().train()
    perturb(flow, seed=4)
    return flow


def test_stl_and_score_have_no_side_effects_on_data_dependent_layers() -> None:
    # STL and score-function estimates make a forward pass; in training mode it would initialise
    # ActNorm from q's own samples and move BatchNorm's running statistics. They must not, and
    # they must score the samples with the map they were drawn through (the value agrees).
    flow = flow_with_data_dependent_layers()
    state = {name: value.clone() for name, value in flow.state_dict().items()}
    torch.manual_seed(0)
    pathwise = reverse_kl_loss(flow, banana_log_target, 32, "pathwise")
    for estimator in ("stl", "score"):
        torch.manual_seed(0)
        value = reverse_kl_loss(flow, banana_log_target, 32, estimator)
        assert all(module.training for module in flow.modules())
        for name, tensor in flow.state_dict().items():
            assert torch.equal(tensor, state[name]), (estimator, name)
        assert value.item() == pytest.approx(pathwise.item(), abs=1e-9)


def test_stl_drops_exactly_the_score_term_with_data_dependent_layers() -> None:
    flow = flow_with_data_dependent_layers()
    parameters = list(flow.parameters())
    gradients = {}
    for estimator in ("pathwise", "stl"):
        torch.manual_seed(5)
        gradients[estimator] = torch.autograd.grad(
            reverse_kl_loss(flow, banana_log_target, 32, estimator), parameters)
    torch.manual_seed(5)
    x = flow.sample(32)
    flow.eval()  # the density of the map the samples were drawn through
    score_term = torch.autograd.grad(flow.log_prob(x).mean(), parameters)
    for path, stl, score in zip(gradients["pathwise"], gradients["stl"], score_term):
        torch.testing.assert_close(path - stl, score, atol=1e-9, rtol=1e-7)
