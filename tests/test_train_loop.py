"""The generic loop: non-finite steps never reach the weights, roll-back, schedule, clipping."""

from __future__ import annotations

import math

import pytest
import torch

import flowkit
from flowkit.train import density as density_module
from flowkit.train import fit_density
from flowkit.train.loop import LoopConfig, train_loop
from flowkit.train.schedule import Schedule, make_optimizer


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


class Recorder:
    """A regression loss that records the weights each step starts from and can go bad."""

    def __init__(self, model: torch.nn.Module, bad_steps: set[int], kind: str = "loss") -> None:
        torch.manual_seed(1)
        self.model, self.bad_steps, self.kind = model, bad_steps, kind
        self.x = torch.randn(32, 3)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
        self.before: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, step: int) -> tuple[torch.Tensor, int]:
        self.before[step] = _weights(self.model)
        x = self.x
        if step in self.bad_steps and self.kind == "gradient":
            x = x.clone()
            x[0, 0] = math.inf  # finite loss is impossible here, but the gradient is what explodes
        loss = (self.model(x).squeeze(-1) - self.y).square().mean()
        if step in self.bad_steps and self.kind == "loss":
            loss = loss * math.nan
        return loss, len(x)


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_non_finite_steps_are_skipped_and_counted(kind: str) -> None:
    model = torch.nn.Linear(3, 1)
    recorder = Recorder(model, bad_steps={4, 7}, kind=kind)
    config = LoopConfig(total_steps=10, steps_per_record=5, learning_rate=0.01, progress=False)
    result = train_loop(model, recorder, config)
    assert result.skipped_steps == 2
    assert result.history[-1]["skipped_steps"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # a skipped step leaves the weights exactly as they were (no partial update, no momentum)
    assert _equal(recorder.before[5], recorder.before[4])
    assert _equal(recorder.before[8], recorder.before[7])
    assert not _equal(recorder.before[6], recorder.before[5])  # good steps do move the weights
    assert result.rollbacks == 0


def test_consecutive_bad_steps_roll_back_with_a_lower_learning_rate(capsys: pytest.CaptureFixture) -> None:
    model = torch.nn.Linear(3, 1)
    recorder = Recorder(model, bad_steps={11, 12, 13})
    config = LoopConfig(total_steps=20, steps_per_record=5, learning_rate=0.01, schedule="constant",
                        max_bad_steps=3, progress=False)
    result = train_loop(model, recorder, config)
    assert result.rollbacks == 1 and result.skipped_steps == 3
    # the last good state is the one recorded at step 10; step 11 had moved away from it
    assert not _equal(recorder.before[11], recorder.before[10])
    assert _equal(recorder.before[14], recorder.before[10])
    assert result.history[-1]["learning_rate"] == pytest.approx(0.005)
    assert result.stopped == "completed"
    err = capsys.readouterr().err
    assert "step 12: non-finite loss or gradient; step skipped" in err
    assert "rolled back to the weights of step 10" in err
    assert "3 non-finite steps were skipped, 1 roll-backs" in err


def test_a_loss_that_stays_non_finite_stops_as_diverged() -> None:
    model = torch.nn.Linear(3, 1)
    initial = _weights(model)
    recorder = Recorder(model, bad_steps=set(range(100)))
    config = LoopConfig(total_steps=100, steps_per_record=10, max_bad_steps=2, max_rollbacks=2, progress=False)
    result = train_loop(model, recorder, config)
    assert result.stopped == "diverged"
    assert result.rollbacks == 3 and result.steps == 6
    assert _equal(_weights(model), initial)


def test_fit_density_skips_an_injected_non_finite_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"count": 0}
    original = density_module.losses.negative_log_likelihood

    def sometimes_nan(flow, x, context=None):
        calls["count"] += 1
        loss = original(flow, x, context)
        return loss * math.inf if calls["count"] in (3, 9) else loss

    monkeypatch.setattr(density_module.losses, "negative_log_likelihood", sometimes_nan)
    torch.manual_seed(0)
    flow = flowkit.realnvp(features=2, transforms=2, hidden_features=8)
    result = fit_density(flow, torch.randn(200, 2), epochs=2, batch_size=32, progress=False)
    assert result.skipped_steps == 2
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    assert all(math.isfinite(r["train_loss"]) for r in result.history)


def test_schedule_warmup_then_cosine_to_zero() -> None:
    optimizer = make_optimizer(torch.nn.Linear(2, 2).parameters(), 0.1)
    schedule = Schedule(optimizer, 0.1, total_steps=110, kind="cosine", warmup_steps=10)
    rates = [schedule.apply(step) for step in range(111)]
    assert rates[0] == pytest.approx(0.01) and rates[9] == pytest.approx(0.1)
    assert rates[60] == pytest.approx(0.05) and rates[110] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert optimizer.param_groups[0]["lr"] == rates[-1]
    constant = Schedule(optimizer, 0.1, total_steps=10, kind="constant")
    assert {constant.rate(step) for step in range(10)} == {0.1}
    with pytest.raises(ValueError, match="unknown schedule"):
        Schedule(optimizer, 0.1, 10, kind="exponential")


def test_gradient_clipping_bounds_the_update() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    x = torch.full((8, 1), 1000.0)  # huge gradient
    config = LoopConfig(total_steps=1, steps_per_record=1, learning_rate=1.0, clip_grad_norm=1e-3,
                        schedule="constant", progress=False)
    result = train_loop(model, lambda step: ((model(x) - 5000.0).square().mean(), 8), config)
    assert result.history[0]["grad_norm"] > 1e3  # the norm is reported before clipping
    # the gradient the optimiser saw (left in .grad after the last step) was scaled to the bound
    assert model.weight.grad.norm().item() == pytest.approx(1e-3, rel=1e-4)
    config.clip_grad_norm = None
    with torch.no_grad():
        model.weight.fill_(0.0)
    result = train_loop(model, lambda step: ((model(x) - 5000.0).square().mean(), 8), config)
    assert model.weight.grad.norm().item() == pytest.approx(result.history[0]["grad_norm"], rel=1e-6)
    assert model.weight.grad.norm().item() == pytest.approx(2 * 5000.0 * 1000.0, rel=1e-6)


class BatchNormRegression(Recorder):
    """The Recorder's regression through a torch BatchNorm1d and a flowkit BatchNorm: both write
    running statistics during the forward pass, a bad one included."""

    def __init__(self, bad_steps: set[int]) -> None:
        from flowkit.bijectors import BatchNorm

        class Model(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.torch_norm, self.flowkit_norm = torch.nn.BatchNorm1d(3), BatchNorm(3)
                self.linear = torch.nn.Linear(3, 1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.linear(self.flowkit_norm(self.torch_norm(x))[0])

        super().__init__(Model(), bad_steps, kind="gradient")


def test_a_skipped_step_leaves_buffers_as_they_were(tmp_path) -> None:
    recorder = BatchNormRegression(bad_steps={3, 6, 7})
    checkpoint = tmp_path / "run.pt"
    config = LoopConfig(total_steps=8, steps_per_record=4, learning_rate=0.01, progress=False,
                        checkpoint=checkpoint)
    validation = iter([2.0, 1.0])  # each record improves: the best weights are the last ones
    result = train_loop(recorder.model, recorder, config, validate=lambda: next(validation))
    assert result.skipped_steps == 3
    # running statistics (and torch's num_batches_tracked) are exactly the pre-step ones
    assert _equal(recorder.before[4], recorder.before[3])
    assert _equal(_weights(recorder.model), recorder.before[6])
    assert not _equal(recorder.before[3], recorder.before[2])  # good steps do update them
    saved = torch.load(checkpoint, weights_only=True)
    for state in (saved["model"], saved["best_state"], saved["last_good"]["model"]):
        assert all(torch.isfinite(value).all() for value in state.values() if value.is_floating_point())


def test_non_finite_weights_from_finite_steps_are_never_kept_or_saved(tmp_path) -> None:
    # An absurd step size turns the weight to -inf while tanh keeps loss and gradient finite.
    model = torch.nn.Linear(1, 1, bias=False)
    initial = _weights(model)
    x = torch.ones(4, 1)
    checkpoint = tmp_path / "run.pt"
    config = LoopConfig(total_steps=20, steps_per_record=1, learning_rate=1e39, schedule="constant",
                        max_rollbacks=2, progress=False, checkpoint=checkpoint)
    result = train_loop(model, lambda step: (torch.tanh(model(x)).mean(), 4), config, validate=lambda: 0.0)
    assert result.stopped == "diverged" and result.rollbacks == 3 and result.skipped_steps == 0
    assert _equal(_weights(model), initial)
    saved = torch.load(checkpoint, weights_only=True)
    for state in (saved["model"], saved["best_state"], saved["last_good"]["model"]):
        assert _equal(state, initial)


def test_non_finite_initial_weights_are_refused() -> None:
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.bias.fill_(math.nan)
    config = LoopConfig(total_steps=2, steps_per_record=1, progress=False)
    with pytest.raises(ValueError, match="NaN or Inf weights"):
        train_loop(model, lambda step: (model(torch.ones(1, 2)).sum(), 1), config)


def test_gradients_reach_only_the_trained_parameters() -> None:
    model, outside = torch.nn.Linear(2, 1), torch.nn.Parameter(torch.ones(1))
    config = LoopConfig(total_steps=3, steps_per_record=1, progress=False)
    train_loop(model, lambda step: ((model(torch.ones(4, 2)) - outside).square().mean(), 4), config)
    assert outside.grad is None and outside.item() == 1.0
    assert model.weight.grad is not None


def test_train_loss_is_a_mean_per_row(monkeypatch: pytest.MonkeyPatch) -> None:
    # 330 rows in batches of 100: the last batch of 30 rows counts for 30 rows, not for 100.
    seen: list[tuple[float, int]] = []
    original = density_module.losses.negative_log_likelihood

    def recording(flow, x, context=None):
        loss = original(flow, x, context)
        seen.append((loss.item(), x.shape[0]))
        return loss

    monkeypatch.setattr(density_module.losses, "negative_log_likelihood", recording)
    torch.manual_seed(0)
    flow = flowkit.realnvp(features=2, transforms=2, hidden_features=8)
    data = torch.randn(330, 2, generator=torch.Generator().manual_seed(0)) * 2.0
    result = fit_density(flow, data, epochs=1, batch_size=100, validation_fraction=0.0, learning_rate=0.05,
                         progress=False)
    assert [rows for _, rows in seen] == [100, 100, 100, 30]
    per_row = sum(loss * rows for loss, rows in seen) / 330
    assert result.history[0]["train_loss"] == pytest.approx(per_row, rel=1e-12)
    assert abs(per_row - sum(loss for loss, _ in seen) / 4) > 1e-4  # the two means really differ here


def test_an_infinite_buffer_is_not_mistaken_for_bad_weights() -> None:
    model = torch.nn.Linear(2, 1)
    model.register_buffer("sentinel", torch.tensor(math.inf))  # a generic model's own business
    config = LoopConfig(total_steps=4, steps_per_record=2, learning_rate=0.01, progress=False)
    result = train_loop(model, lambda step: (model(torch.ones(4, 2)).square().mean(), 4), config)
    assert result.stopped == "completed" and result.rollbacks == 0 and result.skipped_steps == 0


def test_the_buffer_guard_shadows_state_not_derived_buffers() -> None:
    """Persistent buffers (running statistics) are shadowed and restored; derived ones (a MADE's
    masks, non-persistent) are not copied, since no step writes them."""
    from flowkit.train.guard import BufferGuard

    flow = flowkit.build("maf", features=3, transforms=2, hidden_features=[8, 8])
    norm = torch.nn.BatchNorm1d(3)
    guard = BufferGuard(torch.nn.ModuleList([flow, norm]))
    shadowed = {id(buffer) for group in guard.groups for buffer in group}
    masks = [buffer for name, buffer in flow.named_buffers() if name.endswith(".mask")]
    assert masks and not any(id(mask) in shadowed for mask in masks)
    assert id(norm.running_mean) in shadowed
    norm.train()(torch.randn(16, 3) + 5.0)  # a step's forward pass writes the statistics
    guard.revert()
    assert torch.equal(norm.running_mean, torch.zeros(3))
