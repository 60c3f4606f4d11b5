"""Checkpoints: atomic, safe to load, and a resumed run is the uninterrupted run bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import flowkit
from flowkit.train import density as density_module
from flowkit.train import fit_density, fit_variational, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _flow(seed: int = 0) -> flowkit.Flow:
    torch.manual_seed(seed)
    return flowkit.realnvp(features=2, transforms=2, hidden_features=8, actnorm=True)


def test_save_is_atomic_and_a_failed_save_keeps_the_old_file(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.pt"
    save_checkpoint(path, {"step": 1, "weights": torch.arange(3.0)})

    def broken_save(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "weights": torch.zeros(3)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]  # no temporary file left


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_loading_never_unpickles_code_and_rejects_foreign_files(tmp_path: Path) -> None:
    torch.save({"format_version": 1, "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable flowkit checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a flowkit training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Deliver a real SIGINT to this process while the given training step is running."""
    original = density_module.losses.negative_log_likelihood
    calls = {"count": 0}

    def loss(flow, x, context=None):
        calls["count"] += 1
        if calls["count"] == call:
            os.kill(os.getpid(), signal.SIGINT)
        return original(flow, x, context)

    monkeypatch.setattr(density_module.losses, "negative_log_likelihood", loss)


def test_interrupt_and_resume_equal_one_straight_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    data = torch.randn(330, 2, generator=torch.Generator().manual_seed(0))
    options = {"epochs": 4, "batch_size": 50, "learning_rate": 1e-2, "progress": False}
    straight = _flow()
    expected = fit_density(straight, data, **options)

    checkpoint = tmp_path / "fit.pt"
    handler = signal.getsignal(signal.SIGINT)
    _interrupt_at(monkeypatch, call=9)  # mid-way through the second epoch (6 steps per epoch)
    first = fit_density(_flow(), data, checkpoint=checkpoint, **options)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's handler is back
    assert first.stopped == "interrupted" and first.steps == 9
    err = capsys.readouterr().err
    assert f"interrupted by SIGINT at step 9; checkpoint saved to {checkpoint}; resume with" in err
    assert load_checkpoint(checkpoint)["run"]["step"] == 9

    resumed_flow = _flow(seed=5)  # different initial weights: they must come from the checkpoint
    resumed = fit_density(resumed_flow, data, checkpoint=checkpoint, resume=True, **options)
    assert resumed.stopped == expected.stopped and resumed.steps == expected.steps
    final, reference = resumed_flow.state_dict(), straight.state_dict()
    assert all(torch.equal(final[key], reference[key]) for key in reference)
    assert [r["validation_loss"] for r in resumed.history] == [r["validation_loss"] for r in expected.history]
    assert resumed.best_step == expected.best_step

    # resuming a finished run does no more work and returns the same weights
    again = _flow(seed=6)
    finished = fit_density(again, data, checkpoint=checkpoint, resume=True, **options)
    assert finished.steps == expected.steps and len(finished.history) == len(expected.history)
    assert all(torch.equal(again.state_dict()[key], reference[key]) for key in reference)


def test_variational_resume_replays_the_random_stream(tmp_path: Path) -> None:
    calls = {"count": 0}

    def log_target(x: torch.Tensor) -> torch.Tensor:
        calls["count"] += 1
        if calls["count"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return -0.5 * ((x - 1.0) / 0.7).square().sum(-1)

    options = {"steps": 12, "num_samples": 32, "learning_rate": 1e-2, "log_every": 5, "progress": False,
               "diagnostic_samples": 0}
    straight = _flow()
    calls["count"] = -1000  # no signal in the straight run
    fit_variational(straight, log_target, **options)

    calls["count"] = 0
    checkpoint = tmp_path / "vi.pt"
    first = fit_variational(_flow(), log_target, checkpoint=checkpoint, **options)
    assert first.stopped == "interrupted" and first.steps == 7
    torch.rand(5)  # the caller's random state moving on must not matter
    resumed_flow = _flow(seed=3)
    resumed = fit_variational(resumed_flow, log_target, checkpoint=checkpoint, resume=True, **options)
    assert resumed.stopped == "completed" and resumed.steps == 12
    assert all(torch.equal(resumed_flow.state_dict()[k], v) for k, v in straight.state_dict().items())


SCRIPT = textwrap.dedent("""
    import sys, torch, flowkit
    from flowkit.train import fit_density
    torch.set_num_threads(1)
    torch.manual_seed(0)
    flow = flowkit.realnvp(features=2, transforms=2, hidden_features=8)
    result = fit_density(flow, torch.randn(400, 2), epochs=1_000_000, batch_size=40,
                         checkpoint=sys.argv[1], progress="lines")
    print("stopped", result.stopped, result.steps)
""")


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_signalled_fit_saves_and_exits_cleanly(tmp_path: Path, signal_number: int) -> None:
    checkpoint = tmp_path / "fit.pt"
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(checkpoint)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=environment)
    deadline = time.monotonic() + 60
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first checkpoint is written after the first epoch
    assert checkpoint.exists(), process.communicate()
    process.send_signal(signal_number)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    name = signal.Signals(signal_number).name
    assert f"interrupted by {name} at step" in err and "resume with resume=True" in err
    assert out.startswith("stopped interrupted")
    steps = int(out.split()[-1])
    assert load_checkpoint(checkpoint)["run"]["step"] == steps
    assert "Traceback" not in err


def test_resuming_into_another_architecture_is_a_clear_error(tmp_path: Path) -> None:
    checkpoint = tmp_path / "fit.pt"
    data = torch.randn(64, 2)
    fit_density(_flow(), data, epochs=1, batch_size=32, checkpoint=checkpoint, progress=False)
    torch.manual_seed(0)
    wider = flowkit.realnvp(features=2, transforms=2, hidden_features=16, actnorm=True)
    with pytest.raises(ValueError, match="written for another model"):
        fit_density(wider, data, epochs=1, batch_size=32, checkpoint=checkpoint, resume=True, progress=False)


def test_a_fit_outside_the_main_thread_installs_no_handlers() -> None:
    import threading

    handler = signal.getsignal(signal.SIGTERM)
    results = []
    thread = threading.Thread(target=lambda: results.append(
        fit_density(_flow(), torch.randn(64, 2), epochs=2, batch_size=32, progress=False)))
    thread.start()
    thread.join(timeout=60)
    assert results and results[0].stopped == "completed"
    assert signal.getsignal(signal.SIGTERM) is handler


def test_runs_cut_by_the_time_limit_resume_into_the_straight_run(tmp_path: Path) -> None:
    # time_limit=0 stops every call after one step, mid-epoch: each call's result gets its partial
    # epoch validated, but the checkpoint continues the epoch, so early stopping, the best weights
    # and the history come out as in one uninterrupted run.
    train = torch.randn(200, 2, generator=torch.Generator().manual_seed(0)) + 3.0
    validation = torch.randn(100, 2, generator=torch.Generator().manual_seed(1))
    options = {"validation_data": validation, "epochs": 8, "batch_size": 50, "learning_rate": 1e-2,
               "patience": 2, "progress": False}

    def flow(seed: int) -> flowkit.Flow:  # no ActNorm: it starts at N(0, I), the validation data
        torch.manual_seed(seed)
        return flowkit.realnvp(features=2, transforms=2, hidden_features=8)

    straight = flow(0)
    expected = fit_density(straight, train, **options)
    assert expected.stopped == "early_stopping" and expected.steps < 8 * 4

    checkpoint, calls = tmp_path / "fit.pt", 0
    while True:
        result = fit_density(flow(0 if calls == 0 else calls), train, checkpoint=checkpoint, resume=calls > 0,
                             time_limit=0, **options)
        calls += 1
        if result.stopped != "time_limit":
            break
        if result.steps % 4:  # a partial epoch: validated for this call only
            assert result.history[-1]["step"] == result.steps
    assert calls == expected.steps  # one step per call; the last one stops early itself
    resumed = flow(99)
    result = fit_density(resumed, train, checkpoint=checkpoint, resume=True, **options)
    assert (result.stopped, result.steps, result.best_step) == (expected.stopped, expected.steps, expected.best_step)
    keys = ("step", "train_loss", "validation_loss", "learning_rate", "grad_norm")
    assert [[r[k] for k in keys] for r in result.history] == [[r[k] for k in keys] for r in expected.history]
    assert all(torch.equal(value, straight.state_dict()[key]) for key, value in resumed.state_dict().items())
