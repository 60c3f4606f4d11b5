"""Table formats: Parquet, .npy and text in and out, standard input, streamed writing."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowkit.data.formats import format_of, write_table
from flowkit.data.tabular import DataError, read_table

VALUES = np.array([[1.0, 2.5], [3.0, -4.25], [5.0, 6.0]])


@pytest.mark.parametrize("name", ["t.csv", "t.tsv", "t.parquet", "t.npy"])
def test_every_format_round_trips_in_chunks(tmp_path: Path, name: str) -> None:
    kind = format_of(name)
    path = tmp_path / name
    binary = kind in ("parquet", "npy")
    with open(path, "wb" if binary else "w", **({} if binary else {"newline": ""})) as handle:
        write_table(handle, ["a", "b"], [VALUES[:2], VALUES[2:]], 3, kind)
    table = read_table(path)
    np.testing.assert_array_equal(table.values, VALUES)
    assert table.columns == (["x0", "x1"] if kind == "npy" else ["a", "b"])
    if kind == "parquet":
        assert pq.ParquetFile(path).num_row_groups == 2, "one row group per chunk: streamed"


def test_parquet_columns_of_every_numeric_type_and_refusals(tmp_path: Path) -> None:
    good = pa.table({"i": pa.array([1, 2, 3], pa.int8()), "f": pa.array([0.5, 1.5, 2.5], pa.float32()),
                     "b": pa.array([True, False, True])})
    pq.write_table(good, tmp_path / "good.parquet")
    np.testing.assert_array_equal(read_table(tmp_path / "good.parquet").values, [[1, 0.5, 1], [2, 1.5, 0], [3, 2.5, 1]])
    pq.write_table(pa.table({"x": [1.0, 2.0], "name": ["a", "b"], "when": pa.array([1, 2], pa.timestamp("s"))}),
                   tmp_path / "text.parquet")
    with pytest.raises(DataError, match=r"non-numeric column\(s\) 'name' \(string\), 'when' \(timestamp"):
        read_table(tmp_path / "text.parquet")
    pq.write_table(pa.table({"x": [1.0, None, 2.0]}), tmp_path / "null.parquet")
    with pytest.raises(DataError, match="row 1, column 'x': missing value"):
        read_table(tmp_path / "null.parquet")
    pq.write_table(pa.table({"x": [1.0, float("nan")]}), tmp_path / "nan.parquet")
    with pytest.raises(DataError, match="row 1, column 'x': non-finite"):
        read_table(tmp_path / "nan.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 and then nothing")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_table(tmp_path / "broken.parquet")


@pytest.mark.parametrize("kind", ["csv", "tsv", "npy", "parquet"])
def test_standard_input_in_each_format(monkeypatch, kind: str) -> None:
    buffer = io.BytesIO()
    if kind in ("csv", "tsv"):
        text = io.StringIO()
        write_table(text, ["a", "b"], [VALUES], 3, kind)
        buffer.write(text.getvalue().encode())
    else:
        write_table(buffer, ["a", "b"], [VALUES], 3, kind)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(buffer.getvalue())))
    np.testing.assert_array_equal(read_table("-", kind).values, VALUES)


def test_empty_standard_input_is_one_line(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    with pytest.raises(DataError, match="stdin: no input"):
        read_table("-")
