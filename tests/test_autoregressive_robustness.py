"""Property-based robustness of masked autoregressive layers (MAF and NSF-AR) with extreme inputs
(0, exactly +/-B, 1e6) and extreme conditioner outputs, in float32 and float64: outputs, log-dets
and gradients stay finite, every output is non-decreasing in its own input (up to rounding), and
the fast inverse (both the sampling workspace and the differentiable solve) returns the input."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowkit.bijectors.autoregressive import MaskedAutoregressive
from flowkit.bijectors.transformers import Affine, RationalQuadraticSpline

FEATURES = 3
TAIL_BOUND = 3.0
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
TRANSFORMERS = {"affine": Affine, "spline": lambda: RationalQuadraticSpline(num_bins=5, tail_bound=TAIL_BOUND)}

extreme_value = st.sampled_from([0.0, TAIL_BOUND, -TAIL_BOUND, 1e6, -1e6, 1e-30])
value = st.one_of(extreme_value, st.floats(-10, 10, allow_nan=False, allow_infinity=False))
rows = st.lists(st.lists(value, min_size=FEATURES, max_size=FEATURES), min_size=1, max_size=6)
# Standard deviation of the conditioner's output weights and biases: from near-identity layers to
# saturated ones (softmax bins of width min_bin_width, derivatives at their floor or ~1e3 and up).
output_scale = st.sampled_from([0.0, 0.1, 3.0, 50.0, 1e3])


def extreme_layers(test):
    """Run ``test(dtype, transformer, values, scale, seed)`` over both dtypes and transformers, on
    drawn rows and conditioner scales."""
    test = given(values=rows, scale=output_scale, seed=st.integers(0, 3))(test)
    test = settings(max_examples=40, deadline=None)(test)
    test = pytest.mark.parametrize("transformer", list(TRANSFORMERS))(test)
    return pytest.mark.parametrize("dtype", DTYPES)(test)


def make_layer(transformer: str, scale: float, seed: int, dtype: torch.dtype) -> MaskedAutoregressive:
    torch.manual_seed(seed)
    layer = MaskedAutoregressive(TRANSFORMERS[transformer](), FEATURES, hidden_features=[16, 16]).to(dtype)
    with torch.no_grad():
        layer.made.output.weight.normal_(0, scale)
        layer.made.output.bias.normal_(0, scale)
    return layer


def assert_finite(**tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        assert torch.isfinite(tensor).all(), f"{name} is not finite: {tensor}"


@extreme_layers
def test_finite_and_monotone(dtype: torch.dtype, transformer: str, values: list, scale: float, seed: int) -> None:
    layer = make_layer(transformer, scale, seed, dtype)
    x = torch.tensor(values, dtype=dtype, requires_grad=True)
    z, log_det = layer(x)
    assert_finite(z=z, log_det=log_det)
    gradients = torch.autograd.grad(z.sum() + log_det.sum(), [x, *layer.parameters()], retain_graph=True)
    assert_finite(**{f"gradient {index}": gradient for index, gradient in enumerate(gradients)})
    # Output i depends on x_j for j < i, and on x_i only through the monotone transformer: moving
    # x_i up (by one ulp, and by a small step) must not move z_i down beyond rounding (the spline
    # test's allowance). Values, not autograd signs: at a knot with derivatives ~1e3 the quotient
    # rule cancels in float32 and can give a slightly negative derivative of a monotone map.
    eps = torch.finfo(dtype).eps
    with torch.no_grad():
        for feature in range(FEATURES):
            for moved in (torch.nextafter(x[:, feature], torch.tensor(float("inf"), dtype=dtype)),
                          x[:, feature] + 1e-3 * (1 + x[:, feature].abs())):
                x_up = x.detach().clone()
                x_up[:, feature] = moved
                step = layer(x_up)[0][:, feature] - z[:, feature]
                allowance = 8 * eps * (TAIL_BOUND + z[:, feature].abs())
                assert (step >= -allowance).all(), f"z_{feature} decreases in x_{feature} by {-step.min()}"


def round_trip_tolerance(layer: MaskedAutoregressive, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """First-order bound on the round trip's rounding error, row by row. The forward rounds each
    z_i by about eps (1 + |z_i| + sum_j |dz_i/dx_j| |x_j|), and a spline's inverse solves a
    quadratic whose coefficients are as large as its derivatives (an error like a z error of
    eps * 2B * (max derivative + max slope)); the inverse maps an error dz back through the
    triangular Jacobian, so x moves by |J^-1| dz: a feature's own flat direction (dx_i/dz_i up to
    1 / min_derivative) and every earlier feature's error, carried into this feature's
    parameters, both count."""
    eps = torch.finfo(x.dtype).eps
    exact = copy.deepcopy(layer).double()  # the Jacobian itself in float64: no cancellation in it
    steepness = torch.zeros_like(x, dtype=torch.float64)
    if isinstance(layer.transformer, RationalQuadraticSpline):
        with torch.no_grad():
            knots = exact.transformer._knots(exact.made(x.double()))
        slopes = knots.y.diff(dim=0) / knots.x.diff(dim=0)
        steepness = 2 * TAIL_BOUND * (knots.derivatives.amax(0) + slopes.amax(0))
    bounds = []
    for row, z_row, steep_row in zip(x.double(), z.double(), steepness):
        jacobian = torch.autograd.functional.jacobian(lambda point: exact(point[None])[0][0], row)
        rounding = eps * (1 + z_row.abs() + jacobian.abs() @ row.abs() + steep_row)
        bounds.append(torch.linalg.inv(jacobian).abs() @ rounding)
    return torch.stack(bounds).to(x.dtype)


@extreme_layers
def test_invertible(dtype: torch.dtype, transformer: str, values: list, scale: float, seed: int) -> None:
    layer = make_layer(transformer, scale, seed, dtype)
    x = torch.tensor(values, dtype=dtype)
    with torch.no_grad():
        z, log_det = layer(x)
        x_sampling, log_det_sampling = layer.inverse(z)  # the gradient-free workspace
    x_solve, log_det_solve = layer.inverse(z.clone().requires_grad_(True))  # the differentiable solve
    assert_finite(x_sampling=x_sampling, x_solve=x_solve, log_det_sampling=log_det_sampling,
                  log_det_solve=log_det_solve)
    tolerance = 64 * round_trip_tolerance(layer, x, z)
    # Where the bound is large, z has lost x to rounding (a float32 spline flat to 1e-8 over a
    # whole bin) and the error is no longer small enough for a first-order bound to hold: only
    # finiteness is asked of those rows.
    conditioned = (tolerance <= 1e-3 * (1 + x.abs())).all(-1)
    for name, x_back in [("workspace", x_sampling), ("solve", x_solve.detach())]:
        error = (x_back - x).abs()[conditioned]
        assert (error <= tolerance[conditioned]).all(), f"{name} round trip error {error.max()}"
