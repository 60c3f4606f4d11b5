"""Monotone rational-quadratic splines (Durkan et al., 2019, "Neural Spline Flows") as pure functions.

The spline maps ``[-B, B]`` onto itself through ``num_bins`` bins; outside that interval it is the
identity (linear tails), and its derivative at both bounds is fixed to 1, so the whole map is C1.
Everything here is a function of tensors: the transformer in ``transformers.py`` and any other
caller share one implementation of each step:

1. ``knots_from_params`` turns unconstrained parameters into knots;
2. ``find_bin`` locates each input's bin (written once, used by both directions);
3. ``spline_forward`` / ``spline_inverse`` evaluate the map and its log-derivative, the inverse
   through the numerically stable root of a quadratic.

**Layout: bins first.** Parameters are ``(3 * num_bins - 1, *batch)`` and knots
``(num_bins + 1, *batch)``, so every reduction over bins (the softmax, the cumulative sum, the bin
search) runs across whole batch-sized rows, which vectorises; with bins as the innermost dimension
each of those ops strides through runs of 8 values and costs several times more on CPU. The
conditioners lay their outputs out parameter-major so that this needs no copy, and
``rational_quadratic_spline`` offers nflows' bins-last signature.

A finite input never gives NaN or Inf, in the output, the log-det or the gradients: on a knot, at
``+/-B`` exactly, at ``1e6``, in float32 and float64. Each clamp below says which hazard it removes.
There are no Python loops over bins and no boolean-mask indexing (shapes stay static for
``torch.compile``), and few, large ops: on small batches (one feature of an autoregressive
inverse) the cost is the number of ops, not the arithmetic.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkit.bijectors.scalars import scalar


class Knots(NamedTuple):
    """The knots of a batch of splines, bins first.

    Attributes:
        positions: ``(2, num_bins + 1, *batch)``; ``positions[0]`` the abscissae (``x``),
            ``positions[1]`` the ordinates (``y``), from ``-B`` to ``B`` exactly.
        derivatives: ``(num_bins + 1, *batch)``, exactly 1 at both ends.
    """

    positions: Tensor
    derivatives: Tensor

    @property
    def x(self) -> Tensor:
        return self.positions[0]

    @property
    def y(self) -> Tensor:
        return self.positions[1]


def derivative_offset(min_derivative: float) -> float:
    """The shift ``c`` such that ``min_derivative + softplus(0 + c) == 1``.

    Adding it to the unconstrained derivatives makes all-zero parameters give unit derivatives,
    which together with uniform bins is the identity map.
    """
    return math.log(math.expm1(1.0 - min_derivative))


def _pad_first(tensor: Tensor, dim: int, before: int, after: int, value: float = 0.0) -> Tensor:
    """Pad dimension ``dim`` (counted from the front) with ``value``."""
    return F.pad(tensor, (0, 0) * (tensor.dim() - dim - 1) + (before, after), value=value)


def knots_from_params(
    params: Tensor,
    tail_bound: float,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> Knots:
    """Normalise unconstrained parameters ``(3 * num_bins - 1, *batch)`` into knots.

    The layout is widths (``num_bins``), then heights (``num_bins``), then the ``num_bins - 1``
    interior derivatives. Widths and heights go through a softmax, floored at ``min_bin_width`` /
    ``min_bin_height`` of the interval; the interior derivatives are
    ``min_derivative + softplus(u + derivative_offset(min_derivative))`` and the boundary ones are
    exactly 1. All-zero parameters therefore give the identity.

    Args:
        params: ``(3 * num_bins - 1, *batch)`` unconstrained parameters.
        tail_bound: ``B``; the spline acts on ``[-B, B]``.
        min_bin_width: smallest bin width, as a fraction of ``2 * B``.
        min_bin_height: smallest bin height, as a fraction of ``2 * B``.
        min_derivative: smallest derivative at an interior knot.

    Example:
        >>> import torch
        >>> knots = knots_from_params(torch.zeros(11, dtype=torch.float64), tail_bound=2.0)
        >>> knots.x.tolist(), knots.derivatives.tolist()
        ([-2.0, -1.0, 0.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    """
    num_bins = (params.shape[0] + 1) // 3
    batch_dims = params.dim() - 1
    sizes = params[: 2 * num_bins].unflatten(0, (2, num_bins))
    # The softmax is folded into the cumulative sum: knot k sits at the fraction
    # floor * k + (1 - floor * K) * cumsum(exp)_k / sum(exp) of the interval. The shift by the
    # maximum keeps exp finite; it is detached because the softmax does not depend on it.
    exponentials = torch.exp(sizes - sizes.amax(1, keepdim=True).detach())
    cumulative = torch.cumsum(_pad_first(exponentials, 1, 1, 0), 1)  # (2, K + 1, *batch), from 0
    constant_shape = (-1,) + (1,) * batch_dims
    if min_bin_width == min_bin_height:  # the usual case: one linspace, the span a Python number
        step = 2.0 * tail_bound * min_bin_width
        offsets = torch.linspace(-tail_bound, num_bins * step - tail_bound, num_bins + 1, dtype=params.dtype,
                                 device=params.device).view(constant_shape)
        positions = torch.addcmul(offsets, cumulative, cumulative[:, -1:].reciprocal(),
                                  value=2.0 * tail_bound * (1.0 - num_bins * min_bin_width))
    else:
        # One floor per row (widths, heights), made with fills on the parameters' device: a Python
        # list would be a blocking host-to-device copy on GPU and not capturable in a CUDA graph.
        floor = params.new_full((2, 1) + (1,) * batch_dims, min_bin_width)
        floor[1] = min_bin_height
        index = torch.arange(num_bins + 1, dtype=params.dtype, device=params.device).view(constant_shape)
        span = 2.0 * tail_bound * (1.0 - floor * num_bins)
        offsets = index * (2.0 * tail_bound * floor) - tail_bound
        positions = torch.addcmul(offsets, cumulative, span / cumulative[:, -1:])
    # Knot 0 is exactly -B already (a zero cumulative sum); the last knot equals B only up to
    # rounding, and inputs at +B must land on the spline's own end point.
    positions[:, -1] = tail_bound
    offset = scalar(derivative_offset(min_derivative), params)
    interior = F.softplus(params[2 * num_bins :] + offset) + scalar(min_derivative, params)
    # End derivatives exactly 1, so the spline meets the identity tails with a C1 join.
    return Knots(positions, _pad_first(interior, 0, 1, 1, value=1.0))


def knots_from_unconstrained(
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    tail_bound: float,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> Knots:
    """``knots_from_params`` for bins-last parameters as nflows takes them: widths and heights
    ``(..., num_bins)``, interior derivatives ``(..., num_bins - 1)``. The knots are bins first.

    Example:
        >>> import torch
        >>> zeros = torch.zeros(4, dtype=torch.float64)
        >>> knots_from_unconstrained(zeros, zeros, zeros[:3], tail_bound=2.0).y.tolist()
        [-2.0, -1.0, 0.0, 1.0, 2.0]
    """
    params = torch.cat([unnormalized_widths, unnormalized_heights, unnormalized_derivatives], -1)
    return knots_from_params(params.movedim(-1, 0), tail_bound, min_bin_width, min_bin_height, min_derivative)


def find_bin(knots: Tensor, values: Tensor) -> Tensor:
    """Index ``k`` in ``[0, num_bins - 1]`` of the bin ``knots[k] <= value < knots[k + 1]``.

    Counting the interior knots at or below the value is a searchsorted that needs no clamp:
    values below the first knot get bin 0 and values at or above the last get the last bin.
    For the handful of bins a spline has, it is one comparison and one sum over rows.

    Args:
        knots: ``(num_bins + 1, *batch)`` increasing knot positions.
        values: ``(*batch)``.

    Returns:
        ``(*batch)`` int64 bin indices.
    """
    return (values >= knots[1:-1]).sum(0)


def _bin_parameters(knots: Knots, bin_index: Tensor) -> tuple[Tensor, ...]:
    """Left and right knot x, y and derivative of each input's bin: ``(x0, x1, y0, y1, d0, d1)``."""
    ends = bin_index + torch.arange(2, device=bin_index.device).view((2,) + (1,) * bin_index.dim())
    # gather does not broadcast: knots shared across the batch are expanded (a view, no copy).
    positions = knots.positions.expand(knots.positions.shape[:2] + bin_index.shape)
    derivatives = knots.derivatives.expand(knots.derivatives.shape[:1] + bin_index.shape)
    positions = positions.gather(1, ends.expand((2,) + ends.shape))
    derivatives = derivatives.gather(0, ends)
    return (*positions.flatten(0, 1).unbind(0), *derivatives.unbind(0))


def _clamp_rounding(value: Tensor, low: Tensor | float, high: Tensor | float) -> Tensor:
    """Clamp a value that can leave ``[low, high]`` only by rounding, keeping the gradient of the
    unclamped expression. A plain clamp has zero gradient outside its range, so an overshoot of
    one ulp at a knot or at the bound would silently zero the derivative there. Without autograd
    (sampling) the plain clamp is the same value in one op instead of three."""
    if not (torch.is_grad_enabled() and value.requires_grad):
        return value.clamp(low, high)
    return value + (value.clamp(low, high) - value).detach()


def _rational_quadratic(theta: Tensor, slope: Tensor, d0: Tensor, d1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Terms of the rational quadratic at relative position ``theta`` in its bin, shared by both
    directions and computed once: ``(rise, denominator, log dy/dx)`` with
    ``y = y0 + height * rise / denominator``.

    The denominator ``s + (d0 + d1 - 2s) theta (1 - theta)`` is written as a sum of non-negative
    terms, so it stays strictly positive with no cancellation however the bin is shaped. The
    log-derivative ``log(s^2 num / den^2)`` is taken as ``log(num) + 2 log(s / den)``: since
    ``den >= s / 2`` the ratio lies in (0, 2] and cannot overflow even for huge derivatives,
    with two logarithms instead of three. Fused multiply-adds keep the op count low.
    """
    one_minus = scalar(1.0, theta) - theta
    theta_squared, cross, one_minus_squared = theta.square(), theta * one_minus, one_minus.square()
    denominator = torch.addcmul(slope * (theta_squared + one_minus_squared), d0 + d1, cross)
    numerator = torch.addcmul(torch.addcmul(d1 * theta_squared, d0, one_minus_squared), slope, cross, value=2.0)
    log_derivative = torch.add(torch.log(numerator), torch.log(slope / denominator), alpha=2.0)
    return torch.addcmul(slope * theta_squared, d0, cross), denominator, log_derivative


def spline_forward(inputs: Tensor, knots: Knots, tail_bound: float) -> tuple[Tensor, Tensor]:
    """Evaluate the spline with linear tails: ``(outputs, elementwise log|dy/dx|)``.

    Args:
        inputs: ``(*batch)`` values anywhere on the real line.
        knots: from ``knots_from_params`` with the same ``*batch`` (or broadcastable to it).
        tail_bound: ``B``, the same as used to build ``knots``.

    Example:
        >>> import torch
        >>> knots = knots_from_params(torch.randn(11), 2.0)
        >>> y, log_det = spline_forward(torch.tensor(5.0), knots, 2.0)  # in the tail
        >>> y.item(), log_det.item()
        (5.0, 0.0)
    """
    inside = inputs.abs() <= scalar(tail_bound, inputs)
    # Tail inputs are clamped onto the interval so that the spline arithmetic (computed for every
    # element, to keep shapes static) stays finite there; torch.where then discards those values,
    # and because they are finite their zero-weighted gradients are zero rather than NaN.
    x = inputs.clamp(-tail_bound, tail_bound)
    x0, x1, y0, y1, d0, d1 = _bin_parameters(knots, find_bin(knots.x, x))
    width, height = x1 - x0, y1 - y0
    slope = height / width
    # x0 <= x <= x1 and width = x1 - x0 rounded the same way, so theta is in [0, 1] already;
    # the guard is for compiled kernels that may reassociate (e.g. multiply by 1 / width). It
    # keeps the rational quadratic in its monotone range and theta * (1 - theta) non-negative.
    theta = _clamp_rounding((x - x0) / width, 0.0, 1.0)
    rise, denominator, log_det = _rational_quadratic(theta, slope, d0, d1)
    # Near a knot, y0 + height * ratio can round one ulp past the bin's end and overtake the next
    # bin's first value; keeping each output inside its bin keeps the map monotone across knots.
    outputs = _clamp_rounding(torch.addcmul(y0, height, rise / denominator), y0, y1)
    return torch.where(inside, outputs, inputs), torch.where(inside, log_det, scalar(0.0, log_det))


def spline_inverse(inputs: Tensor, knots: Knots, tail_bound: float) -> tuple[Tensor, Tensor]:
    """Invert the spline with linear tails: ``(outputs, elementwise log|dx/dy|)``.

    Inside a bin, ``theta`` solves ``a theta^2 + b theta + c = 0`` with ``c <= 0``. Two rewrites
    keep this accurate in float32 with extreme parameters:

    * the discriminant ``b^2 - 4ac`` is computed as the sum of squares
      ``h^2 [(v d0 - u d1)^2 + 4 u v s^2]`` (``u`` and ``v = 1 - u`` the relative height
      from the bottom and the top of the bin, ``s`` its slope): as a difference it cancels to
      0 near a knot with a small derivative, where the square root's gradient is infinite;
    * the root is ``2c / (-b - sqrt(disc))`` where ``b >= 0`` (the usual ``(-b + sqrt(disc)) / 2a``
      cancels when ``a`` is small, e.g. at the identity) and ``(sqrt(disc) - b) / 2a`` where
      ``b < 0`` (there the first form cancels instead, and ``a > s > 0``).

    Args:
        inputs: ``(*batch)`` values anywhere on the real line.
        knots: from ``knots_from_params`` with the same ``*batch`` (or broadcastable to it).
        tail_bound: ``B``, the same as used to build ``knots``.

    Example:
        >>> import torch
        >>> knots = knots_from_params(torch.linspace(-1, 1, 11)[:, None], 2.0)  # one spline, broadcast
        >>> x = torch.tensor([-1.5, 0.3, 1.9])
        >>> y, log_det = spline_forward(x, knots, 2.0)
        >>> torch.allclose(spline_inverse(y, knots, 2.0)[0], x)
        True
    """
    inside = inputs.abs() <= scalar(tail_bound, inputs)
    # Same reason as in spline_forward: finite arithmetic on tail elements, discarded by where.
    y = inputs.clamp(-tail_bound, tail_bound)
    x0, x1, y0, y1, d0, d1 = _bin_parameters(knots, find_bin(knots.y, y))
    width, height = x1 - x0, y1 - y0
    slope = height / width
    # Relative height from both ends of the bin, each computed directly: forming 1 - u instead
    # would carry u's rounding error, which the coefficients below multiply by derivatives up to
    # ~1e3 (a cancellation that cost 1e3 ulps of theta). The bin search gives y0 <= y <= y1, so
    # both lie in [0, 1] (rounding is monotone); any overshoot from reassociation only moves
    # theta, which is guarded below.
    u = (y - y0) / height
    v = (y1 - y) / height
    # The quadratic divided by h, each coefficient a sum without large cancelling terms:
    # a/h = v (s - d0) + u (d1 - s), b/h = v d0 + u (2s - d1), c/h = -s u.
    a = torch.addcmul(v * (slope - d0), u, d1 - slope)
    b = torch.addcmul(v * d0, u, slope + slope - d1)
    root = torch.sqrt(torch.addcmul((v * d0 - u * d1).square(), u * v, slope.square(), value=4.0))
    # Each branch gets a denominator that is positive even where torch.where discards it, so no
    # Inf reaches the gradient: root > 0 always, and a > 0 wherever b < 0.
    positive_b = b >= scalar(0.0, b)
    theta_positive_b = (slope + slope) * u / (b.clamp(min=0) + root)
    theta_negative_b = (root - b) / torch.where(positive_b, scalar(2.0, a), a + a)
    # The root lies in [0, 1] in exact arithmetic; the guard removes rounding overshoot so that
    # the output stays inside the bin and the log-derivative below is evaluated where it is valid.
    theta = _clamp_rounding(torch.where(positive_b, theta_positive_b, theta_negative_b), 0.0, 1.0)
    # As in spline_forward: x0 + theta * width may round past x1; stay inside the bin.
    outputs = _clamp_rounding(torch.addcmul(x0, theta, width), x0, x1)
    log_det = _rational_quadratic(theta, slope, d0, d1)[2].neg()
    return torch.where(inside, outputs, inputs), torch.where(inside, log_det, scalar(0.0, log_det))


def rational_quadratic_spline(
    inputs: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    inverse: bool = False,
    tail_bound: float = 3.0,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Normalise bins-last parameters (nflows' signature) and apply the spline or its inverse.

    Args:
        inputs: ``(...)``.
        unnormalized_widths: ``(..., num_bins)``.
        unnormalized_heights: ``(..., num_bins)``.
        unnormalized_derivatives: ``(..., num_bins - 1)`` interior derivatives.
        inverse: apply the inverse map instead.
        tail_bound: the spline acts on ``[-tail_bound, tail_bound]``, identity outside.
        min_bin_width: see ``knots_from_params``.
        min_bin_height: see ``knots_from_params``.
        min_derivative: see ``knots_from_params``.

    Returns:
        ``(outputs, elementwise log-det of the map computed)``.

    Example:
        >>> import torch
        >>> x = torch.linspace(-4, 4, 5)
        >>> zeros = torch.zeros(5, 8)
        >>> y, log_det = rational_quadratic_spline(x, zeros, zeros, zeros[:, :7])
        >>> torch.allclose(y, x, atol=1e-6), bool(log_det.abs().max() < 1e-6)  # float32 rounding
        (True, True)
    """
    knots = knots_from_unconstrained(
        unnormalized_widths, unnormalized_heights, unnormalized_derivatives,
        tail_bound, min_bin_width, min_bin_height, min_derivative,
    )
    method = spline_inverse if inverse else spline_forward
    return method(inputs, knots, tail_bound)
