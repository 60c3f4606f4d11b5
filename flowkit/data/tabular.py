"""Loading tabular data (CSV, TSV, whitespace-separated text, .npy) with strict validation, and the
standardisation a density model is fitted under.

Every problem with a file raises ``DataError`` with one line that says what is wrong and where
(row and column), so the command line can print it and exit without a traceback.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A data file that cannot be used, with a one-line reason."""


@dataclass
class Table:
    """A numeric table: ``values`` of shape ``(rows, columns)`` and a name for each column."""

    values: np.ndarray
    columns: list[str]


def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _sniff_delimiter(sample: str, suffix: str) -> str | None:
    """The field delimiter; None means runs of whitespace."""
    if suffix == ".tsv":
        return "\t"
    first = next((line for line in sample.splitlines() if line.strip()), "")
    for delimiter in (",", "\t", ";"):
        if delimiter in first:
            return delimiter
    return None


def read_table(path: str | Path) -> Table:
    """Read a numeric table from CSV/TSV/text (optional header row) or a 2-D ``.npy`` array.

    Raises:
        DataError: missing or unreadable file, no data rows, ragged rows, a non-numeric,
            missing, NaN or infinite value (with its row and column).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
        >>> _ = open(path, "w").write("a,b\\n1,2\\n3,4\\n")
        >>> read_table(path).columns
        ['a', 'b']
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".npy":
        return _read_npy(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as error:
        raise DataError(f"{path}: cannot read as text ({error.__class__.__name__})") from None
    delimiter = _sniff_delimiter(text[:65536], path.suffix.lower())
    if delimiter is None:
        rows = [line.split() for line in text.splitlines()]
    else:
        rows = [[field.strip() for field in row] for row in csv.reader(text.splitlines(), delimiter=delimiter)]
    numbered = [(index + 1, row) for index, row in enumerate(rows) if any(field for field in row)]
    if not numbered:
        raise DataError(f"{path}: the file is empty")
    header_line, first = numbered[0]
    if any(_parse_float(field) is None for field in first):
        columns, body = first, numbered[1:]
        if len(set(columns)) != len(columns):
            raise DataError(f"{path}: duplicate column names in the header")
    else:
        columns, body = [f"x{i}" for i in range(len(first))], numbered
    if not body:
        raise DataError(f"{path}: no data rows (only a header)")
    width = len(columns)
    values = np.empty((len(body), width))
    for out_row, (line, row) in enumerate(body):
        if len(row) != width:
            raise DataError(f"{path}: line {line} has {len(row)} fields, expected {width}")
        for column, field in enumerate(row):
            number = _parse_float(field) if field else None
            if number is None or not math.isfinite(number):
                what = "missing value" if not field else f"non-numeric value {field!r}" if number is None \
                    else f"non-finite value {field!r}"
                raise DataError(f"{path}: line {line}, column {columns[column]!r}: {what}")
            values[out_row, column] = number
    return Table(values, list(columns))


def _read_npy(path: Path) -> Table:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable .npy array ({str(error).splitlines()[0]})") from None
    if array.ndim != 2 or array.shape[0] == 0 or not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{path}: expected a non-empty 2-D numeric array, got shape {array.shape} "
                        f"of {array.dtype}")
    array = array.astype(np.float64)
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        row, column = bad[0]
        raise DataError(f"{path}: row {row}, column {column}: non-finite value {array[row, column]}")
    return Table(array, [f"x{i}" for i in range(array.shape[1])])


@dataclass
class Standardizer:
    """Per-column ``(x - mean) / std``; the density of ``x`` is the density of the standardised
    values plus ``log_det = -sum(log std)``."""

    mean: np.ndarray
    std: np.ndarray
    columns: list[str]

    @classmethod
    def fit(cls, table: Table) -> Standardizer:
        """Fit to a table; a column with no spread is refused (its density is not defined)."""
        if table.values.shape[0] < 2:
            raise DataError(f"need at least 2 rows to fit, got {table.values.shape[0]}")
        with np.errstate(over="ignore", invalid="ignore"):
            mean, std = table.values.mean(axis=0), table.values.std(axis=0)
        overflowing = [name for name, m, s in zip(table.columns, mean, std) if not (np.isfinite(m) and np.isfinite(s))]
        if overflowing:
            raise DataError(f"column(s) {', '.join(map(repr, overflowing))}: values too large to standardise "
                            "(their spread overflows float64; rescale them first)")
        constant = [name for name, s in zip(table.columns, std) if not s > 0]
        if constant:
            raise DataError(f"constant column(s) {', '.join(map(repr, constant))}: a density needs spread "
                            "(drop them first)")
        return cls(mean, std, list(table.columns))

    @property
    def log_det(self) -> float:
        return float(-np.log(self.std).sum())

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.std

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return values * self.std + self.mean

    def check_columns(self, table: Table) -> None:
        """Refuse a table whose columns differ from the ones the model was fitted on."""
        if table.values.shape[1] != len(self.columns):
            raise DataError(f"the model expects {len(self.columns)} columns, the data has "
                            f"{table.values.shape[1]}")
        generated = all(name == f"x{i}" for i, name in enumerate(table.columns))
        if not generated and table.columns != self.columns:
            raise DataError(f"column names differ from the model's: expected {self.columns}, "
                            f"got {table.columns}")

