"""The tabular reader: formats it accepts, and a one-line error for each kind of bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flowkit.data.tabular import DataError, Standardizer, read_table


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, text", [
    ("a.csv", "a,b\n1,2\n3,4.5\n"),
    ("a.tsv", "a\tb\n1\t2\n3\t4.5\n"),
    ("a.txt", "1 2\n3   4.5\n"),
    ("a.csv", "a;b\r\n1;2\r\n3;4.5\r\n\r\n"),
    ("a.csv", "\ufeffa,b\n1,2\n3,4.5\n"),
])
def test_reads_common_formats(tmp_path: Path, name: str, text: str) -> None:
    table = read_table(write(tmp_path, name, text))
    np.testing.assert_array_equal(table.values, [[1, 2], [3, 4.5]])
    assert table.columns in (["a", "b"], ["x0", "x1"])


def test_reads_npy(tmp_path: Path) -> None:
    array = np.arange(6.0).reshape(3, 2)
    np.save(tmp_path / "a.npy", array)
    np.testing.assert_array_equal(read_table(tmp_path / "a.npy").values, array)


@pytest.mark.parametrize("text, message", [
    ("a,b\n1,2\n3,oops\n", r"line 3, column 'b': non-numeric value 'oops'"),
    ("a,b\n1,nan\n", r"line 2, column 'b': non-finite value 'nan'"),
    ("a,b\n1,2\ninf,3\n", r"line 3, column 'a': non-finite value 'inf'"),
    ("a,b\n1,2\n3\n", r"line 3 has 1 fields, expected 2"),
    ("a,b\n1,\n", r"line 2, column 'b': missing value"),
    ("", r"the file is empty"),
    ("a,b\n", r"no data rows"),
    ("a,a\n1,2\n", r"duplicate column names"),
])
def test_bad_text_files_get_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as error:
        read_table(write(tmp_path, "bad.csv", text))
    assert "\n" not in str(error.value)


def test_bad_npy_and_binary_files(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.arange(3.0))
    with pytest.raises(DataError, match="expected a non-empty 2-D numeric array"):
        read_table(tmp_path / "one.npy")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="not a readable .npy array"):
        read_table(tmp_path / "junk.npy")
    (tmp_path / "bin.csv").write_bytes(bytes(range(256)))
    with pytest.raises(DataError):
        read_table(tmp_path / "bin.csv")
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="is a directory"):
        read_table(tmp_path)


def test_standardizer_round_trip_and_constant_column(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, "a.csv", "a,b\n1,10\n2,30\n3,20\n"))
    standardizer = Standardizer.fit(table)
    scaled = standardizer.transform(table.values)
    np.testing.assert_allclose(scaled.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(scaled.std(0), 1)
    np.testing.assert_allclose(standardizer.inverse(scaled), table.values)
    assert standardizer.log_det == pytest.approx(-np.log(table.values.std(0)).sum())
    with pytest.raises(DataError, match="column\\(s\\) 'a': values too large to standardise"):
        Standardizer.fit(read_table(write(tmp_path, "h.csv", "a,b\n1e308,1\n-1e308,2\n")))
    with pytest.raises(DataError, match="constant column\\(s\\) 'b'"):
        Standardizer.fit(read_table(write(tmp_path, "c.csv", "a,b\n1,5\n2,5\n")))

