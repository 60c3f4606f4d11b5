"""Loading tabular data (CSV, TSV, whitespace-separated text, Parquet, .npy, standard input) with
strict validation, and the standardisation a density model is fitted under.

Every problem with a file raises ``DataError`` with one line that says what is wrong and where
(row and column), so the command line can print it and exit without a traceback.
"""

from __future__ import annotations

import codecs
import csv
import math
import re
import sys
import warnings
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


NUMPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
DELIMITERS = (",", "\t", ";")
NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+")


def _parse_float(text: str) -> float | None:
    """The number in a field, or None. Python's float() also takes '1_000' and non-ASCII digits
    ('١٢'), which no data file means as numbers; those are refused."""
    if not text.isascii() or "_" in text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _sniff_delimiter(lines: list[str], suffix: str) -> str | None:
    """The field delimiter; None means runs of whitespace.

    The first delimiter that splits the opening lines into the same number (> 1) of fields wins,
    so semicolon files with decimal commas ('1,5;2,5') are read as semicolon files.
    """
    if suffix == ".tsv":
        return "\t"
    sample = lines[:50]
    for delimiter in DELIMITERS:
        counts = {len(row) for row in csv.reader(sample, delimiter=delimiter)}
        if len(counts) == 1 and counts.pop() > 1:
            return delimiter
    first = sample[0] if sample else ""
    return next((delimiter for delimiter in DELIMITERS if delimiter in first), None)


def read_table(path: str | Path, format: str | None = None) -> Table:
    """Read a numeric table from CSV/TSV/text (optional header row), Parquet or a 2-D ``.npy`` array;
    ``-`` reads standard input (as ``format``: csv, tsv, parquet or npy; CSV by default).

    Text may be UTF-8 (with or without a byte-order mark) or UTF-16 with a byte-order mark; lines
    starting with ``#`` are comments. The first row is a header when none of its fields is a
    number. ``.npy`` and Parquet files are recognised by their content, whatever their name; a
    ``.npy`` file is never unpickled.

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
    from flowkit.data import formats

    if format is not None and format not in formats.FORMATS:
        raise DataError(f"unknown format {format!r}; choose from {', '.join(formats.FORMATS)}")
    if str(path) == "-":
        raw = sys.stdin.buffer.read()
        if not raw.strip():
            raise DataError("stdin: no input (an empty pipe?)")
        if format == "parquet" or raw.startswith(formats.PARQUET_MAGIC):
            import io

            return formats.read_parquet(io.BytesIO(raw), "stdin")
        if format == "npy" or raw.startswith(NUMPY_MAGIC):
            return formats.read_npy_bytes(raw, "stdin")
        return _parse_text(Path("stdin"), _decode(Path("stdin"), raw), tab=format == "tsv")
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with open(path, "rb") as handle:
            start = handle.read(len(NUMPY_MAGIC))
        if start.startswith(formats.PARQUET_MAGIC) or (format == "parquet" and start):
            return formats.read_parquet(path, str(path))
        if start.startswith(NUMPY_MAGIC):  # read by numpy straight into the array, never as bytes first
            return _read_npy(path)
        if path.suffix.lower() != ".npy" and format != "npy" and not start.startswith(ZIP_MAGIC):
            fast = _read_text_fast(path, tab=format == "tsv")
            if fast is not None:
                return fast
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error.__class__.__name__})") from None
    if raw.startswith(ZIP_MAGIC):
        raise DataError(f"{path}: a zip archive (.npz?), not a table; save the one array with numpy.save as .npy")
    if path.suffix.lower() == ".npy":
        raise DataError(f"{path}: not a .npy file (it does not start with NumPy's header)")
    return _parse_text(path, _decode(path, raw), tab=format == "tsv")


def _read_text_fast(path: Path, tab: bool = False) -> Table | None:
    """A plain numeric text table read by numpy's C parser, straight from the file: a million
    rows in seconds and in little more than the array's memory, where the exact reader below
    holds every field as a Python string. None when anything is unusual (quotes, comments after
    the header, a bad or missing cell, UTF-16, a non-finite value): the exact reader then reads
    the file and names the problem, so both accept and refuse the same files."""
    with open(path, "rb") as handle:
        head = handle.read(65_536)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in head or b'"' in head:
        return None
    lines = head.decode("utf-8-sig", errors="ignore").splitlines()
    lines = lines[:-1] if len(head) == 65_536 else lines  # the last line read may be cut short
    kept = [(number, line) for number, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not kept:
        return None
    delimiter = _sniff_delimiter([line for _, line in kept], ".tsv" if tab else path.suffix.lower())
    number, first = kept[0]
    fields = [field.strip() for field in (first.split() if delimiter is None else first.split(delimiter))]
    parsed = [_parse_float(field) for field in fields]
    if all(value is None for value in parsed):
        columns, skip = fields, number
        if "" in columns or len(set(columns)) != len(columns):
            return None
    elif all(value is not None for value in parsed):
        columns, skip = [f"x{i}" for i in range(len(fields))], number - 1
    else:
        return None
    # Into one array sized from the line count, a block of rows at a time: numpy's reader alone
    # grows its result as it goes, peaking near twice the table.
    # (Lines ended by '\r' alone are not counted: such a file overflows the array and goes to the
    # exact reader.)
    values = np.empty((max(_count_lines(path) - skip + 1, 1), len(columns)))
    filled = 0
    try:
        with open(path, encoding="utf-8-sig") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": the end of the file
            for _ in range(skip):
                handle.readline()
            while True:
                block = np.loadtxt(handle, delimiter=delimiter, comments=None, ndmin=2, dtype=np.float64,
                                   max_rows=CHUNK_ROWS)
                if block.shape[0] == 0:
                    break
                if block.shape[1] != len(columns) or filled + len(block) > len(values) \
                        or not np.isfinite(block).all():
                    return None
                values[filled:filled + len(block)] = block
                filled += len(block)
    except (ValueError, UnicodeDecodeError):
        return None
    if filled == 0:
        return None
    return Table(values[:filled] if filled < len(values) else values, columns)


def _count_lines(path: Path) -> int:
    """Newline characters in a file, read in blocks of 16 MiB."""
    count = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            count += block.count(b"\n")
    return count


def _decode(path: Path, raw: bytes) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # e.g. Excel's "Unicode text"
        encoding = "UTF-16"
    elif b"\x00" in raw[:65536]:  # text tables never hold NUL bytes; binary files nearly always do
        raise DataError(f"{path}: a binary file, not a text table")
    else:
        encoding = "UTF-8"
    try:
        return raw.decode("utf-16" if encoding == "UTF-16" else "utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not {encoding} text (byte {raw[error.start]:#04x} at offset {error.start}); "
                        "save it as UTF-8") from None


def _parse_text(path: Path, text: str, tab: bool = False) -> Table:
    kept = [(number, line) for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]
    delimiter = _sniff_delimiter([line for _, line in kept], ".tsv" if tab else path.suffix.lower())
    if delimiter is None:
        split = [line.split() for _, line in kept]
    else:
        split = [[field.strip() for field in row]
                 for row in csv.reader((line for _, line in kept), delimiter=delimiter)]
    numbered = [(number, row) for (number, _), row in zip(kept, split) if any(row)]  # ",,," is a blank line
    if not numbered:
        raise DataError(f"{path}: the file is empty")
    if all(len(row) > 1 and row[-1] == "" for _, row in numbered):  # a delimiter ending every line
        numbered = [(number, row[:-1]) for number, row in numbered]
    header_line, first = numbered[0]
    if all(_parse_float(field) is None for field in first):
        columns, body = first, numbered[1:]
        if "" in columns:
            raise DataError(f"{path}: line {header_line}: the header has no name for column "
                            f"{columns.index('') + 1}")
        if len(set(columns)) != len(columns):
            raise DataError(f"{path}: duplicate column names in the header")
    else:
        # A first row mixing numbers and text is data with a bad cell, not a header: taking it
        # for one would silently drop a row and name columns after numbers.
        columns, body = [f"x{i}" for i in range(len(first))], numbered
    if not body:
        raise DataError(f"{path}: no data rows (only a header)")
    width = len(columns)
    values = np.empty((len(body), width))
    for out_row, (line, row) in enumerate(body):
        if len(row) != width:
            raise DataError(f"{path}: line {line} has {len(row)} fields, expected {width}")
        for column, field in enumerate(row):
            number = _parse_float(field)
            if number is None or not math.isfinite(number):
                raise DataError(f"{path}: line {line}, column {columns[column]!r}: {_describe(field, number)}"
                                + (" (a header row needs a non-numeric name for every column)"
                                   if line == header_line and number is None and field else ""))
            values[out_row, column] = number
    return Table(values, list(columns))


def _describe(field: str, number: float | None) -> str:
    if not field:
        return "missing value"
    if number is not None or field.lower() in NON_FINITE:
        return f"non-finite value {field!r}"
    if DECIMAL_COMMA.fullmatch(field):
        return f"non-numeric value {field!r} (decimal commas are not read; use '.' as the decimal mark)"
    return f"non-numeric value {field!r}"


def _read_npy(path: Path) -> Table:
    try:
        # Memory-mapped, so a header promising more data than the file holds fails at once
        # instead of allocating it; object arrays (pickles) are refused, never loaded.
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        reason = str(error).splitlines()[0]
        if "mmap length" in reason:
            reason = "truncated: the file holds less data than its header declares"
        raise DataError(f"{path}: not a readable .npy array ({reason})") from None
    # b: bool, i/u: integers, f: floats; complex, text, dates and records have no place in a density.
    if mapped.ndim != 2 or 0 in mapped.shape or mapped.dtype.kind not in "biuf":
        raise DataError(f"{path}: expected a non-empty 2-D numeric array, got shape {mapped.shape} "
                        f"of {mapped.dtype}")
    del mapped
    array = np.load(path, allow_pickle=False)  # one read into memory (copying the map would hold two)
    if array.dtype != np.float64:
        array = array.astype(np.float64)
    for start in range(0, len(array), CHUNK_ROWS):
        bad = np.argwhere(~np.isfinite(array[start:start + CHUNK_ROWS]))
        if len(bad):
            row, column = bad[0]
            raise DataError(f"{path}: row {start + row}, column {column}: non-finite value "
                            f"{array[start + row, column]}")
    return Table(array, [f"x{i}" for i in range(array.shape[1])])


CHUNK_ROWS = 65_536  # rows per block where a whole-table temporary would double the memory


def column_moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (maximum-likelihood) standard deviation in float64, two passes over
    blocks of rows: the same figures as ``values.mean(0), values.std(0)`` without their
    table-sized temporaries."""
    rows = values.shape[0]
    blocks = range(0, rows, CHUNK_ROWS)
    mean = sum(values[i:i + CHUNK_ROWS].sum(0, dtype=np.float64) for i in blocks) / rows
    squares = sum(np.square(values[i:i + CHUNK_ROWS] - mean).sum(0) for i in blocks)
    return mean, np.sqrt(squares / rows)


@dataclass
class Standardizer:
    """Per-column ``(x - mean) / std``; the density of ``x`` is the density of the standardised
    values plus ``log_det = -sum(log std)``.

    ``context`` is the standardisation of a conditional model's context columns (None for an
    unconditional model): the conditioners see standardised context values.
    """

    mean: np.ndarray
    std: np.ndarray
    columns: list[str]
    context: Standardizer | None = None

    @classmethod
    def fit(cls, table: Table, unscaled: list[int] | tuple[int, ...] = ()) -> Standardizer:
        """Fit to a table; a column with no spread is refused (its density is not defined).
        Columns in ``unscaled`` (those with integer cells or bounds, which preprocessing layers
        handle in the data's own units) keep mean 0 and std 1."""
        if table.values.shape[0] < 2:
            raise DataError(f"need at least 2 rows to fit, got {table.values.shape[0]}")
        with np.errstate(over="ignore", invalid="ignore"):
            mean, std = column_moments(table.values)
        overflowing = [name for name, m, s in zip(table.columns, mean, std) if not (np.isfinite(m) and np.isfinite(s))]
        if overflowing:
            raise DataError(f"column(s) {', '.join(map(repr, overflowing))}: values too large to standardise "
                            "(their spread overflows float64; rescale them first)")
        constant = [name for name, s in zip(table.columns, std) if not s > 0]
        if constant:
            raise DataError(f"constant column(s) {', '.join(map(repr, constant))}: a density needs spread "
                            "(drop them first, or leave them out with --exclude)")
        unscaled = list(unscaled)
        mean[unscaled], std[unscaled] = 0.0, 1.0
        return cls(mean, std, list(table.columns))

    @property
    def log_det(self) -> float:
        return float(-np.log(self.std).sum())

    def transform(self, values: np.ndarray, dtype: np.dtype | type = np.float64) -> np.ndarray:
        """The standardised values, as ``dtype``; computed in float64 a block of rows at a time,
        so a float32 result of a large table never needs a float64 copy of it."""
        out = np.empty(values.shape, dtype=dtype)
        for start in range(0, max(len(values), 1), CHUNK_ROWS):
            out[start:start + CHUNK_ROWS] = (values[start:start + CHUNK_ROWS] - self.mean) / self.std
        return out

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return values * self.std + self.mean

    def align(self, table: Table) -> np.ndarray:
        """The table's values with its columns in the model's order.

        Columns are matched by name when both sides have real names (so a reordered table still
        scores correctly); a table or model without a header row only has to have as many columns.
        """
        if table.values.shape[1] != len(self.columns):
            raise DataError(f"the model expects {len(self.columns)} columns, the data has "
                            f"{table.values.shape[1]}")
        if _generated(table.columns) or _generated(self.columns) or table.columns == self.columns:
            return table.values
        missing = [name for name in self.columns if name not in table.columns]
        unexpected = [name for name in table.columns if name not in self.columns]
        if missing or unexpected:
            differences = [f"{what} {', '.join(map(repr, names))}"
                           for what, names in (("missing", missing), ("unexpected", unexpected)) if names]
            raise DataError(f"column names differ from the model's: {'; '.join(differences)}")
        return table.values[:, [table.columns.index(name) for name in self.columns]]


def _generated(columns: list[str]) -> bool:
    """Whether these are the names given to a table without a header row."""
    return all(name == f"x{i}" for i, name in enumerate(columns))


def discrete_columns(table: Table) -> list[str]:
    """Columns of whole numbers whose values repeat (at most half as many distinct values as rows).

    A continuous density fitted to them can pile its mass into spikes on those values, so its
    likelihood keeps rising without describing the data better; callers warn about them.
    """
    values = table.values

    def whole(column: np.ndarray) -> bool:  # a block of one column at a time: no table-sized temporaries
        blocks = (column[i:i + CHUNK_ROWS] for i in range(0, len(column), CHUNK_ROWS))
        return all(np.array_equal(block, np.round(block)) for block in blocks)

    return [name for index, name in enumerate(table.columns)
            if whole(values[:, index]) and len(np.unique(values[:, index])) <= len(values) // 2]
