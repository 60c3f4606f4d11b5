"""Progress reports and metric logs for the training loop.

Three views of the same numbers: a live tqdm bar (loss, validation score, speed) when stderr is
a terminal, plain periodic lines when it is not (logs, CI, pipes), and files: a CSV with one row
per logged record and, optionally, TensorBoard scalars. Only the main process of a distributed
run reports; the others get a silent ``Progress``.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

COLUMNS: tuple[str, ...] = (
    "step", "epoch", "train_loss", "validation_loss", "learning_rate", "grad_norm",
    "seconds", "samples_per_second", "skipped_steps",
)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


class Progress:
    """Reports a run's steps and records.

    Args:
        total_steps: length of the run, for the bar.
        mode: ``"auto"`` (bar on a terminal, lines otherwise), ``"bar"``, ``"lines"``, or
            ``False``/``None`` for silence. ``True`` means ``"auto"``.
        metrics_csv: path of a CSV file with one row per record (columns ``COLUMNS``).
        tensorboard_dir: folder for TensorBoard event files.
        initial_step: where a resumed run starts.
        history: records of the run so far (a resumed run rewrites them to the CSV first).
        line_interval: seconds between plain progress lines.
        enabled: False in the non-main processes of a distributed run: no output at all.
        stream: where the bar and lines go (stderr by default).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "metrics.csv")
        >>> with Progress(10, mode=False, metrics_csv=path) as progress:
        ...     progress.record({"step": 10, "epoch": 1, "train_loss": 1.5})
        >>> open(path).read().splitlines()[1]
        '10,1,1.5,,,,,,'
    """

    def __init__(
        self,
        total_steps: int,
        mode: bool | str | None = "auto",
        metrics_csv: str | os.PathLike[str] | None = None,
        tensorboard_dir: str | os.PathLike[str] | None = None,
        initial_step: int = 0,
        history: list[dict[str, Any]] | None = None,
        line_interval: float = 10.0,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total_steps = total_steps
        self.line_interval = line_interval
        self.mode = self._resolve_mode(mode) if enabled else "off"
        self.enabled = enabled
        self._bar = None
        self._csv_file = None
        self._csv = None
        self._writer = None
        self._last_line = time.monotonic()
        self._last_postfix = 0.0
        self._step = initial_step
        self._postfix: dict[str, str] = {}
        if not enabled:
            return
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, file=self.stream, unit="step",
                             dynamic_ncols=True, leave=True)
        if metrics_csv is not None:
            Path(metrics_csv).parent.mkdir(parents=True, exist_ok=True)
            self._csv_file = open(metrics_csv, "w", newline="")  # noqa: SIM115 - closed in close()
            self._csv = csv.DictWriter(self._csv_file, fieldnames=COLUMNS, extrasaction="ignore")
            self._csv.writeheader()
            for record in history or []:
                self._csv.writerow(record)
            self._csv_file.flush()
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when asked

            self._writer = SummaryWriter(log_dir=str(tensorboard_dir))

    def _resolve_mode(self, mode: bool | str | None) -> str:
        if mode is None or mode is False:
            return "off"
        if mode is True or mode == "auto":
            return "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        if mode in ("bar", "lines"):
            return mode
        raise ValueError(f"unknown progress mode {mode!r}; choose auto, bar, lines or False")

    def update(self, step: int, train_loss: float | None = None) -> None:
        """Called after every step; cheap (a clock read) unless something is due."""
        advanced, self._step = step - self._step, step
        if self.mode == "off":
            return
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(advanced)
            if train_loss is not None and now - self._last_postfix > 0.5:
                self._postfix["loss"] = _number(train_loss)
                self._bar.set_postfix(self._postfix, refresh=False)
                self._last_postfix = now
        elif now - self._last_line >= self.line_interval:
            self._line(f"step {step}/{self.total_steps}  loss {_number(train_loss)}")

    def record(self, record: dict[str, Any]) -> None:
        """Log one record (an epoch, or an interval of steps): CSV row, TensorBoard, bar or line."""
        if not self.enabled:
            return
        if self._csv is not None:
            self._csv.writerow(record)
            self._csv_file.flush()
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self._writer.add_scalar(f"train/{key}", value, record["step"])
            self._writer.flush()
        if self._bar is not None:
            self._postfix = {"loss": _number(record.get("train_loss")),
                             "val": _number(record.get("validation_loss")),
                             "samples/s": _number(record.get("samples_per_second"))}
            self._bar.set_postfix(self._postfix)
        elif self.mode == "lines":
            self._line("  ".join(f"{key} {_number(record.get(key))}" for key in COLUMNS if key in record))

    def message(self, text: str) -> None:
        """A line on the stream that does not break the bar; printed even with progress off."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
        self._last_line = time.monotonic()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
