"""The rational-quadratic spline functions against nflows as a reference oracle, and the
properties a monotone spline with linear tails must have."""

from __future__ import annotations

import pytest
import torch
from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline

from flowkit.bijectors import splines
from flowkit.bijectors.transformers import RationalQuadraticSpline

NUM_BINS = 6
TAIL_BOUND = 2.5
MIN_DERIVATIVE = 1e-3


def random_problem(batch: int = 400, features: int = 3, scale: float = 1.5, seed: int = 0):
    """Inputs with about a third in the tails, and unconstrained parameters of spread ``scale``."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, features)
    inputs = 2.5 * torch.randn(shape, generator=generator, dtype=torch.float64)
    widths = scale * torch.randn(*shape, NUM_BINS, generator=generator, dtype=torch.float64)
    heights = scale * torch.randn(*shape, NUM_BINS, generator=generator, dtype=torch.float64)
    derivatives = scale * torch.randn(*shape, NUM_BINS - 1, generator=generator, dtype=torch.float64)
    return inputs, widths, heights, derivatives


def flowkit_spline(inputs, widths, heights, derivatives, inverse=False):
    return splines.rational_quadratic_spline(
        inputs, widths, heights, derivatives, inverse=inverse, tail_bound=TAIL_BOUND,
        min_derivative=MIN_DERIVATIVE,
    )


def nflows_spline(inputs, widths, heights, derivatives, inverse=False):
    # flowkit's interior derivative is min_derivative + softplus(u + offset), so that u = 0 is the
    # identity; nflows' is min_derivative + softplus(u). The same spline is nflows at u + offset.
    shifted = derivatives + splines.derivative_offset(MIN_DERIVATIVE)
    return unconstrained_rational_quadratic_spline(
        inputs, widths, heights, shifted, inverse=inverse, tail_bound=TAIL_BOUND,
        min_derivative=MIN_DERIVATIVE,
    )


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_agrees_with_nflows(inverse: bool, scale: float) -> None:
    inputs, widths, heights, derivatives = random_problem(scale=scale)
    inside = inputs.abs() <= TAIL_BOUND
    assert inside.any() and (~inside).any(), "the inputs must cover both the interval and the tails"
    ours, our_log_det = flowkit_spline(inputs, widths, heights, derivatives, inverse)
    theirs, their_log_det = nflows_spline(inputs, widths, heights, derivatives, inverse)
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(our_log_det, their_log_det, atol=1e-10, rtol=1e-10)
    assert our_log_det[inside].abs().min() > 0 or scale < 1, "a non-trivial spline was compared"


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_agrees_with_nflows_with_unequal_bin_floors(inverse: bool) -> None:
    inputs, widths, heights, derivatives = random_problem(scale=3.0, seed=5)
    floors = {"min_bin_width": 0.02, "min_bin_height": 0.05, "min_derivative": MIN_DERIVATIVE}
    ours = splines.rational_quadratic_spline(inputs, widths, heights, derivatives, inverse=inverse,
                                             tail_bound=TAIL_BOUND, **floors)
    theirs = unconstrained_rational_quadratic_spline(
        inputs, widths, heights, derivatives + splines.derivative_offset(MIN_DERIVATIVE), inverse=inverse,
        tail_bound=TAIL_BOUND, **floors)
    for got, want in zip(ours, theirs):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_agrees_with_nflows_on_the_knots() -> None:
    _, widths, heights, derivatives = random_problem(batch=1, features=1)
    knots = splines.knots_from_unconstrained(
        widths[0, 0], heights[0, 0], derivatives[0, 0], TAIL_BOUND, min_derivative=MIN_DERIVATIVE
    )
    knots_x = knots.x
    expand = lambda t: t[0, 0].expand(len(knots_x), -1)
    ours, our_log_det = flowkit_spline(knots_x, expand(widths), expand(heights), expand(derivatives))
    theirs, their_log_det = nflows_spline(knots_x, expand(widths), expand(heights), expand(derivatives))
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(our_log_det, their_log_det, atol=1e-10, rtol=1e-10)
    # Knots map to knots: the spline interpolates its table.
    torch.testing.assert_close(ours, knots.y, atol=1e-12, rtol=0)


def test_zero_parameters_are_the_identity() -> None:
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    zeros = torch.zeros(101, 3 * NUM_BINS - 1, dtype=torch.float64)
    spline = RationalQuadraticSpline(NUM_BINS, TAIL_BOUND)
    for method in (spline.forward, spline.inverse):
        y, log_det = method(x, zeros)
        torch.testing.assert_close(y, x, atol=1e-13, rtol=0)
        torch.testing.assert_close(log_det, torch.zeros_like(x), atol=1e-13, rtol=0)


def test_monotone_and_identity_outside_the_bound() -> None:
    torch.manual_seed(0)
    spline = RationalQuadraticSpline(NUM_BINS, TAIL_BOUND)
    x = torch.linspace(-6, 6, 4001, dtype=torch.float64)
    params = 3 * torch.randn(1, spline.num_params, dtype=torch.float64).expand(len(x), -1)
    y, log_det = spline.forward(x, params)
    assert (y.diff() > 0).all(), "the spline must be strictly increasing"
    outside = x.abs() > TAIL_BOUND
    assert torch.equal(y[outside], x[outside])
    assert torch.equal(log_det[outside], torch.zeros_like(log_det[outside]))
    inside = ~outside
    assert (y[inside].abs() <= TAIL_BOUND).all(), "the interval maps onto itself"
    assert (y[inside] - x[inside]).abs().max() > 0.1, "parameters this large must bend the map"


def test_continuous_with_unit_slope_at_the_bound() -> None:
    """C1 at +/-B: the spline itself (inputs at the bound are inside) meets the identity tail with
    value B and slope 1, and just inside the bound the value is continuous."""
    torch.manual_seed(0)
    spline = RationalQuadraticSpline(NUM_BINS, TAIL_BOUND)
    params = 3 * torch.randn(1, spline.num_params, dtype=torch.float64).expand(4, -1)
    at_bound = torch.tensor([-TAIL_BOUND, TAIL_BOUND], dtype=torch.float64)
    y, log_det = spline.forward(at_bound, params[:2])
    torch.testing.assert_close(y, at_bound, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_det, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    near = torch.tensor([-TAIL_BOUND + 1e-9, TAIL_BOUND - 1e-9], dtype=torch.float64)
    y, log_det = spline.forward(near, params[:2])
    torch.testing.assert_close(y, near, atol=1e-8, rtol=0)
    torch.testing.assert_close(log_det, torch.zeros(2, dtype=torch.float64), atol=1e-4, rtol=0)


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_inverse_of_forward_is_input(scale: float) -> None:
    inputs, widths, heights, derivatives = random_problem(scale=scale, seed=1)
    y, log_det = flowkit_spline(inputs, widths, heights, derivatives)
    x_back, inverse_log_det = flowkit_spline(y, widths, heights, derivatives, inverse=True)
    # Rounding of y is amplified by dx/dy, up to 1 / min_derivative in steep bins of wild splines.
    tolerance = 1e-10 if scale < 1 else 1e-9
    torch.testing.assert_close(x_back, inputs, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(inverse_log_det, -log_det, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_log_det_is_log_of_autograd_derivative(inverse: bool) -> None:
    inputs, widths, heights, derivatives = random_problem(batch=200, seed=2)
    inputs.requires_grad_(True)
    outputs, log_det = flowkit_spline(inputs, widths, heights, derivatives, inverse)
    (derivative,) = torch.autograd.grad(outputs.sum(), inputs)  # elementwise map: diagonal Jacobian
    torch.testing.assert_close(log_det, derivative.log(), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_log_det_is_log_of_autograd_derivative_on_the_knots(inverse: bool) -> None:
    """At a knot, autograd must see the whole derivative (a clamp that splits the gradient at ties,
    as torch.maximum does, would halve it there)."""
    _, widths, heights, derivatives = random_problem(batch=1, features=1, scale=2.0, seed=3)
    table = splines.knots_from_unconstrained(
        widths[0, 0], heights[0, 0], derivatives[0, 0], TAIL_BOUND, min_derivative=MIN_DERIVATIVE
    )
    knots = (table.y if inverse else table.x).clone().requires_grad_(True)
    expand = lambda t: t[0, 0].expand(len(knots), -1)
    outputs, log_det = flowkit_spline(knots, expand(widths), expand(heights), expand(derivatives), inverse)
    (derivative,) = torch.autograd.grad(outputs.sum(), knots)
    torch.testing.assert_close(log_det, derivative.log(), atol=1e-10, rtol=1e-10)
    assert (log_det.abs() > 1e-3).sum() >= 3, "interior knot derivatives should differ from 1"


def test_transformer_layout_and_config() -> None:
    spline = RationalQuadraticSpline(num_bins=5, tail_bound=2.0, min_derivative=1e-4)
    assert spline.num_params == 14
    assert RationalQuadraticSpline(**spline.config()).config() == spline.config()
    x = torch.randn(7, 3, dtype=torch.float64)
    params = torch.randn(7, 3, 14, dtype=torch.float64)
    widths, heights, derivatives = params[..., :5], params[..., 5:10], params[..., 10:]
    expected = splines.rational_quadratic_spline(
        x, widths, heights, derivatives, tail_bound=2.0, min_derivative=1e-4
    )
    for got, want in zip(spline.forward(x, params), expected):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("kwargs", [
    {"num_bins": 0}, {"tail_bound": 0.0}, {"min_bin_width": 0.0}, {"num_bins": 10, "min_bin_height": 0.2},
    {"min_derivative": 0.0},
])
def test_invalid_configuration_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RationalQuadraticSpline(**kwargs)


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_traces_as_one_graph(inverse: bool) -> None:
    """No data-dependent shapes or Python branching on values: torch.compile captures the whole
    spline in one graph (fullgraph=True raises on any graph break)."""
    spline = RationalQuadraticSpline(NUM_BINS, TAIL_BOUND)
    method = spline.inverse if inverse else spline.forward
    compiled = torch.compile(method, backend="eager", fullgraph=True)
    x = 2.5 * torch.randn(64, 3)
    params = torch.randn(64, 3, spline.num_params)
    for got, want in zip(compiled(x, params), method(x, params)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
