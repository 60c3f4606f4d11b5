"""The standard tabular density-estimation suite of MAF (Papamakarios, Pavlakou & Murray, 2017),
used unchanged by NSF (Durkan et al., 2019): POWER, GAS, HEPMASS, MINIBOONE and BSDS300, with
the authors' preprocessing and splits.

Each loader reproduces the reference code of the MAF repository (``gpapamak/maf``,
``datasets/*.py``, read for this module; ``bayesiains/nsf`` ``data/*.py`` is the same code
ported to Python 3). Computation is in float64; the splits are returned in ``dtype``
(float32 by default, as the reference's ``Data`` classes cast them). On the official files the
reference gives these sizes (train / validation / test x features), the ones both papers report:

=========  =================================  ========
POWER      1,659,917 / 184,435 / 204,928      6
GAS        852,174 / 94,685 / 105,206         8
HEPMASS    315,123 / 35,013 / 174,987         21
MINIBOONE  29,556 / 3,284 / 3,648             43
BSDS300    1,000,000 / 50,000 / 250,000       63
=========  =================================  ========

Not verified here (the official files are not on this machine): that the sizes above come out of
this code, and that HEPMASS's test file has the one surplus trailing column the reference drops.
Where the reference would silently produce NaN (non-matching HEPMASS columns, constant columns)
these loaders raise ``DataError`` instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from flowkit.data import suite_files
from flowkit.data.tabular import DataError

SUITE = ("power", "gas", "hepmass", "miniboone", "bsds300")


@dataclass(frozen=True, eq=False)
class SuiteSplits:
    """The three splits of one suite data set, rows by features."""

    name: str
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    @property
    def features(self) -> int:
        return int(self.train.shape[1])


def tail_split(data: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """``(head, tail)`` with the last ``int(0.1 * rows)`` rows in the tail, the reference's split.

    Example:
        >>> head, tail = tail_split(np.arange(25.0)[:, None], "x")
        >>> len(head), tail[:, 0].tolist()
        (23, [23.0, 24.0])
    """
    count = int(0.1 * data.shape[0])
    if count == 0:  # the reference's data[-0:] would make the whole set the tail
        raise DataError(f"{source}: {data.shape[0]} rows are too few to hold out 10%")
    return data[:-count], data[-count:]


def repeated_smallest_value_columns(data: np.ndarray, max_count: int = 5) -> list[int]:
    """Columns whose SMALLEST value occurs more than ``max_count`` times.

    The reference means to drop features with "too many re-occurring values", but takes entry
    ``[0]`` of the counts sorted by value (``sorted(Counter(column).items())``), so it counts only
    the smallest value; a column whose most frequent value is another one is kept. This
    reproduces that rule, not the intent.

    Example:
        >>> data = np.array([[0.0, 1.0]] * 6 + [[2.0, 0.0]])
        >>> repeated_smallest_value_columns(data)  # column 1 repeats 1.0, but its minimum is unique
        [0]
    """
    return [index for index, column in enumerate(data.T)
            if np.count_nonzero(column == column.min()) > max_count]


def _standardised(splits: list[np.ndarray], mean: np.ndarray, std: np.ndarray, source: str) -> list[np.ndarray]:
    if np.any(std == 0):
        raise DataError(f"{source}: column {int(np.flatnonzero(std == 0)[0])} is constant; cannot standardise")
    return [(split - mean) / std for split in splits]


def _split_then_standardise(data: np.ndarray, source: str) -> list[np.ndarray]:
    """Test = last 10%, validation = last 10% of the rest; standardised with the mean and
    (ddof=0, numpy's) std of train + validation: POWER's and MINIBOONE's ``load_data_normalised``."""
    rest, test = tail_split(data, source)
    return _standardised([*tail_split(rest, source), test], rest.mean(axis=0), rest.std(axis=0), source)


def preprocess_power(raw: np.ndarray, source: str = "power") -> list[np.ndarray]:
    """POWER from the 8 columns of ``power/data.npy``.

    In the reference's order, all from one ``RandomState(42)``: shuffle the rows; delete column 3
    (global intensity) and then column 1 (global reactive power); add uniform noise drawn as
    voltage ``0.01 * U`` first, then global active power ``0.001 * U``, then the three
    sub-meterings ``U``, the time column none; split; standardise with train + validation.
    """
    if raw.ndim != 2 or raw.shape[1] != 8:
        raise DataError(f"{source}: expected 8 columns (the MAF power/data.npy), got shape {raw.shape}")
    rng = np.random.RandomState(42)
    data = np.array(raw, dtype=np.float64)
    rng.shuffle(data)
    rows = data.shape[0]
    data = np.delete(np.delete(data, 3, axis=1), 1, axis=1)
    voltage = 0.01 * rng.rand(rows, 1)
    active_power = 0.001 * rng.rand(rows, 1)
    sub_metering = rng.rand(rows, 3)
    data = data + np.hstack([active_power, voltage, sub_metering, np.zeros((rows, 1))])
    return _split_then_standardise(data, source)


def preprocess_gas(frame, source: str = "gas") -> list[np.ndarray]:
    """GAS from the pandas DataFrame of ``gas/ethylene_CO.pickle``.

    Drop ``Meth``, ``Eth`` and ``Time``; while some column has a Pearson correlation above 0.98
    with another (pandas' ``corr``; the diagonal counts once), drop the first such column and
    recompute; standardise over the WHOLE set with pandas' mean and std (ddof=1), before
    splitting (test = last 10%, validation = last 10% of the rest).
    """
    missing = [name for name in ("Meth", "Eth", "Time") if name not in frame.columns]
    if missing:
        raise DataError(f"{source}: no column {missing[0]!r}; expected the MAF ethylene_CO DataFrame")
    frame = frame.drop(columns=["Meth", "Eth", "Time"])
    if frame.shape[1] == 0 or not all(kind.kind in "biuf" for kind in frame.dtypes):
        raise DataError(f"{source}: expected numeric sensor columns besides Meth, Eth and Time")
    while True:
        correlated = np.flatnonzero((frame.corr() > 0.98).sum(axis=1).to_numpy() > 1)
        if len(correlated) == 0:
            break
        frame = frame.drop(columns=frame.columns[correlated[0]])
    std = frame.std()
    if (std == 0).any():
        raise DataError(f"{source}: column {std.index[(std == 0).to_numpy()][0]!r} is constant")
    rest, test = tail_split(((frame - frame.mean()) / std).to_numpy(np.float64), source)
    return [*tail_split(rest, source), test]


def preprocess_hepmass(train_file: tuple[list[str], np.ndarray], test_file: tuple[list[str], np.ndarray],
                       source: str = "hepmass") -> list[np.ndarray]:
    """HEPMASS from ``(names, values)`` of ``1000_train.csv`` and ``1000_test.csv``.

    Keep the rows whose first column (the label) is 1 and drop that column; from the test file
    also drop its last column (the reference: "because the data set is messed up"; pandas then
    aligns test to train by column name, so the names left must be train's). Standardise both
    with the train rows' mean and pandas' std (ddof=1); drop the columns whose smallest train
    value occurs more than 5 times (``repeated_smallest_value_columns``); validation = last 10%
    of train.
    """
    (train_names, train), (test_names, test) = train_file, test_file
    train, test = train[train[:, 0] == 1, 1:], test[test[:, 0] == 1, 1:-1]
    train_names, test_names = train_names[1:], test_names[1:-1]
    if test_names != train_names:
        raise DataError(f"{source}: after dropping the label and the test file's last column, the test "
                        f"columns ({', '.join(test_names[-3:])}, ...) do not match train's "
                        f"({', '.join(train_names[-3:])}, ...)")
    for name, split in (("1000_train.csv", train), ("1000_test.csv", test)):
        if len(split) == 0:
            raise DataError(f"{source}: {name} has no rows with label 1")
        if not np.isfinite(split).all():
            raise DataError(f"{source}: {name} has missing or non-finite values in label-1 rows")
    train, test = _standardised([train, test], train.mean(axis=0), train.std(axis=0, ddof=1), source)
    removed = set(repeated_smallest_value_columns(train))
    keep = [index for index in range(train.shape[1]) if index not in removed]
    train, validation = tail_split(train[:, keep], source)
    return [train, validation, test[:, keep]]


def preprocess_miniboone(raw: np.ndarray, source: str = "miniboone") -> list[np.ndarray]:
    """MINIBOONE from ``miniboone/data.npy``: split, then standardise with train + validation.

    ``data.npy`` is already cleaned. The reference keeps, as a comment, how it was made from the
    UCI file (50 columns): rows with column 0 below -100 removed as outliers, then the columns
    whose smallest value occurs more than 5 times removed (43 remain). That step is not repeated
    here: the loader starts from the authors' ``data.npy``, as the reference does.
    """
    return _split_then_standardise(np.asarray(raw, dtype=np.float64), source)


def load_suite(name: str, root: str | os.PathLike[str] | None = None, dtype: type = np.float32) -> SuiteSplits:
    """Load one suite data set, preprocessed and split as in the MAF paper.

    Args:
        name: ``power``, ``gas``, ``hepmass``, ``miniboone`` or ``bsds300`` (any case).
        root: the folder with the unpacked archive (see ``flowkit.data.suite_files``); default
            ``$FLOWKIT_DATA_DIR``.
        dtype: dtype of the returned splits.

    Raises:
        DataError: unknown name, missing directory or file, malformed file, missing optional
            reader (pandas for GAS, h5py for BSDS300).

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> (folder / "miniboone").mkdir()
        >>> np.save(folder / "miniboone" / "data.npy", np.random.default_rng(0).normal(size=(100, 3)))
        >>> splits = load_suite("miniboone", folder)
        >>> [len(splits.train), len(splits.validation), len(splits.test)], splits.features
        ([81, 9, 10], 3)
    """
    key = name.lower()
    if key not in SUITE:
        raise DataError(f"unknown suite data set {name!r}; choose from {', '.join(SUITE)}")
    folder = suite_files.suite_root(root)
    paths = [suite_files.suite_file(folder, relative) for relative in suite_files.LAYOUT[key]]
    source = str(paths[0])
    if key == "power":
        splits = preprocess_power(suite_files.read_npy(paths[0]), source)
    elif key == "gas":
        splits = preprocess_gas(suite_files.read_pickled_frame(paths[0]), source)
    elif key == "hepmass":
        splits = preprocess_hepmass(suite_files.read_csv(paths[0]), suite_files.read_csv(paths[1]),
                                    str(paths[0].parent))
    elif key == "miniboone":
        splits = preprocess_miniboone(suite_files.read_npy(paths[0]), source)
    else:  # BSDS300 comes preprocessed and split (63-dim patches)
        splits = suite_files.read_hdf5_splits(paths[0], ("train", "validation", "test"))
    train, validation, test = (np.ascontiguousarray(split, dtype=dtype) for split in splits)
    return SuiteSplits(key, train, validation, test)
