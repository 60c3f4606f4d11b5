"""The spline inverse of one sampling step, written into preallocated buffers.

An autoregressive inverse at batch 512 inverts one feature at a time: a spline step is a few dozen
ops on rows of 512 values, so the cost is the ops' dispatch and the allocation of their results,
not their arithmetic (``splines.spline_inverse`` with its knots: about 100 ops and 0.9 ms a step
on one CPU core). ``SplineInverseWriter`` computes the same value with every intermediate in a
buffer made once per batch shape and every view taken once, so that a step is a list of ``out=``
and in-place calls, with no log-det.

It is a replica of ``splines.knots_from_params`` and ``splines.spline_inverse`` formula for
formula, in the same order, so its output equals theirs bit for bit (tested); a change to the
maths there must be made here too. It takes no gradient and no log-det: sampling computes the
log-dets of all features afterwards in one vectorised call, where they are needed at all.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowkit.bijectors.splines import derivative_offset


class SplineInverseWriter:
    """``writer(y, params, out)`` sets ``out = spline_inverse(y, knots_from_params(params.t()))[0]``.

    Args:
        num_bins, tail_bound, min_bin_width, min_bin_height, min_derivative: the spline's.
        like: a ``(batch,)`` tensor with the batch size, dtype and device to serve.

    Example:
        >>> import torch
        >>> from flowkit.bijectors.transformers import RationalQuadraticSpline
        >>> spline = RationalQuadraticSpline(num_bins=4)
        >>> y, params = torch.randn(5), torch.randn(5, spline.num_params)
        >>> out = torch.empty(5)
        >>> SplineInverseWriter(4, 3.0, 1e-3, 1e-3, 1e-3, y)(y, params, out)
        >>> torch.equal(out, spline.inverse(y, params)[0])
        True
    """

    def __init__(self, num_bins: int, tail_bound: float, min_bin_width: float, min_bin_height: float,
                 min_derivative: float, like: Tensor) -> None:
        bins, batch = num_bins, like.shape[0]
        self.bins, self.tail_bound = bins, tail_bound
        new = like.new_empty

        def constant(value: float) -> Tensor:
            return torch.full((), value, dtype=like.dtype, device=like.device)

        # The padded cumulative sum of knots_from_params: column 0 is 0 and stays 0 in the sum,
        # the exponentials are written after it. Then the knots (x and y, bins + 1 each).
        self.cumulative = torch.zeros(2, bins + 1, batch, dtype=like.dtype, device=like.device)
        self.exponentials, self.total = self.cumulative[:, 1:], self.cumulative[:, -1:]
        self.knots = new(2, bins + 1, batch)
        self.last_knots, self.interior_y_knots = self.knots[:, -1], self.knots[1, 1:-1]
        self.maximum, self.shifted, self.scale = new(2, 1, batch), new(2, bins, batch), new(2, 1, batch)
        if min_bin_width == min_bin_height:
            step = 2.0 * tail_bound * min_bin_width
            self.offsets = torch.linspace(-tail_bound, bins * step - tail_bound, bins + 1, dtype=like.dtype,
                                          device=like.device).view(-1, 1)
            self.span = None
            self.value = 2.0 * tail_bound * (1.0 - bins * min_bin_width)
        else:
            floor = torch.tensor([min_bin_width, min_bin_height], dtype=like.dtype, device=like.device).view(2, 1, 1)
            index = torch.arange(bins + 1, dtype=like.dtype, device=like.device).view(-1, 1)
            self.span = 2.0 * tail_bound * (1.0 - floor * bins)
            self.offsets = index * (2.0 * tail_bound * floor) - tail_bound
            self.value = 1.0
        # Derivatives at the knots; the end ones stay exactly 1.
        self.knot_derivatives = torch.ones(bins + 1, batch, dtype=like.dtype, device=like.device)
        self.interior = self.knot_derivatives[1:bins]
        self.offset, self.min_derivative = constant(derivative_offset(min_derivative)), constant(min_derivative)
        self.zero, self.bound = constant(0.0), constant(tail_bound)
        # The bin search and the gathers.
        self.clamped = new(batch)
        # Comparisons written as integers, so that their sum needs no conversion from bool.
        self.above = torch.empty(bins - 1, batch, dtype=torch.long, device=like.device)
        self.bin = torch.empty(batch, dtype=torch.long, device=like.device)
        self.ends = torch.empty(2, batch, dtype=torch.long, device=like.device)
        self.ends_both = self.ends.expand(2, 2, batch)
        self.pair = torch.arange(2, device=like.device).view(2, 1)
        self.gathered = new(2, 2, batch)  # (x or y, left or right end, batch)
        self.left, self.right = self.gathered.unbind(1)
        self.x0, self.y0, self.x1, self.y1 = (self.gathered[axis, end] for end in (0, 1) for axis in (0, 1))
        self.derivatives = new(2, batch)
        self.d0, self.d1 = self.derivatives.unbind(0)
        self.sizes = new(2, batch)  # width, height
        self.width, self.height = self.sizes.unbind(0)
        # The quadratic's terms, one buffer each.
        for name in ("slope", "u", "v", "a", "b", "vd0", "twice_slope", "work", "product", "root",
                     "denominator", "theta_positive", "theta", "magnitude"):
            setattr(self, name, new(batch))
        self.positive_b, self.inside = (torch.empty(batch, dtype=torch.bool, device=like.device) for _ in range(2))

    def __call__(self, y: Tensor, params: Tensor, out: Tensor) -> None:
        bins = self.bins
        rows = params.t()  # (num_params, batch): the conditioners' parameter-major layout
        sizes = rows[: 2 * bins].view(2, bins, -1)
        # knots_from_params: positions = offsets + cumsum(pad(exp(sizes - max))) * span / total.
        torch.amax(sizes, 1, keepdim=True, out=self.maximum)
        torch.sub(sizes, self.maximum, out=self.shifted)
        torch.exp(self.shifted, out=self.exponentials)
        self.cumulative.cumsum_(1)
        if self.span is None:
            torch.reciprocal(self.total, out=self.scale)
        else:
            torch.div(self.span, self.total, out=self.scale)
        torch.addcmul(self.offsets, self.cumulative, self.scale, value=self.value, out=self.knots)
        self.last_knots.fill_(self.tail_bound)
        torch.add(rows[2 * bins:], self.offset, out=self.interior)
        torch._C._nn.softplus(self.interior, 1.0, 20.0, out=self.interior)  # F.softplus, in place
        self.interior.add_(self.min_derivative)
        # The bin of each clamped input, and its two knots.
        torch.clamp(y, -self.tail_bound, self.tail_bound, out=self.clamped)
        torch.ge(self.clamped, self.interior_y_knots, out=self.above)
        torch.sum(self.above, 0, out=self.bin)
        torch.add(self.bin, self.pair, out=self.ends)
        torch.gather(self.knots, 1, self.ends_both, out=self.gathered)
        torch.gather(self.knot_derivatives, 0, self.ends, out=self.derivatives)
        self._invert_in_bin(y, out)

    def _invert_in_bin(self, y: Tensor, out: Tensor) -> None:
        """spline_inverse from its bin parameters on (see there for why each term is written so)."""
        x0, y0, x1, y1, d0, d1 = self.x0, self.y0, self.x1, self.y1, self.d0, self.d1
        slope, u, v, work, product = self.slope, self.u, self.v, self.work, self.product
        torch.sub(self.right, self.left, out=self.sizes)
        torch.div(self.height, self.width, out=slope)
        torch.sub(self.clamped, y0, out=u).div_(self.height)
        torch.sub(y1, self.clamped, out=v).div_(self.height)
        # a = v (s - d0) + u (d1 - s); b = v d0 + u (2s - d1)
        torch.sub(slope, d0, out=work).mul_(v)
        torch.sub(d1, slope, out=product)
        torch.addcmul(work, u, product, out=self.a)
        torch.mul(v, d0, out=self.vd0)
        torch.add(slope, slope, out=self.twice_slope)
        torch.sub(self.twice_slope, d1, out=work)
        torch.addcmul(self.vd0, u, work, out=self.b)
        # root = sqrt((v d0 - u d1)^2 + 4 u v s^2)
        torch.mul(u, d1, out=work)
        torch.sub(self.vd0, work, out=work)
        work.mul_(work)  # the square: x * x is what pow(x, 2) computes
        torch.mul(u, v, out=product)
        torch.mul(slope, slope, out=self.root)
        torch.addcmul(work, product, self.root, value=4.0, out=self.root).sqrt_()
        # theta = 2 s u / (max(b, 0) + root) where b >= 0, else (root - b) / (2a)
        torch.ge(self.b, self.zero, out=self.positive_b)
        torch.clamp(self.b, min=0, out=self.denominator).add_(self.root)
        torch.mul(self.twice_slope, u, out=self.theta_positive).div_(self.denominator)
        torch.add(self.a, self.a, out=self.denominator).masked_fill_(self.positive_b, 2.0)
        torch.sub(self.root, self.b, out=work).div_(self.denominator)
        torch.where(self.positive_b, self.theta_positive, work, out=self.theta).clamp_(0.0, 1.0)
        torch.addcmul(x0, self.theta, self.width, out=work)
        torch.clamp(work, x0, x1, out=work)
        torch.abs(y, out=self.magnitude)
        torch.le(self.magnitude, self.bound, out=self.inside)
        torch.where(self.inside, work, y, out=out)
