"""Progress and metric logs: plain lines, silence, CSV columns and rows, TensorBoard events."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import torch

import flowkit
from flowkit.train import fit_density
from flowkit.train.progress import COLUMNS, Progress


def _fit(**options) -> flowkit.train.FitResult:
    torch.manual_seed(0)
    flow = flowkit.realnvp(features=2, transforms=1, hidden_features=8)
    return fit_density(flow, torch.randn(200, 2), epochs=3, batch_size=45, **options)


def test_metrics_csv_has_one_row_per_epoch_with_the_documented_columns(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "metrics.csv"
    result = _fit(metrics_csv=path, progress=False)
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS
    assert [int(row["step"]) for row in rows] == [4, 8, 12]  # 180 training rows, batches of 45
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    for row, record in zip(rows, result.history):
        assert float(row["train_loss"]) == pytest.approx(record["train_loss"])
        assert float(row["validation_loss"]) == pytest.approx(record["validation_loss"])
        assert float(row["samples_per_second"]) > 0 and float(row["learning_rate"]) > 0


def test_plain_lines_when_not_a_terminal_and_silence_when_off(capsys: pytest.CaptureFixture) -> None:
    _fit(progress="auto")  # pytest's captured stderr is not a terminal
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step")]
    assert len(lines) == 3 and all("validation_loss" in line and "train_loss" in line for line in lines)
    _fit(progress=False)
    assert capsys.readouterr().err == ""


def test_bar_mode_reports_loss_and_speed() -> None:
    stream = io.StringIO()
    with Progress(10, mode="bar", stream=stream) as progress:
        for step in range(1, 11):
            progress.update(step, 1.25)
        progress.record({"step": 10, "epoch": 1, "train_loss": 1.25, "validation_loss": 1.5,
                         "samples_per_second": 1000.0})
    text = stream.getvalue()
    assert "10/10" in text and "val=1.5" in text and "samples/s=1000" in text
    with pytest.raises(ValueError, match="unknown progress mode"):
        Progress(10, mode="fancy")


def test_tensorboard_events_are_written(tmp_path: Path) -> None:
    _fit(tensorboard_dir=tmp_path / "tb", progress=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"train/train_loss", "train/validation_loss", "train/learning_rate"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("train/train_loss")] == [4, 8, 12]
