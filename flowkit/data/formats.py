"""Table formats beyond text: Parquet (through pyarrow) and ``.npy`` in and out, standard input,
and the streaming writers behind ``flowkit sample`` and ``flowkit score``.

Readers raise ``DataError`` with one line (file, row, column); writers take an iterable of row
chunks so any number of rows passes through bounded memory, in every format: CSV and TSV write
each chunk as lines, Parquet as a row group, ``.npy`` as raw rows behind a header that states the
final row count up front.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import numpy as np

from flowkit.data.tabular import DataError, Table

FORMATS = ("csv", "tsv", "parquet", "npy")
PARQUET_MAGIC = b"PAR1"
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet", ".npy": "npy"}


def format_of(path: str | Path | None, given: str | None = None) -> str:
    """The format to write: ``given`` (``--format``), else from the file's suffix, else CSV
    (also for ``-`` and None, meaning standard output).

    Example:
        >>> format_of("out.parquet"), format_of("-"), format_of("x.npy", "csv")
        ('parquet', 'csv', 'csv')
    """
    if given is not None:
        if given not in FORMATS:
            raise DataError(f"unknown format {given!r}; choose from {', '.join(FORMATS)}")
        return given
    if path is None or str(path) == "-":
        return "csv"
    return SUFFIXES.get(Path(path).suffix.lower(), "csv")


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:  # pragma: no cover - pyarrow is a dependency; this guards a broken install
        raise DataError("Parquet needs pyarrow (pip install pyarrow)") from None
    return pyarrow, pyarrow.parquet


def read_parquet(source: str | Path | IO[bytes], label: str) -> Table:
    """A numeric table from a Parquet file (integer, floating and boolean columns).

    Raises:
        DataError: unreadable file, no rows, non-numeric columns (all named), a missing (null),
            NaN or infinite value (with its row and column).
    """
    pa, pq = _pyarrow()
    try:
        table = pq.read_table(source)
    except Exception as error:  # pyarrow raises several kinds for a damaged file
        reason = " ".join(str(error).split())[:160]
        raise DataError(f"{label}: not a readable Parquet file ({reason})") from None
    names = list(table.column_names)
    if not names:
        raise DataError(f"{label}: the file has no columns")
    if len(set(names)) != len(names):
        raise DataError(f"{label}: duplicate column names")
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
    bad = [f"{name!r} ({field.type})" for name, field in zip(names, table.schema)
           if not any(test(field.type) for test in numeric)]
    if bad:
        raise DataError(f"{label}: non-numeric column(s) {', '.join(bad)}; a density needs numbers "
                        "(drop them from the file first)")
    if table.num_rows == 0:
        raise DataError(f"{label}: no data rows")
    columns = []
    for name in names:
        column = table.column(name)
        if column.null_count:
            row = int(np.flatnonzero(np.asarray(column.is_null().to_numpy(zero_copy_only=False)))[0])
            raise DataError(f"{label}: row {row}, column {name!r}: missing value")
        columns.append(np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64))
    values = np.column_stack(columns)
    bad_cells = np.argwhere(~np.isfinite(values))
    if len(bad_cells):
        row, column = bad_cells[0]
        raise DataError(f"{label}: row {row}, column {names[column]!r}: non-finite value {values[row, column]}")
    return Table(values, names)


def read_npy_bytes(raw: bytes, label: str) -> Table:
    """A table from the bytes of a ``.npy`` file (standard input); never unpickles."""
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{label}: not a readable .npy array ({str(error).splitlines()[0]})") from None
    if array.ndim != 2 or 0 in array.shape or array.dtype.kind not in "biuf":
        raise DataError(f"{label}: expected a non-empty 2-D numeric array, got shape {array.shape} of {array.dtype}")
    array = np.asarray(array, dtype=np.float64)
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        row, column = bad[0]
        raise DataError(f"{label}: row {row}, column {column}: non-finite value {array[row, column]}")
    return Table(array, [f"x{i}" for i in range(array.shape[1])])


def write_table(handle: IO, columns: list[str], chunks: Iterable[np.ndarray], rows: int, format: str) -> None:
    """Stream a header and the rows of each chunk to ``handle`` in ``format``.

    ``handle`` is a text handle for CSV and TSV and a binary one for Parquet and ``.npy``
    (``binary_format`` says which); ``rows`` is the total row count (the ``.npy`` header holds it).

    Example:
        >>> import io, numpy as np
        >>> out = io.StringIO()
        >>> write_table(out, ["a", "b"], [np.array([[1.0, 2.5]])], 1, "tsv")
        >>> out.getvalue()
        'a\\tb\\n1\\t2.5\\n'
    """
    if format in ("csv", "tsv"):
        write_delimited(handle, columns, chunks, "," if format == "csv" else "\t")
    elif format == "npy":
        _write_npy(handle, columns, chunks, rows)
    elif format == "parquet":
        _write_parquet(handle, columns, chunks)
    else:
        raise DataError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")


def binary_format(format: str) -> bool:
    return format in ("parquet", "npy")


def write_delimited(handle: IO, columns: list[str], chunks: Iterable[np.ndarray], delimiter: str = ",") -> None:
    """A header row, then the rows of each array (9 significant digits: float32 round trips)."""
    csv.writer(handle, lineterminator="\n", delimiter=delimiter).writerow(columns)  # quotes names as needed
    for values in chunks:
        handle.write("".join(delimiter.join(f"{v:.9g}" for v in row) + "\n" for row in values))


def _write_npy(handle: IO[bytes], columns: list[str], chunks: Iterable[np.ndarray], rows: int) -> None:
    header = {"descr": "<f8", "fortran_order": False, "shape": (rows, len(columns))}
    np.lib.format.write_array_header_1_0(handle, header)
    written = 0
    for values in chunks:
        block = np.ascontiguousarray(values, dtype="<f8")
        handle.write(block.tobytes())
        written += len(block)
    if written != rows:  # the header promised a row count; a short array would be a corrupt file
        raise ValueError(f"wrote {written} rows to a .npy header of {rows}")


def _write_parquet(handle: IO[bytes], columns: list[str], chunks: Iterable[np.ndarray]) -> None:
    pa, pq = _pyarrow()
    schema = pa.schema([(name, pa.float64()) for name in columns])
    with pq.ParquetWriter(pa.PythonFile(handle, mode="w"), schema) as writer:
        for values in chunks:  # one row group per chunk: memory stays bounded
            arrays = [pa.array(np.ascontiguousarray(values[:, index], dtype=np.float64))
                      for index in range(len(columns))]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
