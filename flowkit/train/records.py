"""The training loop's counters and its records (one per epoch, or per interval of steps).

The counters are plain values, so a checkpoint stores them as they are and a resumed run picks
up mid-record: the record it then closes is the one an uninterrupted run would have closed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunState:
    """The loop's counters: plain values, so they go into a checkpoint as they are."""

    step: int = 0
    best_loss: float = math.inf
    best_step: int | None = None
    bad_records: int = 0
    skipped_steps: int = 0
    consecutive_bad: int = 0
    rollbacks: int = 0
    seconds: float = 0.0
    loss_sum: float = 0.0  # finite step losses since the last record, each times its rows
    loss_count: int = 0  # the rows behind loss_sum: the record's loss is a mean per row
    samples: int = 0
    stopped: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def append_record(
    run: RunState,
    validate: Callable[[], float] | None,
    rate: float,
    grad_norm: float,
    seconds: float,
    steps_per_record: int,
) -> tuple[dict[str, Any], bool]:
    """End a record: validate, update the best and patience counters, append to the history.

    Returns the record and whether the validation loss improved on the best so far.
    """
    validation = float(validate()) if validate is not None else None
    improved = validation is not None and math.isfinite(validation) and validation < run.best_loss
    if improved:
        run.best_loss, run.best_step, run.bad_records = validation, run.step, 0
    elif validation is not None:
        run.bad_records += 1
    record = {
        "step": run.step,
        "epoch": math.ceil(run.step / steps_per_record),
        "train_loss": run.loss_sum / run.loss_count if run.loss_count else None,
        "validation_loss": validation,
        "learning_rate": rate,
        "grad_norm": grad_norm,
        "seconds": run.seconds,
        "samples_per_second": run.samples / seconds if seconds > 0 else None,
        "skipped_steps": run.skipped_steps,
    }
    run.history.append(record)
    run.loss_sum, run.loss_count, run.samples = 0.0, 0, 0
    return record, improved


def is_good(record: dict[str, Any]) -> bool:
    """Whether the weights after this record are a safe place to roll back to."""
    losses = [record["train_loss"], record["validation_loss"]]
    return record["train_loss"] is not None and all(v is None or math.isfinite(v) for v in losses)
