"""The size rule of ``flowkit fit``'s defaults: preset, depth, width, regularisation and schedule
chosen from the number of rows and columns and the time budget.

The thresholds were measured with ``benchmarks/tabular.py`` on real tables of 150 to 20,000 rows
and 4 to 64 columns (the evidence and the table of choices are in ``benchmarks/README.md``).
Small tables get a small, strongly regularised body with a long patience; large tables a deeper,
wider one. Every field can be overridden.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field
from typing import Any

# Shrinkage of the Gaussian's covariance towards its diagonal, tried in this order (0 first).
SHRINKAGE_GRID = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass
class Choice:
    """One configuration of a tabular fit, and why each field has its value."""

    preset: str
    transforms: int
    hidden_features: int | list[int]
    num_bins: int
    tail_bound: float
    batch_size: int
    learning_rate: float
    weight_decay: float
    epochs: int
    patience: int
    validation_fraction: float
    max_steps: int | None = None
    whiten: bool = True
    reasons: dict[str, str] = field(default_factory=dict)

    def preset_arguments(self, seed: int) -> dict[str, Any]:
        """Keyword arguments for ``flowkit.build(self.preset, ...)``: those the preset takes
        (``num_bins`` only for splines, ``seed`` only where it fixes a permutation)."""
        from flowkit.presets import PRESETS

        arguments = {"transforms": self.transforms, "hidden_features": self.hidden_features, "seed": seed,
                     "num_bins": self.num_bins, "tail_bound": self.tail_bound}
        accepted = inspect.signature(PRESETS[self.preset]).parameters
        return {name: value for name, value in arguments.items() if name in accepted}

    def summary(self) -> dict[str, Any]:
        """The fields as plain values (for printing, the model file and ``flowkit info``)."""
        return {key: value for key, value in asdict(self).items() if key != "reasons"}


OVERRIDABLE = ("preset", "transforms", "hidden_features", "num_bins", "tail_bound", "batch_size", "learning_rate",
               "weight_decay", "epochs", "max_steps", "patience", "validation_fraction", "whiten")


# Bodies from small to large: (transforms, hidden width).
LADDER = ((2, 32), (2, 64), (3, 128), (5, 256), (5, 512))
STRUCTURE = ("preset", "transforms", "hidden_features")  # given any of these, no race
RACE_MAX_ROWS = 200_000  # above this a race costs more than the budget it informs
MAX_VALIDATION_ROWS = 20_000  # more only slows every validation, and leaves fewer rows to train on
MIN_FINAL_STEPS = 2000  # under a time limit, a body too slow for this many steps gives way to a smaller one
MIN_PATIENCE_STEPS = 400  # tiny tables have one step an epoch: patience counts at least these steps


def rung_for(rows: int) -> int:
    """The body for a table of ``rows``: the ladder rung it starts the race from."""
    return 1 if rows < 1000 else 2 if rows < 20_000 else 3 if rows < 200_000 else 4


def choose(rows: int, features: int, time_limit: float | None = None, context_features: int = 0,
           overrides: dict[str, Any] | None = None, rung: int | None = None) -> Choice:
    """The configuration for a table of ``rows`` x ``features`` (with the body of ladder ``rung``,
    by default the one its row count suggests), with ``overrides`` applied.

    Example:
        >>> small, large = choose(200, 10), choose(500_000, 10)
        >>> small.transforms < large.transforms and small.weight_decay > large.weight_decay
        True
    """
    reasons: dict[str, str] = {}
    rung = rung_for(rows) if rung is None else rung
    transforms, width = LADDER[rung]
    width = max(width, 2 * (features + context_features))  # MADE wants units for every degree
    reasons["size"] = f"{transforms} transforms of width {width}: ladder rung {rung} of {len(LADDER) - 1}"
    decay = 1e-3 if rows < 1000 else 1e-4 if rows < 20_000 else 1e-5
    reasons["weight_decay"] = f"{decay:g} for {rows} rows: fewer rows, more decay"
    batch_size = int(min(512, max(32, 2 ** round(_log2(rows / 20)))))
    reasons["batch_size"] = "about 20 steps an epoch, between 32 and 512 rows"
    validation_fraction = 0.2 if rows < 5000 else min(0.1, MAX_VALIDATION_ROWS / rows)
    reasons["validation_fraction"] = ("a larger share on small tables, so early stopping has a steadier signal; "
                                      f"at most {MAX_VALIDATION_ROWS} rows, which score to a few hundredths of a nat")
    choice = Choice(
        preset="nsf", transforms=transforms, hidden_features=width, num_bins=8, tail_bound=5.0, batch_size=batch_size,
        learning_rate=1e-3, weight_decay=decay, epochs=0, patience=0,
        validation_fraction=validation_fraction, reasons=reasons)
    reasons["preset"] = "autoregressive splines: flexible marginals and dependence, one-pass sampling in flowkit"
    for key, value in (overrides or {}).items():
        if key not in OVERRIDABLE:
            raise ValueError(f"unknown setting {key!r}; choose from {', '.join(OVERRIDABLE)}")
        if value is not None:
            setattr(choice, key, value)
            reasons[key] = "given"
    # Patience and epochs count epochs, whose length follows the batch size (given or chosen).
    steps_per_epoch = max(1, math.ceil(rows * (1 - choice.validation_fraction) / choice.batch_size))
    if not choice.patience:
        choice.patience = max(20, math.ceil(MIN_PATIENCE_STEPS / steps_per_epoch))
        reasons["patience"] = f"epochs of at least {MIN_PATIENCE_STEPS} steps without a better validation score"
    if not choice.epochs:
        choice.epochs = max(200, math.ceil(20_000 / steps_per_epoch)) if time_limit is None else 100_000
        reasons["epochs"] = "until early stopping" + ("" if time_limit is None else " or the time limit")
    return choice


def candidates(rows: int, features: int, time_limit: float | None = None, context_features: int = 0,
               overrides: dict[str, Any] | None = None) -> list[Choice]:
    """The configurations that race on the validation rows: the body the row count suggests and
    its neighbours on the ladder, or the one configuration the overrides pin down.

    Example:
        >>> [c.transforms for c in candidates(3000, 10)], len(candidates(3000, 10, overrides={"transforms": 4}))
        ([2, 3, 5], 1)
    """
    if fixes_structure(overrides) or rows >= RACE_MAX_ROWS:
        return [choose(rows, features, time_limit, context_features, overrides)]
    middle = rung_for(rows)
    rungs = range(max(0, middle - 1), min(len(LADDER), middle + 2))
    return [choose(rows, features, time_limit, context_features, overrides, rung) for rung in rungs]


def fixes_structure(overrides: dict[str, Any] | None) -> bool:
    """Whether ``overrides`` pin the body (preset, depth or width), so nothing races or resizes."""
    return any((overrides or {}).get(key) is not None for key in STRUCTURE)


def _log2(value: float) -> float:
    return math.log2(max(value, 1.0))
