"""Saving and loading whole models, and atomic file writing.

A model file is a ``torch.save`` archive holding only tensors and plain types: a format tag and
version, the preset config as JSON (enough to rebuild the architecture, including its
preprocessing layers: dequantisation and bounds), the weights, the standardisation (column names,
mean, std; and those of the context columns of a conditional model) and free-form metadata (the
training summary, the columns' roles). It is read
back with ``torch.load(weights_only=True)``, which never executes code from the file.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import warnings
from collections.abc import Callable, Iterable
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
    # The temporary name is chosen before the file exists (not by mkstemp), so an interruption
    # at any point, even while the file is being created, finds the name to clean up.
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        # Mode 0o666 less the umask, as a plain open() gives (mkstemp's is 0600), or the mode
        # of the file it replaces.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        with os.fdopen(descriptor, mode, **({"newline": ""} if "b" not in mode else {})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


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


def write_csv(handle: IO, columns: list[str], chunks: Iterable[np.ndarray]) -> None:
    """A header row, then the rows of each array in ``chunks`` (9 significant digits), as CSV.
    Chunks let a caller stream any number of rows through bounded memory."""
    csv.writer(handle, lineterminator="\n").writerow(columns)  # quotes names holding commas
    for values in chunks:
        handle.write("".join(",".join(f"{v:.9g}" for v in row) + "\n" for row in values))


def save_table(path: str | Path, values: np.ndarray, columns: list[str]) -> None:
    """Write a CSV with a header row, atomically."""
    atomic_write(path, lambda handle: write_csv(handle, columns, [values]), mode="w")


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
        archive["preprocessing"] = _standardisation(standardizer)
        if standardizer.context is not None:
            archive["preprocessing"]["context"] = _standardisation(standardizer.context)
    atomic_write(path, lambda handle: torch.save(archive, handle))


def _standardisation(standardizer: Standardizer) -> dict[str, Any]:
    return {"columns": list(standardizer.columns),
            "mean": torch.as_tensor(standardizer.mean, dtype=torch.float64),
            "std": torch.as_tensor(standardizer.std, dtype=torch.float64)}


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
        if not isinstance(config, dict):
            raise ValueError("its config is not a JSON object")
        state = archive["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
            raise ValueError("its weights are not a mapping of names to tensors")
        flow = build(**config).to(_float_dtype(archive.get("dtype", "float32")))
        _check_weights(flow, state, config.get("preset"))
        flow.load_state_dict(state)
        metadata = json.loads(archive.get("metadata", "{}"))
        if not isinstance(metadata, dict):
            raise ValueError("its metadata is not a JSON object")
        standardizer = _preprocessing(archive.get("preprocessing"), flow.features)
        if standardizer is not None and archive["preprocessing"].get("context") is not None:
            standardizer.context = _preprocessing(archive["preprocessing"]["context"], flow.context_features,
                                                  "context ")
        if flow.context_features and (standardizer is None or standardizer.context is None) \
                and standardizer is not None:
            raise ValueError("it describes a conditional flow but holds no context standardisation")
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise ModelFileError(f"{path}: corrupt flowkit model file ({reason})") from None
    flow.config = config
    flow.eval()
    return flow, standardizer, metadata


def _float_dtype(name: Any) -> torch.dtype:
    if name not in ("float16", "bfloat16", "float32", "float64"):
        raise ValueError(f"unknown weight type {name!r}")
    return getattr(torch, name)


def _check_weights(flow: Flow, state: dict[str, torch.Tensor], preset: str | None) -> None:
    """Weights that fit the architecture: finite, with the same names and shapes. Says what differs
    where ``load_state_dict`` would say only that something does (on lines of its own)."""
    expected = {name: tuple(value.shape) for name, value in flow.state_dict().items()}
    derived = {name for name, _ in flow.named_buffers()} - set(expected)  # older files saved some of these
    found = {name: tuple(value.shape) for name, value in state.items() if name not in derived}
    problems = [f"no {name}" for name in expected if name not in found]
    problems += [f"unexpected {name}" for name in found if name not in expected]
    problems += [f"{name} has shape {found[name]}, expected {expected[name]}"
                 for name in expected if name in found and found[name] != expected[name]]
    if problems:
        more = f" (and {len(problems) - 1} more differences)" if len(problems) > 1 else ""
        raise ValueError(f"its weights do not fit the {preset} architecture it describes: {problems[0]}{more}")
    # A NaN or Inf weight never comes from training (those steps are refused); it means damage.
    broken = [name for name, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise ValueError(f"non-finite weights in {broken[0]}")


def _preprocessing(preprocessing: Any, features: int, what: str = "") -> Standardizer | None:
    """The standardisation stored with the model, checked against the model's features."""
    if preprocessing is None:
        return None
    columns, mean, std = preprocessing["columns"], preprocessing["mean"], preprocessing["std"]
    if not (isinstance(columns, list) and len(columns) == features and all(isinstance(c, str) for c in columns)
            and len(set(columns)) == features):
        raise ValueError(f"its {what}column names are not {features} distinct names")
    for name, values in (("mean", mean), ("std", std)):
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != (features,) \
                or not torch.isfinite(values).all():
            raise ValueError(f"its {what}standardisation {name} is not {features} finite numbers")
    if not (std > 0).all():
        raise ValueError(f"its {what}standardisation std is not positive")
    return Standardizer(mean.double().numpy(), std.double().numpy(), list(columns))
