"""Monotone rational-quadratic splines (Durkan et al., 2019, "Neural Spline Flows") as pure functions.

The spline maps ``[-B, B]`` onto itself through ``num_bins`` bins; outside that interval it is the
identity (linear tails), and its derivative at both bounds is fixed to 1, so the whole map is C1.
Everything here is a function of tensors: the transformer in ``transformers.py`` and any other
caller share one implementation of each step:

1. ``knots_from_unconstrained`` turns unconstrained parameters into a knot table;
2. ``find_bin`` locates each input's bin (written once, used by both directions);
3. ``spline_forward`` / ``spline_inverse`` evaluate the map and its log-derivative, the inverse
   through the numerically stable root of a quadratic.

A finite input never gives NaN or Inf, in the output, the log-det or the gradients: on a knot, at
``+/-B`` exactly, at ``1e6``, in float32 and float64. Each clamp below says which hazard it removes.
For speed, there are no Python loops over bins and no boolean-mask indexing (shapes stay static for
``torch.compile``), and the six bin quantities are fetched with a single ``gather``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Rows of the knot table returned by ``knots_from_unconstrained``.
KNOT_X, KNOT_Y, KNOT_DERIVATIVE = 0, 1, 2


def derivative_offset(min_derivative: float) -> float:
    """The shift ``c`` such that ``min_derivative + softplus(0 + c) == 1``.

    Adding it to the unconstrained derivatives makes all-zero parameters give unit derivatives,
    which together with uniform bins is the identity map.
    """
    return math.log(math.expm1(1.0 - min_derivative))


def split_params(params: Tensor, num_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split ``(..., 3 * num_bins - 1)`` parameters into widths, heights and interior derivatives."""
    return params[..., :num_bins], params[..., num_bins : 2 * num_bins], params[..., 2 * num_bins :]


def _softmax(unnormalized: Tensor) -> Tensor:
    """Softmax over the last (bins) dimension."""
    if unnormalized.device.type == "cpu":
        # aten's CPU softmax kernel is tuned for long rows: over a handful of bins it is ~10x
        # slower than these elementwise ops (8.8 ms vs 0.8 ms for 4096 x 8 x 8, one thread). The
        # shift is detached because the softmax does not depend on it (less backward work).
        exponentials = torch.exp(unnormalized - unnormalized.amax(-1, keepdim=True).detach())
        return exponentials / exponentials.sum(-1, keepdim=True)
    return F.softmax(unnormalized, dim=-1)


def _knot_table(
    unnormalized_sizes: Tensor,
    unnormalized_derivatives: Tensor,
    tail_bound: float,
    min_bin_width: float,
    min_bin_height: float,
    min_derivative: float,
) -> Tensor:
    """The knot table from widths and heights stacked as ``(..., 2, num_bins)``.

    Widths and heights share one softmax and one cumsum, and the table is assembled with two
    concatenations: on CPU a concatenation along a short last dimension costs as much as the
    spline arithmetic itself, so their number matters.
    """
    num_bins = unnormalized_sizes.shape[-1]
    # Small constants are made with fills on the parameters' device, not from Python lists: a
    # list becomes a blocking host-to-device copy on GPU, and cannot be captured in a CUDA graph.
    floor = unnormalized_sizes.new_full((2, 1), min_bin_width)
    floor[1] = min_bin_height
    sizes = floor + (1.0 - floor * num_bins) * _softmax(unnormalized_sizes)
    interior_xy = 2.0 * tail_bound * torch.cumsum(sizes, dim=-1)[..., :-1] - tail_bound
    interior_derivatives = min_derivative + F.softplus(unnormalized_derivatives + derivative_offset(min_derivative))
    interior = torch.cat([interior_xy, interior_derivatives.unsqueeze(-2)], dim=-2)
    # The end knots are written exactly (not taken from the cumsum, whose last entry is 1 only up
    # to rounding) so that inputs at +/-B land on the spline's own end points, and the end
    # derivatives are exactly 1 so that the spline meets the identity tails with a C1 join.
    ends = interior.new_full((2, 3, 1), tail_bound)
    ends[0] = -tail_bound
    ends[:, KNOT_DERIVATIVE] = 1.0
    shape = (*interior.shape[:-1], 1)
    return torch.cat([ends[0].expand(shape), interior, ends[1].expand(shape)], dim=-1)


def knots_from_unconstrained(
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    tail_bound: float,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> Tensor:
    """Normalise unconstrained parameters into a knot table of shape ``(..., 3, num_bins + 1)``.

    Widths and heights go through a softmax, floored at ``min_bin_width`` / ``min_bin_height`` of
    the interval; the ``num_bins - 1`` interior derivatives are
    ``min_derivative + softplus(u + derivative_offset(min_derivative))`` and the two boundary
    derivatives are exactly 1. All-zero parameters therefore give the identity.

    Args:
        unnormalized_widths: ``(..., num_bins)``.
        unnormalized_heights: ``(..., num_bins)``.
        unnormalized_derivatives: ``(..., num_bins - 1)``.
        tail_bound: ``B``; the spline acts on ``[-B, B]``.
        min_bin_width: smallest bin width, as a fraction of ``2 * B``.
        min_bin_height: smallest bin height, as a fraction of ``2 * B``.
        min_derivative: smallest derivative at an interior knot.

    Returns:
        Rows ``KNOT_X``, ``KNOT_Y``, ``KNOT_DERIVATIVE``: knot abscissae, ordinates, derivatives.

    Example:
        >>> import torch
        >>> zeros = torch.zeros(4, dtype=torch.float64)
        >>> table = knots_from_unconstrained(zeros, zeros, zeros[:3], tail_bound=2.0)
        >>> table[KNOT_X].tolist(), table[KNOT_DERIVATIVE].tolist()
        ([-2.0, -1.0, 0.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    """
    sizes = torch.stack([unnormalized_widths, unnormalized_heights], dim=-2)
    return _knot_table(
        sizes, unnormalized_derivatives, tail_bound, min_bin_width, min_bin_height, min_derivative
    )


def knots_from_params(
    params: Tensor,
    tail_bound: float,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> Tensor:
    """``knots_from_unconstrained`` on the packed ``(..., 3 * num_bins - 1)`` layout
    (widths, then heights, then interior derivatives)."""
    num_bins = (params.shape[-1] + 1) // 3
    # Widths and heights are adjacent in the layout: a view, not a copy, feeds both.
    sizes = params[..., : 2 * num_bins].unflatten(-1, (2, num_bins))
    return _knot_table(
        sizes, params[..., 2 * num_bins :], tail_bound, min_bin_width, min_bin_height, min_derivative
    )


def find_bin(knots: Tensor, values: Tensor) -> Tensor:
    """Index ``k`` in ``[0, num_bins - 1]`` of the bin ``knots[k] <= value < knots[k + 1]``.

    Counting the interior knots at or below the value is a searchsorted that needs no clamp:
    values below the first knot get bin 0 and values at or above the last get the last bin.
    For the handful of bins a spline has, the comparison is one fused elementwise kernel.

    Args:
        knots: ``(..., num_bins + 1)`` increasing knot positions.
        values: ``(...)``.

    Returns:
        ``(..., 1)`` int64 bin indices.
    """
    return (values[..., None] >= knots[..., 1:-1]).sum(dim=-1, keepdim=True)


def _bin_parameters(knots: Tensor, bin_index: Tensor) -> tuple[Tensor, ...]:
    """Left and right knot x, y and derivative of each input's bin, in one gather:
    ``(x0, x1, y0, y1, d0, d1)``."""
    index = (bin_index + torch.arange(2, device=bin_index.device)).unsqueeze(-2)
    ends = knots.gather(-1, index.expand(*knots.shape[:-1], 2))
    # One unbind (its backward is one stack) rather than six selects (six zero-filled gradients).
    return ends.flatten(-2).unbind(-1)


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
    with two logarithms instead of three.
    """
    one_minus = 1 - theta
    theta_squared, cross, one_minus_squared = theta.square(), theta * one_minus, one_minus.square()
    denominator = slope * (theta_squared + one_minus_squared) + (d0 + d1) * cross
    numerator = d1 * theta_squared + 2 * slope * cross + d0 * one_minus_squared
    log_derivative = torch.log(numerator) + 2 * torch.log(slope / denominator)
    return slope * theta_squared + d0 * cross, denominator, log_derivative


def spline_forward(inputs: Tensor, knots: Tensor, tail_bound: float) -> tuple[Tensor, Tensor]:
    """Evaluate the spline with linear tails: ``(outputs, elementwise log|dy/dx|)``.

    Args:
        inputs: ``(...)`` values anywhere on the real line.
        knots: ``(..., 3, num_bins + 1)`` table from ``knots_from_unconstrained``.
        tail_bound: ``B``, the same as used to build ``knots``.

    Example:
        >>> import torch
        >>> table = knots_from_unconstrained(torch.randn(4), torch.randn(4), torch.randn(3), 2.0)
        >>> y, log_det = spline_forward(torch.tensor(5.0), table, 2.0)  # in the tail
        >>> y.item(), log_det.item()
        (5.0, 0.0)
    """
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    # Tail inputs are clamped onto the interval so that the spline arithmetic (computed for every
    # element, to keep shapes static) stays finite there; torch.where then discards those values,
    # and because they are finite their zero-weighted gradients are zero rather than NaN.
    x = inputs.clamp(-tail_bound, tail_bound)
    x0, x1, y0, y1, d0, d1 = _bin_parameters(knots, find_bin(knots[..., KNOT_X, :], x))
    width, height = x1 - x0, y1 - y0
    slope = height / width
    # x0 <= x <= x1 and width = x1 - x0 rounded the same way, so theta is in [0, 1] already;
    # the guard is for compiled kernels that may reassociate (e.g. multiply by 1 / width). It
    # keeps the rational quadratic in its monotone range and theta * (1 - theta) non-negative.
    theta = _clamp_rounding((x - x0) / width, 0.0, 1.0)
    rise, denominator, log_det = _rational_quadratic(theta, slope, d0, d1)
    # Near a knot, y0 + height * ratio can round one ulp past the bin's end and overtake the next
    # bin's first value; keeping each output inside its bin keeps the map monotone across knots.
    outputs = _clamp_rounding(y0 + height * rise / denominator, y0, y1)
    return torch.where(inside, outputs, inputs), torch.where(inside, log_det, torch.zeros_like(log_det))


def spline_inverse(inputs: Tensor, knots: Tensor, tail_bound: float) -> tuple[Tensor, Tensor]:
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
        inputs: ``(...)`` values anywhere on the real line.
        knots: ``(..., 3, num_bins + 1)`` table from ``knots_from_unconstrained``.
        tail_bound: ``B``, the same as used to build ``knots``.

    Example:
        >>> import torch
        >>> table = knots_from_unconstrained(torch.randn(4), torch.randn(4), torch.randn(3), 2.0)
        >>> x = torch.tensor([-1.5, 0.3, 1.9])
        >>> y, log_det = spline_forward(x, table.expand(3, 3, 5), 2.0)
        >>> torch.allclose(spline_inverse(y, table.expand(3, 3, 5), 2.0)[0], x)
        True
    """
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    # Same reason as in spline_forward: finite arithmetic on tail elements, discarded by where.
    y = inputs.clamp(-tail_bound, tail_bound)
    x0, x1, y0, y1, d0, d1 = _bin_parameters(knots, find_bin(knots[..., KNOT_Y, :], y))
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
    a = v * (slope - d0) + u * (d1 - slope)
    b = v * d0 + u * (2 * slope - d1)
    root = torch.sqrt((v * d0 - u * d1).square() + 4 * u * v * slope.square())
    # Each branch gets a denominator that is positive even where torch.where discards it, so no
    # Inf reaches the gradient: root > 0 always, and a > 0 wherever b < 0.
    positive_b = b >= 0
    theta_positive_b = 2 * slope * u / (b.clamp(min=0) + root)
    theta_negative_b = (root - b) / (2 * torch.where(positive_b, torch.ones_like(a), a))
    # The root lies in [0, 1] in exact arithmetic; the guard removes rounding overshoot so that
    # the output stays inside the bin and the log-derivative below is evaluated where it is valid.
    theta = _clamp_rounding(torch.where(positive_b, theta_positive_b, theta_negative_b), 0.0, 1.0)
    # As in spline_forward: x0 + theta * width may round past x1; stay inside the bin.
    outputs = _clamp_rounding(x0 + theta * width, x0, x1)
    log_det = -_rational_quadratic(theta, slope, d0, d1)[2]
    return torch.where(inside, outputs, inputs), torch.where(inside, log_det, torch.zeros_like(log_det))


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
    """Normalise the parameters and apply the spline (or its inverse) in one call.

    Args:
        inputs: ``(...)``.
        unnormalized_widths: ``(..., num_bins)``.
        unnormalized_heights: ``(..., num_bins)``.
        unnormalized_derivatives: ``(..., num_bins - 1)`` interior derivatives.
        inverse: apply the inverse map instead.
        tail_bound: the spline acts on ``[-tail_bound, tail_bound]``, identity outside.
        min_bin_width: see ``knots_from_unconstrained``.
        min_bin_height: see ``knots_from_unconstrained``.
        min_derivative: see ``knots_from_unconstrained``.

    Returns:
        ``(outputs, elementwise log-det of the map computed)``.

    Example:
        >>> import torch
        >>> x = torch.linspace(-4, 4, 5)
        >>> zeros = torch.zeros(5, 8)
        >>> y, log_det = rational_quadratic_spline(x, zeros, zeros, zeros[:, :7])
        >>> torch.allclose(y, x), bool(log_det.abs().max() < 1e-6)  # float32 rounding of the 1s
        (True, True)
    """
    knots = knots_from_unconstrained(
        unnormalized_widths, unnormalized_heights, unnormalized_derivatives,
        tail_bound, min_bin_width, min_bin_height, min_derivative,
    )
    method = spline_inverse if inverse else spline_forward
    return method(inputs, knots, tail_bound)
