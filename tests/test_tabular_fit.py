"""fit_tabular: the Gaussian start and floor, the size rule, the time budget."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import flowkit
from flowkit.train.gaussian_start import best_shrinkage, fit_whitening, gaussian_flow, mean_nll
from flowkit.train.sizing import choose
from flowkit.train.tabular import fit_tabular


def correlated(rows: int, features: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=generator, dtype=torch.float64)
    return torch.randn(rows, features, generator=generator, dtype=torch.float64) @ mixing + 3.0


@pytest.mark.parametrize("preset", ["nsf", "maf", "realnvp", "nsf_coupling"])
def test_a_whitened_flow_starts_as_the_gaussian_of_its_rows(preset: str) -> None:
    x = correlated(300, 4)
    flow = flowkit.build(preset, features=4, transforms=2, hidden_features=16, whiten=True).double()
    fit_whitening(flow, x)
    mean, covariance = x.mean(0), torch.cov(x.T, correction=0)
    expected = torch.distributions.MultivariateNormal(mean, covariance).log_prob(x)
    torch.testing.assert_close(flow.log_prob(x), expected, rtol=1e-9, atol=1e-9)


def test_shrinkage_makes_a_gaussian_of_fewer_rows_than_columns() -> None:
    x = correlated(12, 20)
    with pytest.raises(ValueError, match="not positive definite"):
        gaussian_flow(x)
    shrinkage, score = best_shrinkage(x[:8], x[8:])
    assert shrinkage > 0 and np.isfinite(score)


def test_the_fit_never_ends_below_the_gaussian_where_a_flow_overfits() -> None:
    # 120 rows of 15 skewed, correlated columns: a flow overfits these within a few epochs.
    x = correlated(120, 15, seed=3)
    x[:, :5] = torch.exp(x[:, :5] / 4)
    fitted = fit_tabular(x, progress=False, overrides={"transforms": 3, "hidden_features": 128,
                                                       "weight_decay": 0.0, "learning_rate": 1e-2, "epochs": 60})
    train, validation = x[fitted.train_rows], x[fitted.validation_rows]
    mle = torch.distributions.MultivariateNormal(train.mean(0), torch.cov(train.T, correction=0))
    mle_validation_nll = float(-mle.log_prob(validation).mean())
    assert fitted.validation_nll <= fitted.gaussian_validation_nll + 1e-6
    assert fitted.validation_nll <= mle_validation_nll + 1e-4
    assert fitted.validation_nll == pytest.approx(mean_nll(fitted.flow, validation.float()), abs=1e-4)


def test_the_fit_beats_the_gaussian_on_a_skewed_table() -> None:
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(3000, 2, generator=generator, dtype=torch.float64)
    x = torch.stack([torch.exp(z[:, 0]), z[:, 1] + 0.5 * z[:, 0] ** 2], 1)  # log-normal and a banana
    fitted = fit_tabular(x, progress=False, overrides={"epochs": 15})
    assert fitted.kept == "flow"
    assert fitted.validation_nll < fitted.gaussian_validation_nll - 0.3


def test_the_size_rule_gives_small_tables_a_small_regularised_model() -> None:
    small, middle, large = choose(200, 10), choose(3000, 10), choose(200_000, 10)
    assert small.transforms <= middle.transforms <= large.transforms
    assert small.hidden_features <= middle.hidden_features <= large.hidden_features
    assert small.weight_decay >= middle.weight_decay >= large.weight_decay and small.weight_decay > 0
    assert small.patience >= large.patience and small.validation_fraction >= large.validation_fraction
    assert choose(200, 10, overrides={"transforms": 7}).transforms == 7
    with pytest.raises(ValueError, match="unknown setting"):
        choose(200, 10, overrides={"depth": 3})


def test_a_time_limit_bounds_the_fit() -> None:
    x = correlated(4000, 6)
    started = time.monotonic()
    fitted = fit_tabular(x, time_limit=6.0, progress=False)
    assert time.monotonic() - started < 6.0 * 1.5 + 1.0
    assert fitted.result.stopped in ("time_limit", "early_stopping")


def test_the_schedule_follows_the_time_used_when_that_is_further_along() -> None:
    from flowkit.train.schedule import Schedule, make_optimizer

    schedule = Schedule(make_optimizer(torch.nn.Linear(1, 1).parameters(), 1.0), 1.0, total_steps=1000)
    assert schedule.rate(10, elapsed=0.5) == pytest.approx(0.5)  # half the time used: half way down
    assert schedule.rate(10, elapsed=1.0) == pytest.approx(0.0)
    assert schedule.rate(500, elapsed=0.1) == pytest.approx(0.5)  # the steps are further along


def test_candidates_race_and_the_best_on_validation_wins() -> None:
    x = correlated(600, 3)
    x[:, 0] = torch.exp(x[:, 0] / 3)
    lines: list[str] = []
    fitted = fit_tabular(x, progress=False, overrides={"epochs": 4}, announce=lines.append)
    assert lines[0].startswith("racing") and len(lines) == 4  # three candidates, one line each
    scores = [float(line.split("validation ")[1].split()[0]) for line in lines[1:]]
    assert fitted.choice.transforms == choose(600, 3, rung=[0, 1, 2][int(np.argmin(scores))]).transforms


def test_a_flow_without_a_gaussian_start_gives_way_to_the_gaussian(tmp_path) -> None:
    from flowkit.io import load_model, save_model

    x = correlated(80, 6, seed=5)  # Gaussian rows: no flow beats their Gaussian on fresh rows
    fitted = fit_tabular(x, progress=False, overrides={"whiten": False, "transforms": 1, "hidden_features": 8,
                                                       "epochs": 1, "learning_rate": 1e-6})
    assert fitted.kept == "gaussian" and fitted.flow is fitted.gaussian
    assert fitted.validation_nll == pytest.approx(fitted.gaussian_validation_nll)
    save_model(tmp_path / "g.flowkit", fitted.flow.float())
    loaded = load_model(tmp_path / "g.flowkit")[0]
    torch.testing.assert_close(loaded.log_prob(x.float()), fitted.flow.float().log_prob(x.float()))


def test_resume_rebuilds_the_race_winner_from_beside_the_checkpoint(tmp_path) -> None:
    import json

    checkpoint = tmp_path / "m.ckpt"
    winner = choose(600, 3, rung=0, overrides={"epochs": 2})
    (tmp_path / "m.ckpt.choice.json").write_text(json.dumps(winner.summary()))
    lines: list[str] = []
    fitted = fit_tabular(correlated(600, 3), progress=False, checkpoint=checkpoint, resume=True,
                         announce=lines.append)
    assert not any(line.startswith("racing") for line in lines)
    assert (fitted.choice.transforms, fitted.choice.hidden_features) == (winner.transforms, winner.hidden_features)
    assert not (tmp_path / "m.ckpt.choice.json").exists()  # the finished run needs it no more


def test_large_tables_cap_the_validation_rows_and_step_down_to_a_body_the_budget_can_train(monkeypatch) -> None:
    import flowkit.train.tabular as tabular

    assert round(choose(1_000_000, 43).validation_fraction * 1_000_000) == 20_000
    assert choose(100_000, 43).validation_fraction == 0.1
    # With every step timed at a second, a 6 s budget cannot take 2,000 steps of any body: the
    # fit steps down the ladder to its smallest rung instead of barely training the largest.
    # A forward pass that alone is too slow refuses a body without timing a training step (whose
    # memory a large body would make the fit's peak); one that passes leads to a timed step.
    timed = []

    def stub(forward: float, step: float):
        def seconds(flow, choice, *_, forward_only=False):
            timed.append(forward_only)
            return forward if forward_only else step
        return seconds

    x = torch.randn(200_000, 2, dtype=torch.float64) @ torch.tensor([[1.0, 0.6], [0.0, 0.8]], dtype=torch.float64)
    monkeypatch.setattr(tabular, "_seconds_per_step", stub(forward=1.0, step=1.0))
    fit = fit_tabular(x, time_limit=6.0, progress=False)
    assert fit.choice.transforms == 2 and fit.choice.hidden_features == 32
    assert timed == [True] * 4  # four rungs refused, each by its forward pass
    assert "takes 2000 steps" in fit.choice.reasons["size"]
    timed.clear()
    monkeypatch.setattr(tabular, "_seconds_per_step", stub(forward=1e-6, step=1.0))
    assert fit_tabular(x, time_limit=6.0, progress=False).choice.hidden_features == 32
    assert timed == [True, False] * 4  # each forward pass fast enough, each step too slow
    assert fit.extra["train_rows_scored"] == 20_000 < len(fit.train_rows)
    assert fit.validation_nll <= fit.gaussian_validation_nll
