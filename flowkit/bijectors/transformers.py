"""Elementwise monotone transformers that coupling and autoregressive structures plug in.

A transformer maps each feature with its own parameters. ``params`` has shape
``(..., num_params)`` with the leading shape equal to the input's; the structure (coupling,
masked autoregressive) decides where the parameters come from. Every transformer is the identity
when all its parameters are zero, so a zero-initialised conditioner makes an identity layer.
The log-dets returned here are elementwise (same shape as the input); the structure sums them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class Transformer:
    """Interface of an elementwise transformer with ``num_params`` parameters per feature."""

    num_params: int

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(y, elementwise log|dy/dx|)``."""
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(x, elementwise log|dx/dy|)``."""
        raise NotImplementedError

    def config(self) -> dict:
        """Constructor arguments, so a saved model can rebuild the transformer."""
        return {}


class Affine(Transformer):
    """``y = x * scale + shift`` with ``scale = softplus(u + c) + min_scale``.

    The softplus keeps the scale positive and grows only linearly for large ``u`` (no exp
    overflow), and unlike the sigmoid parameterisation of nflows the scale is not capped near 1.
    ``c`` is chosen so that ``u = 0`` gives a scale of exactly 1 (the identity).

    Example:
        >>> import torch
        >>> y, log_det = Affine().forward(torch.ones(2, 3), torch.zeros(2, 3, 2))
        >>> bool((y == 1).all() and (log_det == 0).all())
        True
    """

    num_params = 2

    def __init__(self, min_scale: float = 1e-3) -> None:
        if not 0 < min_scale < 1:
            raise ValueError(f"min_scale must be in (0, 1), got {min_scale}")
        self.min_scale = min_scale
        self._offset = math.log(math.expm1(1.0 - min_scale))

    def _shift_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, unconstrained = params[..., 0], params[..., 1]
        return shift, F.softplus(unconstrained + self._offset) + self.min_scale

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, scale = self._shift_scale(params)
        return x * scale + shift, torch.log(scale)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, scale = self._shift_scale(params)
        return (y - shift) / scale, -torch.log(scale)

    def config(self) -> dict:
        return {"min_scale": self.min_scale}


class Additive(Transformer):
    """``y = x + shift``: volume preserving (NICE).

    Example:
        >>> import torch
        >>> y, log_det = Additive().forward(torch.zeros(1, 2), torch.ones(1, 2, 1))
        >>> y.tolist(), log_det.tolist()
        ([[1.0, 1.0]], [[0.0, 0.0]])
    """

    num_params = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params[..., 0], torch.zeros_like(x)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return y - params[..., 0], torch.zeros_like(y)
