"""Elementwise monotone transformers that coupling and autoregressive structures plug in.

A transformer maps each feature with its own parameters. ``params`` has shape
``(..., num_params)`` with the leading shape equal to the input's; the structure (coupling,
masked autoregressive) decides where the parameters come from. Every transformer is the identity
when all its parameters are zero, so a zero-initialised conditioner makes an identity layer.
The log-dets returned here are elementwise (same shape as the input); the structure sums them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkit.bijectors import splines
from flowkit.bijectors.scalars import scalar
from flowkit.bijectors.spline_writer import SplineInverseWriter

# ``writer(y, params, out)``: one sampling step, ``out = inverse(y, params)[0]`` with no gradient.
Writer = Callable[[Tensor, Tensor, Tensor], None]


class Transformer:
    """Interface of an elementwise transformer with ``num_params`` parameters per feature."""

    num_params: int
    # Whether torch.compile of one sampling step beats eager dispatch: a compiled call costs tens
    # of microseconds of guards and wrapping, more than a handful of eager ops (affine: 29 us eager,
    # 54 us compiled per 512-row step), less than a spline's several dozen (574 -> 148 us).
    compiles_well = False

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(y, elementwise log|dy/dx|)``."""
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(x, elementwise log|dx/dy|)``."""
        raise NotImplementedError

    def inverse_into(self, y: Tensor, params: Tensor, out: Tensor) -> None:
        """Write ``inverse(y, params)[0]`` into ``out`` (no gradient): sampling's per-feature step,
        which takes the log-dets of all features afterwards. Transformers override it with fewer
        ops where they can."""
        out.copy_(self.inverse(y, params)[0])

    def inverse_writer(self, like: Tensor) -> Writer:
        """``inverse_into`` for rows like ``like`` (``(batch,)``: its size, dtype and device).
        A transformer whose step needs scratch tensors returns one that holds them."""
        return self.inverse_into

    def config(self) -> dict:
        """Constructor arguments, so a saved model can rebuild the transformer."""
        return {}


class Affine(Transformer):
    """``y = x * scale + shift`` with ``scale = softplus(u + c) + min_scale``.

    The softplus keeps the scale positive and grows only linearly for large ``u`` (no exp
    overflow), and unlike the sigmoid parameterisation of nflows the scale is not capped near 1.
    ``c`` is chosen so that ``u = 0`` gives a scale of 1 (the identity, up to rounding).

    Example:
        >>> import torch
        >>> y, log_det = Affine().forward(torch.ones(2, 3), torch.zeros(2, 3, 2))
        >>> torch.allclose(y, torch.ones(2, 3)), torch.allclose(log_det, torch.zeros(2, 3), atol=1e-6)
        (True, True)
    """

    num_params = 2

    def __init__(self, min_scale: float = 1e-3) -> None:
        if not 0 < min_scale < 1:
            raise ValueError(f"min_scale must be in (0, 1), got {min_scale}")
        self.min_scale = min_scale
        self._offset = math.log(math.expm1(1.0 - min_scale))

    def _shift_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, unconstrained = params.unbind(-1)  # one op for both views (sampling is dispatch-bound)
        return shift, F.softplus(unconstrained + scalar(self._offset, params)) + scalar(self.min_scale, params)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, scale = self._shift_scale(params)
        return torch.addcmul(shift, x, scale), torch.log(scale)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, scale = self._shift_scale(params)
        return (y - shift) / scale, torch.log(scale).neg()

    def inverse_into(self, y: Tensor, params: Tensor, out: Tensor) -> None:
        shift, scale = self._shift_scale(params)
        torch.div(torch.sub(y, shift), scale, out=out)

    def inverse_writer(self, like: Tensor) -> Writer:
        return _AffineInverseWriter(self, like)

    def config(self) -> dict:
        return {"min_scale": self.min_scale}


class _AffineInverseWriter:
    """``Affine.inverse_into`` with the scale in a held buffer and its constants looked up once
    (a class, not a closure, so that a module holding one can still be pickled)."""

    def __init__(self, affine: Affine, like: Tensor) -> None:
        self.scale = like.new_empty(like.shape[0])
        self.offset, self.min_scale = scalar(affine._offset, like), scalar(affine.min_scale, like)

    def __call__(self, y: Tensor, params: Tensor, out: Tensor) -> None:
        shift, unconstrained = params.unbind(-1)
        torch.add(unconstrained, self.offset, out=self.scale)
        torch._C._nn.softplus(self.scale, 1.0, 20.0, out=self.scale)  # F.softplus, in place
        torch.sub(y, shift, out=out).div_(self.scale.add_(self.min_scale))


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


class RationalQuadraticSpline(Transformer):
    """Monotone rational-quadratic spline on ``[-tail_bound, tail_bound]``, identity outside
    (Durkan et al., 2019); the transformer of neural spline flows.

    Per feature it takes ``num_bins`` widths, ``num_bins`` heights and ``num_bins - 1`` interior
    derivatives, all unconstrained (``3 * num_bins - 1`` parameters); the maths are the pure
    functions of ``flowkit.bijectors.splines``. All-zero parameters give the identity.

    Args:
        num_bins: number of spline bins.
        tail_bound: ``B``; the spline acts on ``[-B, B]`` and is the identity outside.
        min_bin_width: smallest bin width, as a fraction of ``2 * B``.
        min_bin_height: smallest bin height, as a fraction of ``2 * B``.
        min_derivative: smallest derivative at an interior knot.

    Example:
        >>> import torch
        >>> spline = RationalQuadraticSpline(num_bins=4, tail_bound=2.0)
        >>> x = torch.tensor([[-3.0, 0.5, 1.9]])
        >>> y, log_det = spline.forward(x, torch.randn(1, 3, spline.num_params))
        >>> torch.allclose(spline.inverse(y, torch.zeros(1, 3, 11))[0], y)  # zero params: identity
        True
    """

    compiles_well = True

    def __init__(
        self,
        num_bins: int = 8,
        tail_bound: float = 3.0,
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ) -> None:
        if num_bins < 1:
            raise ValueError(f"num_bins must be at least 1, got {num_bins}")
        if tail_bound <= 0:
            raise ValueError(f"tail_bound must be positive, got {tail_bound}")
        for name, value in [("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)]:
            # A zero floor lets a saturated softmax produce an empty bin (a division by zero).
            if not 0 < value * num_bins <= 1:
                raise ValueError(f"{name} must be in (0, 1 / num_bins], got {value}")
        if not 0 < min_derivative < 1:
            raise ValueError(f"min_derivative must be in (0, 1), got {min_derivative}")
        self.num_bins = num_bins
        self.tail_bound = float(tail_bound)
        self.min_bin_width = min_bin_width
        self.min_bin_height = min_bin_height
        self.min_derivative = min_derivative
        self.num_params = 3 * num_bins - 1

    def _knots(self, params: Tensor) -> splines.Knots:
        # Bins first (a view): see the layout note in splines.py. Conditioners emit parameters
        # parameter-major, so after this move each parameter is a contiguous batch-sized block.
        return splines.knots_from_params(
            params.movedim(-1, 0), self.tail_bound, self.min_bin_width, self.min_bin_height, self.min_derivative
        )

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return splines.spline_forward(x, self._knots(params), self.tail_bound)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return splines.spline_inverse(y, self._knots(params), self.tail_bound)

    def inverse_writer(self, like: Tensor) -> Writer:
        # About half the time of ``inverse`` on a 512-row step, and the same value bit for bit.
        return SplineInverseWriter(self.num_bins, self.tail_bound, self.min_bin_width, self.min_bin_height,
                                   self.min_derivative, like)

    def config(self) -> dict:
        return {
            "num_bins": self.num_bins,
            "tail_bound": self.tail_bound,
            "min_bin_width": self.min_bin_width,
            "min_bin_height": self.min_bin_height,
            "min_derivative": self.min_derivative,
        }
