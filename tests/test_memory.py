"""The memory-saving paths of a fit on a large table give exactly what the plain paths give:
standardising a table inside its own buffer, gathering the training rows in place, reading a
text table a block of rows at a time, and handing pages back to the system."""

import sys

import numpy as np
import pytest
import torch

from flowkit.data.tabular import Standardizer, Table, read_table
from flowkit.memory import gather_in_place, release_pages, standardize_in_place
from flowkit.train.tabular import fit_tabular


def anonymous_rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon"))


@pytest.mark.parametrize("rows, block", [(1, 4), (7, 2), (1000, 64), (1000, 1000), (1003, 7)])
def test_standardize_in_place_matches_the_float32_transform(rows, block):
    rng = np.random.default_rng(rows)
    values = rng.standard_normal((rows, 5)) * [1, 10, 1e-3, 5, 2] + [0, 1e4, -3, 7e6, 0.5]
    standardizer = Standardizer.fit(Table(values, list("abcde"))) if rows > 1 else \
        Standardizer(np.zeros(5), np.ones(5), list("abcde"))
    expected = standardizer.transform(values, np.float32)
    out = standardize_in_place(values, standardizer.mean, standardizer.std, block_rows=block)
    assert out.dtype == np.float32 and out.shape == (rows, 5) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def test_standardize_in_place_refuses_what_it_cannot_overwrite():
    values = np.zeros((10, 4))
    with pytest.raises(ValueError, match="C-contiguous"):
        standardize_in_place(values[:, :2], np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="float64"):
        standardize_in_place(values.astype(np.float32), np.zeros(4), np.ones(4))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise page release is Linux only")
def test_release_pages_hands_memory_back():
    array = np.ones((4096, 4096))  # 128 MiB, every page written
    before = anonymous_rss_kib()
    released = release_pages(array, array.nbytes // 2)
    after = anonymous_rss_kib()
    assert released >= array.nbytes // 2 - 8192
    assert before - after > 0.9 * released / 1024
    np.testing.assert_array_equal(array[:2048], 1.0)  # the first half is untouched


@pytest.mark.parametrize("block", [1, 3, 64, 10_000])
def test_gather_in_place_matches_indexing(block):
    generator = torch.Generator().manual_seed(block)
    x = torch.randn(500, 3, generator=generator)
    rows = np.sort(torch.randperm(500, generator=generator)[:410].numpy())
    expected = x[rows].clone()
    gathered = gather_in_place(x, rows, block=block)
    assert gathered.data_ptr() == x.data_ptr()
    torch.testing.assert_close(gathered, expected, rtol=0, atol=0)


def test_consuming_fit_matches_a_copying_fit_and_only_it_overwrites():
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((600, 3)) @ [[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1]]).astype(np.float32)
    kept = data.copy()
    overrides = {"epochs": 2, "transforms": 1, "hidden_features": 8}
    plain = fit_tabular(data, overrides=overrides, progress=False)
    np.testing.assert_array_equal(data, kept)  # without consume the caller's array is left alone
    consumed = fit_tabular(data, overrides=overrides, progress=False, consume=True)
    assert consumed.validation_nll == plain.validation_nll
    assert consumed.train_nll == plain.train_nll
    assert not np.array_equal(data, kept)  # the training rows were gathered into it


def test_text_tables_read_in_blocks_match_numpy(tmp_path):
    from flowkit.data.tabular import CHUNK_ROWS

    rows = CHUNK_ROWS * 2 + 123  # three blocks, the last one short
    values = np.random.default_rng(1).standard_normal((rows, 3)).round(6)
    path = tmp_path / "t.csv"
    lines = ["a,b,c"] + [",".join(f"{v:.6f}" for v in row) for row in values]
    lines[5:5] = ["", "   "]  # blank lines inside the data are skipped
    path.write_text("\n".join(lines) + "\n")
    table = read_table(path)
    assert table.columns == ["a", "b", "c"]
    np.testing.assert_array_equal(table.values, values)
    assert table.values.flags.c_contiguous


def test_a_bad_cell_in_a_later_block_is_named(tmp_path):
    from flowkit.data.tabular import CHUNK_ROWS, DataError

    path = tmp_path / "t.csv"
    lines = ["x,y"] + ["1.5,2.5"] * (CHUNK_ROWS + 10)
    lines[CHUNK_ROWS + 5] = "1.5,oops"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=f"line {CHUNK_ROWS + 6}, column 'y': non-numeric value 'oops'"):
        read_table(path)


def test_training_arrays_standardise_a_large_table_in_place():
    from flowkit_cli.prepare import prepare

    values = np.random.default_rng(2).standard_normal((500, 3)) * [1, 100, 0.01] + [5, -2e4, 0]
    original = values.copy()
    prepared = prepare(Table(values, ["a", "b", "c"]))
    expected = prepared.x
    x, c, picture = prepared.training_arrays(50, seed=0)
    np.testing.assert_array_equal(x, expected)
    assert c is None and prepared.values is None  # consumed
    assert len(picture.values) == 50
    assert all((original == row).all(1).any() for row in picture.values)  # rows of the data, in its units
    small = prepare(Table(original.copy(), ["a", "b", "c"]))
    x, _, picture = small.training_arrays(1000, seed=0)  # the picture is the table itself: nothing consumed
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(picture.values, original)
