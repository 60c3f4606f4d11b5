"""Training checkpoints: written atomically, read back without unpickling code.

A checkpoint holds everything a run needs to continue as if it had never stopped: the model,
the optimiser and schedule, the random-number states, the step, the best weights so far and
the history. Only tensors and plain Python types go in, so ``torch.load(weights_only=True)``
can read it and a checkpoint file can never execute code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from flowkit.io import atomic_write

FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically.

    The bytes go to a temporary file in the same folder, are flushed and fsynced, and the file
    is renamed over ``path`` (``os.replace`` is atomic on one file system). A crash at any point
    leaves either the old checkpoint or the new one, never a torn file.

    Example:
        >>> import os, tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "run.pt")
        >>> save_checkpoint(path, {"step": 3, "weights": torch.ones(2)})
        >>> load_checkpoint(path)["step"]
        3
    """
    atomic_write(path, lambda handle: torch.save({"format_version": FORMAT_VERSION, **state}, handle))

def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; never unpickles arbitrary objects.

    Raises:
        ValueError: the file is not a flowkit checkpoint (corrupt, truncated, or another format).
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises several types for a damaged or foreign file
        raise ValueError(f"{path} is not a readable flowkit checkpoint: {error}") from error
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a flowkit training checkpoint (format {FORMAT_VERSION})")
    return state


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The random-number states a run consumes: torch's CPU generator and the device's."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def warn_if_changed(saved: dict[str, Any], current: dict[str, Any], path: Path | None, writes: bool) -> None:
    """Warn (on rank 0) when a run resumes with settings other than those it was saved with."""
    changed = sorted(key for key in current if key in saved and saved[key] != current[key])
    if changed and writes:
        details = ", ".join(f"{key}: {saved[key]!r} -> {current[key]!r}" for key in changed)
        print(f"warning: resuming {path} with different settings ({details}); the run will not "
              "match an uninterrupted one", file=sys.stderr, flush=True)
