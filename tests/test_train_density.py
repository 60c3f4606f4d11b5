"""fit_density: it learns a known density, splits, stops early, keeps time, reproduces itself."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import flowkit
from flowkit.train import fit_density


def _flow(seed: int = 0, **kwargs) -> flowkit.Flow:
    torch.manual_seed(seed)
    options = {"transforms": 2, "hidden_features": 8} | kwargs
    return flowkit.realnvp(features=2, **options)


def _correlated(rows: int, seed: int) -> tuple[torch.Tensor, torch.distributions.MultivariateNormal]:
    covariance = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    truth = torch.distributions.MultivariateNormal(torch.tensor([1.0, -0.5]), covariance)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(rows, 2, generator=generator)
    return truth.loc + noise @ torch.linalg.cholesky(covariance).T, truth


def test_fitted_density_matches_the_true_one() -> None:
    data, truth = _correlated(2000, seed=0)
    validation, _ = _correlated(1000, seed=1)
    test, _ = _correlated(4000, seed=2)
    flow = _flow(transforms=3, hidden_features=16)
    result = fit_density(flow, data.numpy(), validation_data=validation, epochs=25, batch_size=200, learning_rate=5e-3,
                         device="cpu", progress=False)
    with torch.no_grad():
        flow_score = flow.log_prob(test).mean().item()
    true_score = truth.log_prob(test).mean().item()
    assert abs(flow_score - true_score) < 0.06
    # the validation loss is the negative log-likelihood per held-out row
    with torch.no_grad():
        assert result.best_validation_loss == pytest.approx(-flow.log_prob(validation).mean().item(), abs=1e-5)
    assert result.best_validation_loss == pytest.approx(-truth.log_prob(validation).mean().item(), abs=0.06)
    assert result.stopped in ("completed", "early_stopping")
    assert flow.training  # handed back ready for more training


def test_early_stopping_restores_the_best_weights() -> None:
    # Validation data from N(0, I), which the flow matches at initialisation; training on
    # shifted data makes validation worse every epoch, so the best weights are the first epoch's.
    train = torch.randn(256, 2, generator=torch.Generator().manual_seed(0)) + 3.0
    validation = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    flow = _flow()
    result = fit_density(flow, train, validation_data=validation, epochs=50, batch_size=64,
                         learning_rate=1e-2, patience=3, progress=False)
    assert result.stopped == "early_stopping"
    losses = [record["validation_loss"] for record in result.history]
    assert len(losses) == 4 and losses[1:] == sorted(losses[1:]) and losses[0] < min(losses[1:])
    assert result.best_step == 4 and result.best_validation_loss == losses[0]
    with torch.no_grad():
        restored = -flow.log_prob(validation).mean().item()
    assert restored == pytest.approx(losses[0], abs=1e-6)
    assert restored < losses[-1] - 1e-3


def test_validation_split_and_no_validation() -> None:
    data = torch.randn(200, 2)
    result = fit_density(_flow(), data, validation_fraction=0.25, epochs=2, batch_size=50, progress=False)
    assert result.steps == 2 * 3  # 150 training rows in batches of 50
    assert all(record["validation_loss"] is not None for record in result.history)
    result = fit_density(_flow(), data, validation_fraction=0.0, epochs=2, batch_size=50, progress=False)
    assert result.steps == 2 * 4
    assert result.best_validation_loss is None and result.best_step is None
    assert all(record["validation_loss"] is None for record in result.history)


def test_max_steps_and_time_limit_stop_the_run() -> None:
    data = torch.randn(512, 2)
    result = fit_density(_flow(), data, epochs=10, max_steps=7, batch_size=32, progress=False)
    assert result.stopped == "max_steps" and result.steps == 7
    started = time.monotonic()
    result = fit_density(_flow(), data, epochs=100_000, batch_size=32, time_limit=0.5, progress=False)
    assert result.stopped == "time_limit"
    assert 0 < result.steps < 100_000 * 15
    assert time.monotonic() - started < 10
    assert result.history[-1]["step"] == result.steps  # the partial epoch is validated and logged


def test_same_seed_is_bit_identical_and_another_seed_is_not() -> None:
    data = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)

    def run(seed: int) -> dict[str, torch.Tensor]:
        flow = _flow(actnorm=True)
        fit_density(flow, data, epochs=3, batch_size=64, seed=seed, progress=False)
        return flow.state_dict()

    first, second, other = run(0), run(0), run(1)
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_the_callers_random_state_is_left_alone() -> None:
    flow, data = _flow(), torch.randn(64, 2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit_density(flow, data, epochs=1, batch_size=32, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_conditional_flow_and_float64_data() -> None:
    torch.manual_seed(0)
    flow = flowkit.realnvp(features=2, context_features=1, transforms=2, hidden_features=8).double()
    context = torch.randint(0, 2, (400, 1)).double()
    data = torch.randn(400, 2, dtype=torch.float64) + 2.0 * context
    result = fit_density(flow, data.float(), context=context.numpy(), epochs=40, batch_size=100,
                         learning_rate=1e-2, progress=False)
    assert next(flow.parameters()).dtype == torch.float64
    with torch.no_grad():
        one = flow.sample(4000, context=torch.ones(1, dtype=torch.float64)).mean(0)
        zero = flow.sample(4000, context=torch.zeros(1, dtype=torch.float64)).mean(0)
    assert (one - zero).sub(2.0).abs().max() < 0.4  # the context shifts the density as in the data
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_bad_inputs_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="2 columns"):
        fit_density(_flow(), torch.randn(10, 3), progress=False)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fit_density(_flow(), torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), progress=False)
    with pytest.raises(ValueError, match="conditional: pass context with 1 columns"):
        fit_density(flowkit.realnvp(features=2, context_features=1, transforms=1), torch.randn(10, 2),
                    progress=False)
    with pytest.raises(ValueError, match="takes no context"):
        fit_density(_flow(), torch.randn(10, 2), context=torch.randn(10, 1), progress=False)
    with pytest.raises(ValueError, match="context has 3 rows"):
        fit_density(flowkit.realnvp(features=2, context_features=1, transforms=1), torch.randn(10, 2),
                    context=torch.randn(3, 1), progress=False)


def test_data_dependent_init_leaves_batchnorm_statistics_alone() -> None:
    from flowkit.bijectors import ActNorm, Affine, BatchNorm, Chain, Coupling

    torch.manual_seed(0)
    flow = flowkit.Flow(flowkit.DiagGaussian(2), Chain([BatchNorm(2, momentum=0.1), ActNorm(2),
                                                        Coupling(Affine(), 2, hidden_features=4)]))
    data = torch.randn(64, 2) * 3.0 + torch.tensor([5.0, -2.0])
    fit_density(flow, data, epochs=1, batch_size=64, validation_fraction=0.0, progress=False)
    batchnorm, actnorm = flow.bijector[0], flow.bijector[1]
    # one training step, so the running mean moved once: momentum * batch mean (not twice)
    torch.testing.assert_close(batchnorm.running_mean, 0.1 * data.mean(0))
    assert bool(actnorm.initialized)


def test_rows_with_nan_or_inf_are_refused_with_the_first_of_them() -> None:
    from flowkit.train.density import as_rows

    x = torch.randn(70_000, 3)  # more than one block of rows
    x[66_000, 1], x[69_999, 2] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"2 rows with NaN or Inf \(first: row 66000\)"):
        as_rows(x, torch.float32, "data")
    assert as_rows(x[:66_000], torch.float32, "data").shape == (66_000, 3)
