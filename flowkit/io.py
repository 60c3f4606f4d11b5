"""Saving and loading whole models, and atomic file writing.

A model file is a ``torch.save`` archive holding only tensors and plain types: a format tag and
version, the preset config as JSON (enough to rebuild the architecture), the weights, the
preprocessing (column names, mean, std) and free-form metadata (the training summary). It is read
back with ``torch.load(weights_only=True)``, which never executes code from the file.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from flowkit.data.tabular import Standardizer
from flowkit.flow import Flow
from flowkit.presets import build

FORMAT = "flowkit-model"
VERSION = 1


class ModelFileError(ValueError):
    """A model file that cannot be loaded, with a one-line reason."""


def atomic_write(path: str | Path, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Write through ``write(handle)`` into a temporary file beside ``path``, then rename it over
    ``path``: readers see the old file or the new one, never half of one, and a failure leaves
    the old file untouched. The data is fsynced before the rename, and the folder after it, so
    a crash cannot leave a renamed but empty file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would have given,
        # or keep the mode of the file it replaces.
        os.chmod(temporary, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        with os.fdopen(descriptor, mode, **({"newline": ""} if "b" not in mode else {})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; not possible on every platform, so best effort."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def save_table(path: str | Path, values: np.ndarray, columns: list[str]) -> None:
    """Write a CSV with a header row, atomically."""

    def write(handle: IO) -> None:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([f"{v:.9g}" for v in row] for row in values)

    atomic_write(path, write, mode="w")


def save_model(path: str | Path, flow: Flow, standardizer: Standardizer | None = None,
               metadata: dict[str, Any] | None = None) -> None:
    """Save a preset-built flow with its preprocessing and metadata, atomically.

    Example:
        >>> import os, tempfile, flowkit
        >>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
        >>> save_model(path, flowkit.realnvp(2, transforms=1))
        >>> load_model(path)[0].features
        2
    """
    config = getattr(flow, "config", None)
    if config is None:
        raise ValueError("only flows built by a preset (flowkit.build / flowkit.realnvp, ...) can be saved")
    archive: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "config": json.dumps(config),
        "state_dict": {k: v.detach().cpu() for k, v in flow.state_dict().items()},
        "dtype": str(next(iter(flow.state_dict().values())).dtype).removeprefix("torch."),
        "metadata": json.dumps(metadata or {}),
    }
    if standardizer is not None:
        archive["preprocessing"] = {
            "columns": list(standardizer.columns),
            "mean": torch.as_tensor(standardizer.mean, dtype=torch.float64),
            "std": torch.as_tensor(standardizer.std, dtype=torch.float64),
        }
    atomic_write(path, lambda handle: torch.save(archive, handle))


def load_model(path: str | Path, map_location: str | torch.device = "cpu"
               ) -> tuple[Flow, Standardizer | None, dict[str, Any]]:
    """Load ``(flow, standardizer or None, metadata)``; the flow is in eval mode.

    Raises:
        ModelFileError: missing, truncated, foreign or corrupt file, with one line saying which.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles; the error below says it all
            warnings.simplefilter("ignore")
            archive = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # torch raises many kinds of error for a bad archive; all mean "not loadable"
        raise ModelFileError(f"{path}: not a readable flowkit model file (damaged, truncated, or holding "
                             "objects other than tensors and plain values)") from None
    if not isinstance(archive, dict) or archive.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a flowkit model file")
    if archive.get("version") != VERSION:
        raise ModelFileError(f"{path}: model format version {archive.get('version')} is not supported "
                             f"(this flowkit reads version {VERSION})")
    try:
        config = json.loads(archive["config"])
        flow = build(**config).to(getattr(torch, archive.get("dtype", "float32")))
        flow.load_state_dict(archive["state_dict"])
        metadata = json.loads(archive.get("metadata", "{}"))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0][:160]
        raise ModelFileError(f"{path}: corrupt flowkit model file ({reason})") from None
    flow.config = config
    flow.eval()
    standardizer = None
    if "preprocessing" in archive:
        pre = archive["preprocessing"]
        standardizer = Standardizer(pre["mean"].numpy(), pre["std"].numpy(), list(pre["columns"]))
    return flow, standardizer, metadata
