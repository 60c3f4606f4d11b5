"""The tabular reader: formats it accepts, and a one-line error for each kind of bad file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from flowkit.data.tabular import DataError, Standardizer, discrete_columns, read_table


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



@pytest.mark.parametrize("name, content", [
    ("utf16.csv", "a,b\n1,2\n3,4.5\n".encode("utf-16")),  # Excel's "Unicode text", with its byte-order mark
    ("comments.csv", b"# written by numpy.savetxt\na,b\n1,2\n# a note\n3,4.5\n"),
    ("trailing.csv", b"a,b,\n1,2,\n3,4.5,\n"),  # a delimiter ending every line is not an extra column
    ("excel.csv", b"a,b\n1,2\n3,4.5\n,\n,\n"),  # rows of empty cells are blank lines
    ("semicolon.txt", b"a;b\n1;2\n3;4.5\n"),
    ("quoted.csv", b'"a","b"\n"1","2"\n"3","4.5"\n'),
    ("table.npy.csv", None),  # a .npy under another name is recognised by its content
])
def test_reads_more_formats(tmp_path: Path, name: str, content: bytes | None) -> None:
    path = tmp_path / name
    if content is None:
        with open(path, "wb") as handle:
            np.save(handle, np.array([[1, 2], [3, 4.5]]))
    else:
        path.write_bytes(content)
    table = read_table(path)
    np.testing.assert_array_equal(table.values, [[1, 2], [3, 4.5]])
    assert table.columns in (["a", "b"], ["x0", "x1"])


@pytest.mark.parametrize("text, message", [
    # A first row mixing numbers and text is data with a bad cell; taken for a header it would
    # silently drop a row and name columns "1" and "NA".
    ("1,NA\n3,4\n5,6\n", r"line 1, column 'x1': non-numeric value 'NA' \(a header row needs"),
    ("1,\n3,4\n", r"line 1, column 'x1': missing value"),
    ("a,,c\n1,2,3\n", r"the header has no name for column 2"),
    ("a,b\n1_000,2\n", r"non-numeric value '1_000'"),  # Python's float() would take it
    ("a,b\n\u0661\u0662,2\n", r"non-numeric value"),  # Arabic-Indic digits, also taken by float()
    ("a;b\n1,5;2,5\n", r"'1,5' \(decimal commas are not read"),
    ("a,b\n1,2\n3,-Infinity\n", r"line 3, column 'b': non-finite value '-Infinity'"),
])
def test_more_bad_text_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as error:
        read_table(write(tmp_path, "bad.csv", text))
    assert "\n" not in str(error.value)


def test_bad_binary_inputs_get_a_reason(tmp_path: Path) -> None:
    def refused(name: str, content: bytes | None = None, array: np.ndarray | None = None) -> str:
        path = tmp_path / name
        if array is not None:
            with open(path, "wb") as handle:
                np.save(handle, array)
        else:
            path.write_bytes(content)
        with pytest.raises(DataError) as error:
            read_table(path)
        return str(error.value)

    np.savez(tmp_path / "arrays.npz", a=np.ones((3, 2)))
    assert "zip archive (.npz?)" in refused("arrays.npz", (tmp_path / "arrays.npz").read_bytes())
    assert "zip archive (.npz?)" in refused("renamed.npy", (tmp_path / "arrays.npz").read_bytes())
    assert "not a .npy file" in refused("text.npy", b"1,2\n3,4\n")
    assert "binary file" in refused("bin.csv", b"1,2\n\x00\x01\x02")
    assert "not UTF-8 text (byte 0xe9 at offset 4)" in refused("latin1.csv", "temp\xe9,b\n1,2\n".encode("latin-1"))
    assert "of complex128" in refused("complex.npy", array=np.ones((3, 2), dtype=complex))
    assert "got shape (3, 0)" in refused("no_columns.npy", array=np.ones((3, 0)))
    # A header that promises 80 TB must be refused without trying to allocate it.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**9, 10**4)})
    assert "truncated" in refused("bomb.npy", header.getvalue() + bytes(64))


def test_bool_and_integer_arrays_are_numbers(tmp_path: Path) -> None:
    np.save(tmp_path / "b.npy", np.array([[True, False], [False, False]]))
    np.testing.assert_array_equal(read_table(tmp_path / "b.npy").values, [[1, 0], [0, 0]])


def test_align_matches_columns_by_name(tmp_path: Path) -> None:
    standardizer = Standardizer(np.zeros(2), np.ones(2), ["a", "b"])
    reordered = read_table(write(tmp_path, "r.csv", "b,a\n2,1\n4,3\n"))
    np.testing.assert_array_equal(standardizer.align(reordered), [[1, 2], [3, 4]])
    headerless = read_table(write(tmp_path, "h.csv", "2,1\n4,3\n"))
    np.testing.assert_array_equal(standardizer.align(headerless), [[2, 1], [4, 3]])
    unnamed_model = Standardizer(np.zeros(2), np.ones(2), ["x0", "x1"])  # fitted on a file without header
    np.testing.assert_array_equal(unnamed_model.align(reordered), [[2, 1], [4, 3]])
    with pytest.raises(DataError, match="missing 'b'; unexpected 'c'"):
        standardizer.align(read_table(write(tmp_path, "c.csv", "a,c\n1,2\n")))
    with pytest.raises(DataError, match="expects 2 columns, the data has 3"):
        standardizer.align(read_table(write(tmp_path, "w.csv", "a,b,c\n1,2,3\n")))


def test_discrete_columns_are_whole_numbers_that_repeat(tmp_path: Path) -> None:
    rows = "\n".join(f"{i % 3},{i},{i * 0.5},{i % 2}" for i in range(10))
    table = read_table(write(tmp_path, "d.csv", "few,many,half,flag\n" + rows + "\n"))
    assert discrete_columns(table) == ["few", "flag"]


@pytest.mark.parametrize("layout", ["csv", "crlf_comment_header", "tsv", "whitespace", "no_header"])
def test_the_fast_reader_and_the_exact_one_agree(tmp_path: Path, layout: str) -> None:
    # Several thousand rows (past the 64 KiB the fast path sniffs) read by numpy's parser must
    # equal what the field-by-field reader makes of the same text.
    from flowkit.data.tabular import _parse_text, _read_text_fast

    values = np.random.default_rng(0).standard_normal((4000, 3)) * [1, 1e-3, 1e6]
    separator = {"tsv": "\t", "whitespace": "   "}.get(layout, ",")
    body = "\n".join(separator.join(repr(float(v)) for v in row) for row in values) + "\n"
    header = "" if layout == "no_header" else separator.join(["a", "b", "c"]) + "\n"
    text = ("# written by a logger\n" if layout == "crlf_comment_header" else "") + header + body
    if layout == "crlf_comment_header":
        text = text.replace("\n", "\r\n")
    path = write(tmp_path, "table.tsv" if layout == "tsv" else "table.csv", text)
    fast = _read_text_fast(path, tab=layout == "tsv")
    exact = _parse_text(path, text)
    assert fast is not None
    np.testing.assert_array_equal(fast.values, exact.values)
    np.testing.assert_array_equal(fast.values, values)
    assert fast.columns == exact.columns == (["x0", "x1", "x2"] if layout == "no_header" else ["a", "b", "c"])


def test_a_bad_cell_past_the_sniffed_head_is_still_named(tmp_path: Path) -> None:
    rows = [f"{i},{i / 7}" for i in range(20_000)]
    rows[15_000] = "15000,oops"
    path = write(tmp_path, "long.csv", "a,b\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"line 15002, column 'b': non-numeric value 'oops'"):
        read_table(path)
