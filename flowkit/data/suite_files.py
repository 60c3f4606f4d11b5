"""Finding and reading the raw files of the MAF tabular suite (Papamakarios et al., 2017).

The files are those of the authors' archive ``data.tar.gz`` (zenodo record 1161203), unpacked
into one folder given as ``root`` or by the ``FLOWKIT_DATA_DIR`` environment variable::

    power/data.npy  gas/ethylene_CO.pickle  hepmass/1000_train.csv  hepmass/1000_test.csv
    miniboone/data.npy  BSDS300/BSDS300.hdf5

The archive unpacks into a ``data/`` folder; ``root`` may name that folder or the one holding it.
Every problem raises ``DataError`` with one line naming the file and the expected layout.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from flowkit.data.tabular import DataError, _read_npy

ENVIRONMENT_VARIABLE = "FLOWKIT_DATA_DIR"
LAYOUT = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.pickle",),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
}
LAYOUT_HINT = ("expected the unpacked MAF archive (zenodo record 1161203, data.tar.gz): "
               + ", ".join(path for paths in LAYOUT.values() for path in paths))


def suite_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the suite: ``root``, else ``$FLOWKIT_DATA_DIR``.

    Example:
        >>> suite_root("/nonexistent/suite")
        Traceback (most recent call last):
        ...
        flowkit.data.tabular.DataError: /nonexistent/suite: no such data directory; ...
    """
    if root is None:
        root = os.environ.get(ENVIRONMENT_VARIABLE) or None
        if root is None:
            raise DataError(f"no data directory: pass root (--data-dir) or set {ENVIRONMENT_VARIABLE}; "
                            f"{LAYOUT_HINT}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: no such data directory; {LAYOUT_HINT}")
    return path


def suite_file(root: Path, relative: str) -> Path:
    """``root/relative`` (or ``root/data/relative``, the archive's own top folder), which must exist."""
    for candidate in (root / relative, root / "data" / relative):
        if candidate.is_file():
            return candidate
    raise DataError(f"{root / relative}: no such file; {LAYOUT_HINT}")


def read_npy(path: Path) -> np.ndarray:
    """A 2-D finite float64 array from a ``.npy`` file, never unpickled; truncated files are refused."""
    return _read_npy(path).values


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """Column names and float64 values of a CSV file with a header row, parsed as pandas'
    ``read_csv(path, index_col=False)`` parses a consistent file (the MAF reference's call): a
    header name without a field gives a NaN column, one trailing field beyond the header is
    dropped, and a ``#`` in the header is part of a name, not a comment.
    """
    try:
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            names = next(reader, None)
            first = next(reader, None)
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    if not names or first is None:
        raise DataError(f"{path}: expected a header row and data rows, found {'nothing' if not names else 'no rows'}")
    fields = len(first)
    while fields and not first[fields - 1].strip():
        fields -= 1  # empty trailing fields: pandas reads them as NaN, numpy cannot parse them
    if len(first) > len(names) + 1:
        raise DataError(f"{path}: line 2 has {len(first)} fields but the header names {len(names)}")
    width = min(fields, len(names))
    try:
        values = np.loadtxt(path, delimiter=",", skiprows=1, usecols=range(width), comments=None, ndmin=2,
                            dtype=np.float64)
    except ValueError as error:
        raise DataError(f"{path}: malformed CSV ({str(error).splitlines()[0]})") from None
    if width < len(names):
        values = np.hstack([values, np.full((len(values), len(names) - width), np.nan)])
    return names, values


def read_pickled_frame(path: Path):
    """The pandas DataFrame in a pickle (GAS). Unpickling runs code named in the file, so only
    read the authors' file; pandas is needed for this one data set and nowhere else."""
    try:
        import pandas
    except ImportError:
        raise DataError(f"{path}: reading GAS needs pandas (pip install pandas); the file is a pickled "
                        "pandas DataFrame") from None
    try:
        frame = pandas.read_pickle(path)
    except Exception as error:  # a damaged pickle can raise almost anything
        raise DataError(f"{path}: not a readable pickled DataFrame ({error.__class__.__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(frame, pandas.DataFrame):
        raise DataError(f"{path}: expected a pickled pandas DataFrame, got {type(frame).__name__}")
    return frame


def read_hdf5_splits(path: Path, names: tuple[str, ...]) -> list[np.ndarray]:
    """The named 2-D datasets of an HDF5 file, read whole (BSDS300); needs h5py."""
    try:
        import h5py
    except ImportError:
        raise DataError(f"{path}: reading BSDS300 needs h5py (pip install h5py); the file is HDF5") from None
    try:
        with h5py.File(path, "r") as handle:
            missing = [name for name in names if name not in handle]
            if missing:
                raise DataError(f"{path}: no dataset {missing[0]!r}; expected {', '.join(names)}")
            arrays = [np.asarray(handle[name][()]) for name in names]
    except OSError as error:
        raise DataError(f"{path}: not a readable HDF5 file ({str(error).splitlines()[0]})") from None
    for name, array in zip(names, arrays):
        if array.ndim != 2 or 0 in array.shape or array.dtype.kind != "f":
            raise DataError(f"{path}: dataset {name!r} should be a non-empty 2-D float array, "
                            f"got shape {array.shape} of {array.dtype}")
    return arrays
