"""Keeping the resident memory of a fit on a large table down: the table standardised into
float32 inside its own float64 buffer, the training rows gathered inside the array they come
from (``gather_in_place``), and memory no longer used handed back to the system.

``flowkit fit`` reads a table as float64 (exact moments, exact integer and bound checks) and
trains on float32. Converting into a second array would hold both at once: 1.5x the float64
data on top of everything else, the peak of a fit on a million rows. Written over the float64
buffer instead, the float32 rows occupy its first half; the pages of the second half are then
released (``madvise``), so the table costs its float32 size from there on.

glibc's allocator also keeps the memory of freed mid-sized blocks (under its mmap threshold,
which grows to 32 MiB) for reuse: after a large body's trial steps that is 100+ MiB the process
keeps but no longer uses, until ``trim_heap`` returns it.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from typing import Any

import numpy as np
import torch
from torch import Tensor

MADV_DONTNEED = 4  # Linux: the pages are dropped now and read back as zeros if touched again


def release_pages(array: np.ndarray, start_byte: int) -> int:
    """Give the whole pages of ``array``'s memory from ``start_byte`` (an offset into it) to its
    end back to the operating system; returns how many bytes. Their contents are lost (zeros),
    so nothing may read that part of ``array`` again. Does nothing (returns 0) off Linux."""
    if not array.flags.c_contiguous:
        return 0
    address = array.__array_interface__["data"][0]
    first = -(-(address + start_byte) // mmap.PAGESIZE) * mmap.PAGESIZE  # round up to a page
    last = (address + array.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE  # round down
    if last <= first:
        return 0
    libc = _libc()
    if libc is None or not hasattr(libc, "madvise"):  # the memory simply stays
        return 0
    done = libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), ctypes.c_int(MADV_DONTNEED))
    return last - first if done == 0 else 0


def can_standardize_in_place(values: np.ndarray) -> bool:
    """Whether ``standardize_in_place`` can write over ``values``."""
    return values.dtype == np.float64 and values.ndim == 2 and values.flags.c_contiguous and values.flags.writeable


def standardize_in_place(values: np.ndarray, mean: np.ndarray, std: np.ndarray,
                         block_rows: int = 65_536) -> np.ndarray:
    """``((values - mean) / std)`` as float32, written over ``values``' own buffer, which is then
    half released: ``values`` is consumed and must not be used again (nor any view of it).

    Computed in float64 a block of rows at a time. Block k's float32 rows end at byte
    ``4 * end * columns``, before the float64 rows not yet read (from ``8 * end * columns``), and
    each block is computed into a temporary before it is written, so no row is overwritten
    before it is read.

    Example:
        >>> values = np.arange(12.0).reshape(6, 2)
        >>> expected = ((values - values.mean(0)) / values.std(0)).astype(np.float32)
        >>> out = standardize_in_place(values, values.mean(0), values.std(0), block_rows=2)
        >>> out.dtype, bool(np.array_equal(out, expected))
        (dtype('float32'), True)
    """
    if not can_standardize_in_place(values):
        raise ValueError("standardize_in_place needs a writeable, C-contiguous 2-D float64 array")
    rows, columns = values.shape
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    out = values.reshape(-1).view(np.float32)[:rows * columns].reshape(rows, columns)
    for start in range(0, rows, block_rows):
        out[start:start + block_rows] = (values[start:start + block_rows] - mean) / std
    release_pages(values, out.nbytes)
    return out


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    except OSError:
        return None


def trim_heap() -> None:
    """Return the free memory glibc's heap holds to the system (``malloc_trim``); nothing elsewhere."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(ctypes.c_size_t(0))


def scoring_rows(model: torch.nn.Module, at_least: int = 1) -> int:
    """Rows per chunk of a pass without autograd (validation, scoring) through ``model``: up to
    2,048, so a small flow pays little per call, but at most ``2**31 / parameters``, so a large
    body's activations stay a few MiB (541 rows at four million parameters), and ``at_least``.

    Example:
        >>> scoring_rows(torch.nn.Linear(10, 10)), scoring_rows(torch.nn.Linear(2000, 2000), at_least=512)
        (2048, 536)
    """
    parameters = sum(p.numel() for p in model.parameters())
    return max(at_least, min(2048, 2**31 // max(parameters, 1)))


def copied(tensor: Tensor, given: Any) -> bool:
    """Whether ``as_rows`` made ``tensor`` as a copy of ``given`` (rather than sharing its memory)."""
    pointer = given.ctypes.data if isinstance(given, np.ndarray) else \
        given.data_ptr() if isinstance(given, Tensor) else None
    return tensor.data_ptr() != pointer


def gather_in_place(x: Tensor, rows: np.ndarray, block: int = 65_536) -> Tensor:
    """``x[rows]`` for increasing ``rows``, gathered into the first ``len(rows)`` rows of ``x``
    itself (overwriting them) and returned as a view of them. Row ``k`` is taken from row
    ``rows[k] >= k``, and each block is gathered into a temporary before it is written, so no row
    is overwritten before it is read."""
    rows = torch.as_tensor(rows)
    for start in range(0, len(rows), block):
        taken = rows[start:start + block]
        x[start:start + len(taken)] = x[taken]
    return x[:len(rows)]
