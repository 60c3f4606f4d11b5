"""Property-based robustness of the spline functions: extreme inputs and extreme parameters, in
float32 and float64, never give NaN or Inf (outputs, log-dets, gradients), and the map stays
monotone and invertible to a tolerance suited to the dtype."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowkit.bijectors import splines

NUM_BINS = 5
TAIL_BOUND = 3.0
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]

extreme_parameter = st.sampled_from([0.0, 50.0, -50.0, 1e3, -1e3])
parameter = st.one_of(extreme_parameter, st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False))
parameter_vectors = st.lists(parameter, min_size=3 * NUM_BINS - 1, max_size=3 * NUM_BINS - 1)
ordinary_inputs = st.lists(st.floats(-10, 10, allow_nan=False, allow_infinity=False), max_size=20)
EXTREME_INPUTS = [0.0, 1e-30, -1e-30, 1e-6, TAIL_BOUND, -TAIL_BOUND, 1e6, -1e6, 1e30, -1e30]


def knots_of(params: list[float], dtype: torch.dtype, batch_dims: int = 1) -> splines.Knots:
    """The knots of one spline, with ``batch_dims`` size-1 batch dimensions to broadcast."""
    unconstrained = torch.tensor(params, dtype=dtype).view((-1,) + (1,) * batch_dims)
    return splines.knots_from_params(unconstrained, TAIL_BOUND)


def hard_inputs(knots: torch.Tensor, extra: list[float]) -> torch.Tensor:
    """The knots (x for forward, y for inverse), their float neighbours, the extreme values and the
    drawn ones, sorted."""
    knots = knots.flatten()
    neighbours = torch.cat([torch.nextafter(knots, knots - 1), torch.nextafter(knots, knots + 1)])
    values = torch.cat([knots, neighbours, torch.tensor(EXTREME_INPUTS + extra, dtype=knots.dtype)])
    return values.sort().values


def evaluate(params: list[float], inputs: torch.Tensor, dtype: torch.dtype, inverse: bool):
    """Spline outputs and log-dets, and the gradients of their sum w.r.t. inputs and parameters."""
    inputs = inputs.clone().requires_grad_(True)
    unconstrained = torch.tensor(params, dtype=dtype)[:, None].expand(-1, len(inputs)).clone().requires_grad_(True)
    knots = splines.knots_from_params(unconstrained, TAIL_BOUND)
    method = splines.spline_inverse if inverse else splines.spline_forward
    outputs, log_det = method(inputs, knots, TAIL_BOUND)
    input_grad, param_grad = torch.autograd.grad(outputs.sum() + log_det.sum(), [inputs, unconstrained])
    return outputs.detach(), log_det.detach(), input_grad, param_grad


def assert_finite(**tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        assert torch.isfinite(tensor).all(), f"{name} is not finite: {tensor}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@settings(max_examples=60, deadline=None)
@given(params=parameter_vectors, extra=ordinary_inputs)
def test_finite_and_monotone(dtype: torch.dtype, inverse: bool, params: list[float], extra: list[float]) -> None:
    knots = knots_of(params, dtype)
    inputs = hard_inputs(knots.y if inverse else knots.x, extra)
    outputs, log_det, input_grad, param_grad = evaluate(params, inputs, dtype, inverse)
    assert_finite(outputs=outputs, log_det=log_det, input_grad=input_grad, param_grad=param_grad)
    # Monotone up to rounding: where the spline is nearly flat, the rounding of y0 + h * ratio
    # (a few ulps of B) exceeds the true rise between neighbouring floats. Across knots the map
    # is exactly monotone (outputs are clamped to their bin), so a larger step back would be a bug.
    steps = outputs.diff()
    assert (steps >= -8 * torch.finfo(dtype).eps * TAIL_BOUND).all(), f"decreasing by {-steps.min()}"
    outside = inputs.abs() > TAIL_BOUND
    assert torch.equal(outputs[outside], inputs[outside]) and (log_det[outside] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(params=parameter_vectors, extra=ordinary_inputs)
def test_invertible(dtype: torch.dtype, params: list[float], extra: list[float]) -> None:
    knots = knots_of(params, dtype)
    x = hard_inputs(knots.x, extra)
    y, log_det = splines.spline_forward(x, knots, TAIL_BOUND)
    x_back, inverse_log_det = splines.spline_inverse(y, knots, TAIL_BOUND)
    assert_finite(y=y, log_det=log_det, x_back=x_back, inverse_log_det=inverse_log_det)
    eps = torch.finfo(dtype).eps
    # Rounding moves the inverse's root by an error in the quadratic, then amplified by dx/dy
    # (which reaches ~1e8 in the flattest bins that extreme parameters allow): y's own rounding
    # (about eps * B), and the coefficients' (about eps * width * (d0 + d1 + s) in units of x:
    # the coefficients are sums of terms as large as the bin's derivatives).
    bin_index = splines.find_bin(knots.x, x.clamp(-TAIL_BOUND, TAIL_BOUND))
    width = knots.x[1:, 0][bin_index] - knots.x[:-1, 0][bin_index]
    slope = (knots.y[1:, 0][bin_index] - knots.y[:-1, 0][bin_index]) / width
    steepness = knots.derivatives[:-1, 0][bin_index] + knots.derivatives[1:, 0][bin_index] + slope
    x_tolerance = 16 * eps * (TAIL_BOUND + x.abs() + torch.exp(-log_det) * (TAIL_BOUND + width * steepness))
    x_error = (x_back - x).abs()
    assert (x_error <= x_tolerance).all(), f"round trip error {(x_error - x_tolerance).max()} too large"
    # The inverse's log-det is minus the forward's at the point the inverse returned. Evaluating
    # the forward there moves theta by rounding of x_back, so allow the log-det's slope times that
    # move; the slope is taken on both sides (at a knot the log-det's slope jumps between bins).
    around = torch.stack([torch.nextafter(x_back, x_back - 1), x_back, torch.nextafter(x_back, x_back + 1)])
    around.requires_grad_(True)
    log_det_around = splines.spline_forward(around, knots_of(params, dtype, batch_dims=2), TAIL_BOUND)[1]
    (slope,) = torch.autograd.grad(log_det_around.sum(), around)
    log_det_back = log_det_around[1].detach()
    tolerance = 64 * eps * (1 + log_det_back.abs())
    tolerance = tolerance + 16 * eps * slope.abs().amax(0) * (x_back.abs() + TAIL_BOUND)
    error = (inverse_log_det + log_det_back).abs()
    assert (error <= tolerance).all(), f"log-det mismatch {error.max()}"
