"""Cached 0-dim constants for the elementwise hot paths.

On CPU, ``tensor + 0.5`` wraps the Python number in a new float64 tensor and casts it to the
tensor's dtype on every call: two extra dispatches that cost more than the arithmetic on a
512-element row. A sampling step of an autoregressive flow runs a few dozen such ops per feature,
so the constants are made once per dtype and device and reused (which also keeps host-to-device
copies out of a CUDA graph). Under ``torch.compile`` plain numbers are better: they become
constants of the compiled kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

_CONSTANTS: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}


def _is_compiling() -> bool:
    check = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(check()) if check is not None else bool(torch._dynamo.is_compiling())


def scalar(value: float, like: Tensor) -> Tensor | float:
    """``value`` as a cached 0-dim tensor of ``like``'s dtype and device (a number when compiling).

    Example:
        >>> import torch
        >>> scalar(0.5, torch.zeros(2, dtype=torch.float64))
        tensor(0.5000, dtype=torch.float64)
    """
    if _is_compiling():
        return value
    key = (value, like.dtype, like.device)
    constant = _CONSTANTS.get(key)
    if constant is None:
        with torch.inference_mode(False):  # a normal tensor, usable later in autograd too
            constant = _CONSTANTS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return constant
