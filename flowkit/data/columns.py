"""What each column of a table is to a model: modelled, context (conditioning) or left out;
integer-valued (dequantised) or continuous; bounded or not. ``column_roles`` turns the command
line's options into a ``ColumnRoles``, refusing contradictions with one line, and builds the
preprocessing spec the model's config stores.

Columns are named by name or by 0-based index (``"a,b"``, ``"0,3"``), names first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flowkit.data.tabular import DataError, discrete_columns


def resolve_columns(spec: str | Sequence[str] | None, names: list[str], option: str) -> list[int]:
    """Indices of the columns a comma-separated list names (names or 0-based indices).

    Example:
        >>> resolve_columns("b,0", ["a", "b", "c"], "--columns")
        [1, 0]
    """
    if spec is None:
        return []
    parts = [part.strip() for item in ([spec] if isinstance(spec, str) else spec) for part in item.split(",")]
    if not parts or any(not part for part in parts):
        raise DataError(f"{option}: empty column name in {','.join(parts)!r}")
    indices = []
    for part in parts:
        if part in names:
            index = names.index(part)
        elif part.isdigit() and int(part) < len(names):
            index = int(part)
        else:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise DataError(f"{option}: unknown column {part!r} (the table has {len(names)} columns: {shown})")
        if index in indices:
            raise DataError(f"{option}: column {names[index]!r} is named twice")
        indices.append(index)
    return indices


def parse_bounds(items: Sequence[str], names: list[str]) -> dict[int, tuple[float | None, float | None]]:
    """``COL=LO:HI`` items (either side may be empty: open) as ``{column index: (lo, hi)}``.

    Example:
        >>> parse_bounds(["a=0:1", "b=0:"], ["a", "b"])
        {0: (0.0, 1.0), 1: (0.0, None)}
    """
    bounds: dict[int, tuple[float | None, float | None]] = {}
    for item in items:
        column, equals, interval = item.partition("=")
        low, colon, high = interval.partition(":")
        if not equals or not colon:
            raise DataError(f"--bounds {item!r}: expected COL=LO:HI (either side may be left empty)")
        (index,) = resolve_columns(column, names, "--bounds")
        try:
            lo = float(low) if low.strip() else None
            hi = float(high) if high.strip() else None
        except ValueError:
            raise DataError(f"--bounds {item!r}: {low if _bad(low) else high!r} is not a number") from None
        lo = None if lo is not None and lo == -math.inf else lo
        hi = None if hi is not None and hi == math.inf else hi
        if any(value is not None and not math.isfinite(value) for value in (lo, hi)):
            raise DataError(f"--bounds {item!r}: a bound must be a finite number")
        if lo is None and hi is None:
            raise DataError(f"--bounds {item!r}: gives no bound")
        if lo is not None and hi is not None and not lo < hi:
            raise DataError(f"--bounds {item!r}: LO must be below HI")
        if index in bounds:
            raise DataError(f"--bounds: column {names[index]!r} is bounded twice")
        bounds[index] = (lo, hi)
    return bounds


def _bad(text: str) -> bool:
    try:
        float(text)
        return False
    except ValueError:
        return bool(text.strip())


@dataclass
class ColumnRoles:
    """The roles of a table's columns (indices into ``names``).

    Attributes:
        names: every column of the table, in its order.
        modelled: the columns whose density is fitted, in the model's order.
        context: the columns it is conditioned on (empty: an unconditional model).
        discrete: modelled columns of whole numbers, dequantised.
        bounds: modelled columns with bounds, ``{index: (lo, hi)}`` (None: open).
        detected: discrete columns found by looking at the data rather than named.
    """

    names: list[str]
    modelled: list[int]
    context: list[int] = field(default_factory=list)
    discrete: list[int] = field(default_factory=list)
    bounds: dict[int, tuple[float | None, float | None]] = field(default_factory=dict)
    detected: list[int] = field(default_factory=list)

    @property
    def ignored(self) -> list[int]:
        return [index for index in range(len(self.names)) if index not in self.modelled + self.context]

    def positions(self, indices: Sequence[int]) -> list[int]:
        """Positions among the modelled columns of these table columns."""
        return [self.modelled.index(index) for index in indices]

    def preprocessing(self, values: np.ndarray) -> list[dict[str, Any]]:
        """The model's preprocessing spec (positions among the modelled columns, data units):
        dequantisation of the integer columns, then bounds. An integer column bounded by
        ``[lo, hi]`` holds cells ``[k, k + 1)``, so its dequantised values lie in ``[lo, hi + 1]``."""
        spec: list[dict[str, Any]] = []
        if self.discrete:
            spec.append({"layer": "dequantize", "columns": self.positions(sorted(self.discrete))})
        if self.bounds:
            lower, upper, scale = [], [], []
            for index in self.modelled:
                lo, hi = self.bounds.get(index, (None, None))
                if index in self.discrete and hi is not None:
                    hi = hi + 1.0
                lower.append(lo)
                upper.append(hi)
                spread = float(np.std(values[:, index])) if index in self.bounds else 1.0
                scale.append(spread if spread > 0 else 1.0)
            spec.append({"layer": "bounds", "lower": lower, "upper": upper, "scale": scale})
        return spec

    def metadata(self) -> dict[str, Any]:
        """The roles by name, for the model file and ``flowkit info``."""
        name = self.names.__getitem__
        return {"table_columns": list(self.names), "modelled": [name(i) for i in self.modelled],
                "context": [name(i) for i in self.context], "ignored": [name(i) for i in self.ignored],
                "discrete": [name(i) for i in self.discrete], "detected_discrete": [name(i) for i in self.detected],
                "bounds": {name(i): list(bound) for i, bound in self.bounds.items()}}


def column_roles(names: list[str], values: np.ndarray, *, columns: str | None = None, exclude: str | None = None,
                 context: str | None = None, discrete: str | None = None, continuous: str | None = None,
                 bounds: Sequence[str] = ()) -> ColumnRoles:
    """The roles the command line's options give the columns of a table, checked against its values.

    Raises:
        DataError: unknown or duplicated names, a column given two roles, nothing left to
            model, a ``--discrete`` column holding fractions, values outside their bounds.

    Example:
        >>> import numpy as np
        >>> values = np.array([[0.5, 1, 3.2], [0.25, 2, 1.1], [0.75, 2, 0.4], [0.1, 1, 2.0]])
        >>> roles = column_roles(["p", "k", "y"], values, context="y", bounds=["p=0:1"])
        >>> [roles.names[i] for i in roles.modelled], [roles.names[i] for i in roles.discrete]
        (['p', 'k'], ['k'])
    """
    chosen = resolve_columns(columns, names, "--columns")
    excluded = resolve_columns(exclude, names, "--exclude")
    conditioning = resolve_columns(context, names, "--context")
    for index in conditioning:
        if index in chosen:
            raise DataError(f"column {names[index]!r} is in both --context and --columns; a column is either "
                            "modelled or conditioned on")
        if index in excluded:
            raise DataError(f"column {names[index]!r} is in both --context and --exclude")
    both = [names[index] for index in chosen if index in excluded]
    if both:
        raise DataError(f"column {both[0]!r} is in both --columns and --exclude")
    modelled = chosen or [index for index in range(len(names)) if index not in excluded + conditioning]
    if not modelled:
        raise DataError("no columns left to model (every column is excluded or context)")
    named_discrete = resolve_columns(discrete, names, "--discrete")
    named_continuous = resolve_columns(continuous, names, "--continuous")
    bounded = parse_bounds(bounds, names)
    for option, indices in (("--discrete", named_discrete), ("--continuous", named_continuous),
                            ("--bounds", list(bounded))):
        for index in indices:
            if index not in modelled:
                role = "a context column" if index in conditioning else "not modelled"
                raise DataError(f"{option}: column {names[index]!r} is {role}; it applies to modelled columns")
    clash = [names[index] for index in named_discrete if index in named_continuous]
    if clash:
        raise DataError(f"column {clash[0]!r} is in both --discrete and --continuous")
    for index in named_discrete:
        column = values[:, index]
        fractional = np.flatnonzero(column != np.round(column))
        if len(fractional):
            raise DataError(f"--discrete: column {names[index]!r} holds non-integer values (row {fractional[0]}: "
                            f"{column[fractional[0]]:g})")
    subset = take_columns(values, modelled)
    found = [modelled[i] for i, name in enumerate(names[i] for i in modelled)
             if name in discrete_columns_of(subset, [names[i] for i in modelled])]
    detected = [index for index in found if index not in named_discrete + named_continuous]
    integer = sorted(set(named_discrete) | set(detected))
    check_bounds(values, names, bounded)
    return ColumnRoles(list(names), modelled, conditioning, integer, bounded, detected)


def take_columns(values: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """``values[:, indices]``, or ``values`` itself (no copy of a large table) when the indices
    are every column in order."""
    return values if list(indices) == list(range(values.shape[1])) else values[:, list(indices)]


def discrete_columns_of(values: np.ndarray, names: list[str]) -> list[str]:
    from flowkit.data.tabular import Table

    return discrete_columns(Table(values, names))


def check_bounds(values: np.ndarray, names: list[str], bounds: dict[int, tuple[float | None, float | None]],
                 label: str = "the data") -> None:
    """Refuse values outside their column's bounds, saying which rows (0-based data rows)."""
    for index, (lo, hi) in bounds.items():
        column = values[:, index]
        outside = np.flatnonzero(((column < lo) if lo is not None else False) |
                                 ((column > hi) if hi is not None else False))
        if len(outside):
            rows = ", ".join(map(str, outside[:5])) + (", ..." if len(outside) > 5 else "")
            shown = f"[{'' if lo is None else f'{lo:g}'}:{'' if hi is None else f'{hi:g}'}]"
            raise DataError(f"{label}: column {names[index]!r} has {len(outside)} value(s) outside its bounds "
                            f"{shown} (0-based data rows {rows}; first {column[outside[0]]:g})")


def proposals(roles: ColumnRoles, values: np.ndarray) -> list[str]:
    """Bounds the data suggest but nobody asked for: columns in [0, 1], strictly positive columns,
    and non-negative integer columns, one line per kind. Proposed, never applied."""
    kinds: dict[str, list[str]] = {"unit": [], "positive": [], "counts": []}
    for index in roles.modelled:
        if index in roles.bounds:
            continue
        column, name = values[:, index], roles.names[index]
        low, high = float(column.min()), float(column.max())
        if index in roles.discrete:
            if low >= 0:
                kinds["counts"].append(name)
        elif 0 <= low and high <= 1:
            kinds["unit"].append(name)
        elif low > 0:
            kinds["positive"].append(name)
    wording = {
        "unit": ("in [0, 1]", "=0:1", "would keep density and samples there"),
        "positive": ("strictly positive", "=0:", "would keep density and samples above 0"),
        "counts": ("counts (whole numbers >= 0)", "=0:", "would keep samples non-negative"),
    }
    lines = []
    for kind, names in kinds.items():
        if names:
            what, bound, effect = wording[kind]
            shown = ", ".join(map(repr, names[:4])) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            lines.append(f"column(s) {shown} {'are' if len(names) > 1 else 'is'} {what}: "
                         f"`--bounds {names[0]}{bound}` (and so on) {effect}")
    return lines
