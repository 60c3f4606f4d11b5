"""The MAF tabular suite loaders on small files written here in the official formats, and against
the real MINIBOONE files in ../shared/datasets/miniboone/ where they exist."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from flowkit.data.suite_files import read_csv
from flowkit.data.tabular import DataError
from flowkit.data.uci_suite import load_suite, repeated_smallest_value_columns, tail_split


def _shared_miniboone() -> Path | None:
    for folder in Path(__file__).resolve().parents:
        candidate = folder / "shared" / "datasets" / "miniboone"
        if candidate.is_dir():
            return candidate
    return None


SHARED = _shared_miniboone()
HAS_PANDAS = importlib.util.find_spec("pandas") is not None
HAS_H5PY = importlib.util.find_spec("h5py") is not None


def place(root: Path, relative: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def one_line_error(call, *fragments: str) -> str:
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("rows, sizes", [
    (36_488, (29_556, 3_284, 3_648)),       # MINIBOONE data.npy
    (2_049_280, (1_659_917, 184_435, 204_928)),  # POWER data.npy
    (1_052_065, (852_174, 94_685, 105_206)),  # GAS after cleaning
])
def test_split_sizes_are_the_published_ones(rows: int, sizes: tuple[int, int, int]) -> None:
    rest, test = tail_split(np.empty((rows, 0)), "x")
    train, validation = tail_split(rest, "x")
    assert (len(train), len(validation), len(test)) == sizes


def test_repeated_value_rule_counts_only_the_smallest_value() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(40, 4))
    data[:6, 1] = data[:, 1].min() - 1.0     # smallest value 6 times: removed
    data[:20, 2] = 0.25                      # most frequent value is not the smallest: kept
    data[:5, 3] = data[:, 3].min() - 1.0     # smallest value exactly 5 times: kept (> 5 removes)
    assert repeated_smallest_value_columns(data) == [1]


# MINIBOONE -------------------------------------------------------------------------------------

def test_miniboone_splits_and_standardises_with_train_and_validation(tmp_path: Path) -> None:
    raw = np.random.default_rng(1).normal(3.0, 2.0, size=(200, 4)) * [1, 10, 100, 1000]
    np.save(place(tmp_path, "miniboone/data.npy"), raw)
    splits = load_suite("MINIBOONE", tmp_path, dtype=np.float64)
    assert (len(splits.train), len(splits.validation), len(splits.test), splits.features) == (162, 18, 20, 4)
    mean, std = raw[:180].mean(0), raw[:180].std(0)
    np.testing.assert_allclose(splits.test, (raw[-20:] - mean) / std, rtol=1e-12)
    np.testing.assert_allclose(splits.validation, (raw[162:180] - mean) / std, rtol=1e-12)
    pooled = np.vstack([splits.train, splits.validation])
    np.testing.assert_allclose(pooled.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(pooled.std(0), 1, rtol=1e-12)
    assert load_suite("miniboone", tmp_path).test.dtype == np.float32  # the reference's cast


@pytest.mark.skipif(SHARED is None, reason="../shared/datasets/miniboone/ is not beside the checkout")
def test_real_miniboone_files(tmp_path: Path) -> None:
    validation, test = np.load(SHARED / "val.npy"), np.load(SHARED / "test.npy")
    truncated = SHARED / "maf_data.npy.TRUNCATED_524288bytes.bin"
    # The header of the authors' data.npy declares its shape; the reference's split of that many
    # rows gives exactly the row counts of the standard validation and test splits.
    with open(truncated, "rb") as handle:
        major, _ = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(handle)
    assert shape == (36_488, 43)
    rest, tail = tail_split(np.empty((shape[0], 0)), "x")
    assert (len(tail_split(rest, "x")[1]), len(tail)) == (len(validation), len(test))
    assert validation.shape[1] == test.shape[1] == shape[1]
    # The truncated file itself is refused with one line naming it.
    place(tmp_path, "miniboone").mkdir()
    (tmp_path / "miniboone" / "data.npy").symlink_to(truncated)
    one_line_error(lambda: load_suite("miniboone", tmp_path), "data.npy", "truncated")
    # The raw head rows run through the loader like a data.npy (real values, 43 columns).
    head = np.load(SHARED / "maf_data_head_1523rows_raw.npy")
    (tmp_path / "miniboone" / "data.npy").unlink()
    np.save(tmp_path / "miniboone" / "data.npy", head)
    splits = load_suite("miniboone", tmp_path, dtype=np.float64)
    assert (len(splits.train), len(splits.validation), len(splits.test), splits.features) == (1234, 137, 152, 43)
    np.testing.assert_allclose(splits.test, (head[-152:] - head[:-152].mean(0)) / head[:-152].std(0), rtol=1e-10)


# POWER -----------------------------------------------------------------------------------------

def test_power_deletes_columns_adds_seeded_noise_and_shuffles(tmp_path: Path) -> None:
    rows = 300
    identity = np.arange(rows, dtype=np.float64)
    raw = np.random.default_rng(2).normal(size=(rows, 8)) * 1e3  # columns 1 and 3 stay random
    for column, scale in zip((0, 2, 4, 5, 6, 7), (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)):
        raw[:, column] = scale * identity
    np.save(place(tmp_path, "power/data.npy"), raw)
    splits = load_suite("power", tmp_path, dtype=np.float64)
    assert (len(splits.train), len(splits.validation), len(splits.test), splits.features) == (243, 27, 30, 6)
    rows_out = np.vstack([splits.train, splits.validation, splits.test])
    # The reference's draws from one RandomState(42): shuffle, voltage, active power, sub-meterings.
    rng = np.random.RandomState(42)
    order = rng.permutation(rows)
    voltage, active, sub_metering = rng.rand(rows, 1), rng.rand(rows, 1), rng.rand(rows, 3)
    noise = np.hstack([active, voltage, sub_metering, np.zeros((rows, 1))])
    amplitude = [0.001, 0.01, 1.0, 1.0, 1.0, 0.0]
    for column in range(6):
        # Each output column is exactly affine in (shuffled id, its own noise draw), with the
        # noise weighing `amplitude` times one unit of the raw column.
        design = np.column_stack([np.ones(rows), (column + 1) * identity[order], noise[:, column]])
        coefficients, residual, *_ = np.linalg.lstsq(design, rows_out[:, column], rcond=None)
        assert np.abs(design @ coefficients - rows_out[:, column]).max() < 1e-9
        if column < 5:
            assert coefficients[2] / coefficients[1] == pytest.approx(amplitude[column], rel=1e-6)
    pooled = np.vstack([splits.train, splits.validation])
    np.testing.assert_allclose(pooled.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(pooled.std(0), 1, rtol=1e-12)
    again = load_suite("power", tmp_path, dtype=np.float64)
    np.testing.assert_array_equal(again.test, splits.test)


def test_power_needs_eight_columns(tmp_path: Path) -> None:
    np.save(place(tmp_path, "power/data.npy"), np.ones((50, 7)))
    one_line_error(lambda: load_suite("power", tmp_path), "expected 8 columns")


# HEPMASS ---------------------------------------------------------------------------------------

NAMES = ["# label", "f0", "f1", "f2", "f3", "mass"]


def hepmass_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    values = rng.normal(size=(count, 5)) + [0, 1, 2, 3, 4]
    values[:, 4] = rng.choice([500.0, 750.0, 1000.0, 1250.0, 1500.0], count) + rng.normal(size=count)
    labels = np.where(np.arange(count) % 3 == 0, 0.0, 1.0)  # every third row is background
    values[labels == 0] = 99.0  # background rows: would wreck the statistics if kept
    return np.column_stack([labels, values])


def write_csv(path: Path, names: list[str], values: np.ndarray, trailing_comma: bool = False) -> None:
    lines = [",".join(names)] + [",".join(f"{v:.17g}" for v in row) + ("," if trailing_comma else "")
                                 for row in values]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("trailing_comma", [False, True])
def test_hepmass(tmp_path: Path, trailing_comma: bool) -> None:
    rng = np.random.default_rng(3)
    train_raw, test_raw = hepmass_rows(rng, 150), hepmass_rows(rng, 60)
    signal = train_raw[:, 0] == 1
    train_raw[np.flatnonzero(signal)[:6], 2] = -7.0     # f1: smallest value 6 times -> removed
    train_raw[np.flatnonzero(signal)[:30], 3] = 2.5     # f2: a repeated value above its minimum -> kept
    train_raw[np.flatnonzero(~signal)[:10], 1] = -9.0   # f0: repeats only in background rows -> kept
    write_csv(place(tmp_path, "hepmass/1000_train.csv"), NAMES, train_raw)
    # The test file carries one surplus last column, which the reference drops.
    write_csv(place(tmp_path, "hepmass/1000_test.csv"), [*NAMES, ""], test_raw, trailing_comma)
    splits = load_suite("hepmass", tmp_path, dtype=np.float64)
    kept = [1, 3, 4, 5]  # f0, f2, f3, mass
    train_signal = train_raw[signal][:, kept]
    test_signal = test_raw[test_raw[:, 0] == 1][:, kept]
    validation_rows = int(0.1 * len(train_signal))
    assert (len(splits.train), len(splits.validation), len(splits.test), splits.features) == (
        len(train_signal) - validation_rows, validation_rows, len(test_signal), 4)
    mean, std = train_signal.mean(0), train_signal.std(0, ddof=1)  # pandas' std
    np.testing.assert_allclose(splits.test, (test_signal - mean) / std, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(splits.validation, (train_signal[-validation_rows:] - mean) / std, rtol=1e-12)
    pooled = np.vstack([splits.train, splits.validation])
    np.testing.assert_allclose(pooled.std(0, ddof=1), 1, rtol=1e-12)


def test_hepmass_test_columns_must_match_train(tmp_path: Path) -> None:
    rows = hepmass_rows(np.random.default_rng(4), 60)
    write_csv(place(tmp_path, "hepmass/1000_train.csv"), NAMES, rows)
    write_csv(place(tmp_path, "hepmass/1000_test.csv"), NAMES, rows)  # no surplus column: mass would go
    one_line_error(lambda: load_suite("hepmass", tmp_path), "do not match train")


def test_csv_reader_matches_pandas_on_ragged_headers(tmp_path: Path) -> None:
    pandas = pytest.importorskip("pandas")
    for text in ("a,b,c\n1,2,3\n4,5,6\n", "a,b,c,\n1,2,3\n4,5,6\n", "a,b,c\n1,2,3,\n4,5,6,\n",
                 "a,b,c,\n1,2,3,\n4,5,6,\n"):
        path = tmp_path / "t.csv"
        path.write_text(text)
        names, values = read_csv(path)
        frame = pandas.read_csv(path, index_col=False)
        assert names[:3] == list(frame.columns)[:3] and len(names) == frame.shape[1]
        np.testing.assert_array_equal(values, frame.to_numpy(np.float64))


def test_malformed_hepmass_csv(tmp_path: Path) -> None:
    write_csv(place(tmp_path, "hepmass/1000_train.csv"), NAMES, hepmass_rows(np.random.default_rng(5), 30))
    place(tmp_path, "hepmass/1000_test.csv").write_text(",".join(NAMES) + "\n1,2,x,4,5,6\n")
    one_line_error(lambda: load_suite("hepmass", tmp_path), "1000_test.csv", "malformed")


# GAS -------------------------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_PANDAS, reason="GAS is a pickled pandas DataFrame")
def test_gas_drops_correlated_columns_and_standardises_the_whole_set(tmp_path: Path) -> None:
    import pandas

    rng = np.random.default_rng(6)
    rows = 1000
    trend = np.linspace(0.0, 3.0, rows)  # drifts, so whole-set and train-only statistics differ
    base, other = rng.normal(size=rows) + trend, rng.normal(size=rows)
    columns = {"Time": np.arange(rows, dtype=float), "Meth": rng.normal(size=rows), "Eth": rng.normal(size=rows),
               "s0": base, "s1": 2 * base + 0.01 * rng.normal(size=rows), "s2": rng.normal(size=rows) - trend,
               "s3": other, "s4": other + 0.01 * rng.normal(size=rows), "s5": other + 0.01 * rng.normal(size=rows)}
    frame = pandas.DataFrame(columns)
    frame.to_pickle(place(tmp_path, "gas/ethylene_CO.pickle"))
    splits = load_suite("gas", tmp_path, dtype=np.float64)
    # The first column with a partner above 0.98 goes each round: s0, then s3, then s4.
    kept = frame[["s1", "s2", "s5"]].to_numpy()
    assert (len(splits.train), len(splits.validation), len(splits.test), splits.features) == (810, 90, 100, 3)
    whole = np.vstack([splits.train, splits.validation, splits.test])
    np.testing.assert_allclose(whole, (kept - kept.mean(0)) / kept.std(0, ddof=1), rtol=1e-10, atol=1e-12)
    assert np.abs(np.vstack([splits.train, splits.validation]).mean(0)).max() > 0.1  # not train-only


def test_gas_without_pandas_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    place(tmp_path, "gas/ethylene_CO.pickle").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "pandas", None)
    one_line_error(lambda: load_suite("gas", tmp_path), "needs pandas")


@pytest.mark.skipif(not HAS_PANDAS, reason="needs pandas to get past the import")
def test_gas_malformed_pickle(tmp_path: Path) -> None:
    place(tmp_path, "gas/ethylene_CO.pickle").write_bytes(b"\x80\x04garbage")
    one_line_error(lambda: load_suite("gas", tmp_path), "ethylene_CO.pickle", "not a readable")


# BSDS300 ---------------------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_H5PY, reason="BSDS300 is HDF5 and h5py is not installed")
def test_bsds300_reads_the_three_splits(tmp_path: Path) -> None:
    import h5py

    rng = np.random.default_rng(7)
    arrays = {"train": rng.random((50, 63)), "validation": rng.random((10, 63)), "test": rng.random((20, 63))}
    with h5py.File(place(tmp_path, "BSDS300/BSDS300.hdf5"), "w") as handle:
        for name, values in arrays.items():
            handle[name] = values.astype(np.float32)
    splits = load_suite("bsds300", tmp_path)
    np.testing.assert_array_equal(splits.validation, arrays["validation"].astype(np.float32))
    assert (len(splits.train), len(splits.test), splits.features) == (50, 20, 63)


def test_bsds300_without_h5py_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    place(tmp_path, "BSDS300/BSDS300.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "h5py", None)
    one_line_error(lambda: load_suite("bsds300", tmp_path), "needs h5py")


# Finding the files -----------------------------------------------------------------------------

def test_missing_directory_file_and_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWKIT_DATA_DIR", raising=False)
    one_line_error(lambda: load_suite("power"), "FLOWKIT_DATA_DIR", "power/data.npy")
    one_line_error(lambda: load_suite("power", tmp_path / "absent"), "no such data directory")
    one_line_error(lambda: load_suite("hepmass", tmp_path), "hepmass/1000_train.csv", "no such file", "zenodo")
    one_line_error(lambda: load_suite("cifar10", tmp_path), "unknown suite data set")


def test_environment_variable_and_archive_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(place(tmp_path, "data/miniboone/data.npy"), np.random.default_rng(8).normal(size=(100, 3)))
    monkeypatch.setenv("FLOWKIT_DATA_DIR", str(tmp_path))  # the folder holding the archive's data/
    assert load_suite("miniboone").features == 3


def test_malformed_npy(tmp_path: Path) -> None:
    place(tmp_path, "miniboone/data.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    one_line_error(lambda: load_suite("miniboone", tmp_path), "miniboone/data.npy", "not a readable .npy")
