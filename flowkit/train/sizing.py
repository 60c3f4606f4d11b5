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
    batch_size: int
    learning_rate: float
    weight_decay: float
    epochs: int
    patience: int
    validation_fraction: float
    max_steps: int | None = None
    reasons: dict[str, str] = field(default_factory=dict)

    def preset_arguments(self, seed: int) -> dict[str, Any]:
        """Keyword arguments for ``flowkit.build(self.preset, ...)``: those the preset takes
        (``num_bins`` only for splines, ``seed`` only where it fixes a permutation)."""
        from flowkit.presets import PRESETS

        arguments = {"transforms": self.transforms, "hidden_features": self.hidden_features, "seed": seed,
                     "num_bins": self.num_bins}
        accepted = inspect.signature(PRESETS[self.preset]).parameters
        return {name: value for name, value in arguments.items() if name in accepted}

    def summary(self) -> dict[str, Any]:
        """The fields as plain values (for printing, the model file and ``flowkit info``)."""
        return {key: value for key, value in asdict(self).items() if key != "reasons"}


OVERRIDABLE = ("preset", "transforms", "hidden_features", "num_bins", "batch_size", "learning_rate",
               "weight_decay", "epochs", "max_steps", "patience", "validation_fraction")


def choose(rows: int, features: int, time_limit: float | None = None, context_features: int = 0,
           overrides: dict[str, Any] | None = None) -> Choice:
    """The configuration for a table of ``rows`` x ``features``.

    Example:
        >>> small, large = choose(200, 10), choose(100_000, 10)
        >>> small.transforms < large.transforms and small.weight_decay > large.weight_decay
        True
    """
    reasons: dict[str, str] = {}
    if rows < 1000:
        transforms, width, decay = 2, 32, 1e-2
        reasons["size"] = f"{rows} rows: a small body with strong weight decay, as few rows overfit fast"
    elif rows < 5000:
        transforms, width, decay = 3, 64, 1e-3
        reasons["size"] = f"{rows} rows: a middle-sized body"
    elif rows < 50_000:
        transforms, width, decay = 4, 128, 1e-4
        reasons["size"] = f"{rows} rows: a large body"
    else:
        transforms, width, decay = 5, 256, 0.0
        reasons["size"] = f"{rows} rows: the largest body, which this many rows do not overfit"
    width = max(width, 2 * (features + context_features))  # MADE needs units for every degree
    batch_size = int(min(512, max(32, 2 ** round(_log2(rows / 20)))))
    reasons["batch_size"] = "about 20 steps an epoch, between 32 and 512 rows"
    validation_fraction = 0.2 if rows < 5000 else 0.1
    reasons["validation_fraction"] = "a larger share on small tables, so early stopping has a steady signal"
    choice = Choice(
        preset="nsf", transforms=transforms, hidden_features=width, num_bins=8, batch_size=batch_size,
        learning_rate=1e-3, weight_decay=decay, epochs=1000 if rows < 5000 else 300, patience=30 if rows < 5000 else 15,
        validation_fraction=validation_fraction, reasons=reasons)
    reasons["preset"] = "autoregressive splines: flexible marginals and dependence, one-pass sampling in flowkit"
    for key, value in (overrides or {}).items():
        if key not in OVERRIDABLE:
            raise ValueError(f"unknown setting {key!r}; choose from {', '.join(OVERRIDABLE)}")
        if value is not None:
            setattr(choice, key, value)
            reasons[key] = "given"
    return choice


def _log2(value: float) -> float:
    return math.log2(max(value, 1.0))
