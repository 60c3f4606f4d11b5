"""The sampling steps' writers (``Transformer.inverse_writer``) compute exactly their transformer's
``inverse`` value, bit for bit, and the sampling path that skips log-dets returns exactly what the
full inverse returns."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowkit
from flowkit.bijectors.transformers import Additive, Affine, RationalQuadraticSpline

EXTREME_INPUTS = [0.0, 1e-30, -1e-30, 2.9999, 3.0, -3.0, 3.0001, 1e6, -1e6, 1e30, -1e30]


def written(spline, y: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    out = torch.full_like(y, float("nan"))
    with torch.no_grad():
        spline.inverse_writer(y)(y, params, out)
    return out


def reference(spline, y: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return spline.inverse(y, params)[0]


def on_knots(spline: RationalQuadraticSpline, params: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One input per row: each row's own y knots and their float neighbours, then extremes."""
    knots = spline._knots(params).y  # (bins + 1, batch)
    rows = torch.arange(params.shape[0]) % knots.shape[0]
    on = knots[rows, torch.arange(params.shape[0])]
    return torch.where(torch.arange(params.shape[0]) % 3 == 0, on, torch.nextafter(on, on.neg()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("num_bins, floors", [(8, (1e-3, 1e-3, 1e-3)), (5, (1e-3, 1e-2, 1e-2)), (1, (0.5, 0.5, 0.1)),
                                              (2, (1e-4, 1e-3, 0.3))])
@pytest.mark.parametrize("tail_bound", [3.0, 1.7])
def test_writer_equals_spline_inverse_bit_for_bit(dtype, num_bins, floors, tail_bound) -> None:
    """Random and saturated parameters; inputs inside, on knots and their neighbours, at and past
    the bounds: the same bits as ``spline_inverse``, so sampling and scoring agree exactly."""
    spline = RationalQuadraticSpline(num_bins, tail_bound, *floors)
    generator = torch.Generator().manual_seed(num_bins)
    batch = 64
    params = 3 * torch.randn(batch, spline.num_params, generator=generator, dtype=dtype)
    params[:8] *= 40  # saturated softmaxes: bins at their floor, derivatives near the minimum
    params[8:12] = 0.0  # the identity
    ordinary = tail_bound * 1.2 * (2 * torch.rand(batch, generator=generator, dtype=dtype) - 1)
    extreme = torch.tensor(EXTREME_INPUTS, dtype=dtype) * tail_bound / 3
    for y in (ordinary, on_knots(spline, params, dtype),
              torch.cat([extreme, ordinary[len(extreme):]])):
        assert torch.equal(written(spline, y, params), reference(spline, y, params))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0.0, 50.0, -50.0, 1e3, -1e3, 0.3, -2.0]), min_size=23, max_size=23),
       st.floats(-4.0, 4.0, allow_nan=False))
def test_writer_equals_spline_inverse_on_extreme_parameters(values: list[float], y: float) -> None:
    spline = RationalQuadraticSpline(8, 3.0)
    params = torch.tensor(values, dtype=torch.float32).repeat(4, 1)
    inputs = torch.tensor([y, -y, 3.0, -3.0], dtype=torch.float32)
    assert torch.equal(written(spline, inputs, params), reference(spline, inputs, params))


def test_writer_is_reusable_across_calls() -> None:
    """Buffers carry nothing from one step to the next (the cumulative sum starts at 0 again)."""
    spline = RationalQuadraticSpline(6, 2.0)
    y = torch.randn(32)
    writer = spline.inverse_writer(y)
    out = torch.empty_like(y)
    with torch.no_grad():
        for seed in range(3):
            params = torch.randn(32, spline.num_params, generator=torch.Generator().manual_seed(seed))
            writer(y, params, out)
            assert torch.equal(out, reference(spline, y, params))


@pytest.mark.parametrize("transformer", [Affine(), Affine(min_scale=0.3), Additive()],
                         ids=["affine", "affine_0.3", "additive"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_other_writers_equal_their_inverse(transformer, dtype) -> None:
    """Large and small scales (the softplus's linear and exponential ranges) and the identity."""
    generator = torch.Generator().manual_seed(0)
    params = torch.randn(50, transformer.num_params, generator=generator, dtype=dtype)
    params[:10] *= 30
    params[10:15] = 0.0
    y = 5 * torch.randn(50, generator=generator, dtype=dtype)
    writer = transformer.inverse_writer(y)
    for scale in (1.0, 1e3):
        out = torch.full_like(y, float("nan"))
        with torch.no_grad():
            writer(y * scale, params, out)
        assert torch.equal(out, reference(transformer, y * scale, params))


@pytest.mark.parametrize("preset", ["maf", "nsf", "realnvp", "iaf"])
@pytest.mark.parametrize("context_features", [0, 2])
def test_sampling_without_log_dets_returns_the_full_inverse(preset: str, context_features: int) -> None:
    """``Flow.sample`` skips the log-dets (``inverse_without_log_det``) and returns the same x
    as the full inverse, on the same base draws."""
    torch.manual_seed(0)
    flow = flowkit.build(preset, features=5, context_features=context_features, transforms=2, hidden_features=16)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    context = torch.randn(40, context_features) if context_features else None
    torch.manual_seed(1)
    x = flow.sample(40, context)
    torch.manual_seed(1)
    with torch.no_grad():
        x_full, log_det = flow.bijector.inverse(flow.base.sample(40), context)
    assert torch.equal(x, x_full)
    # The full inverse's log-dets (deferred to one call after the writer's steps) are minus forward's.
    with torch.no_grad():
        log_det_forward = flow.bijector(x, context)[1]
    torch.testing.assert_close(log_det, -log_det_forward, atol=1e-4, rtol=1e-4)


def test_a_flow_that_has_sampled_still_pickles_and_samples_alike() -> None:
    """The writers and workspaces a flow keeps after sampling are plain objects: the flow pickles,
    and the copy samples the same values from the same draws."""
    flow = flowkit.build("nsf", features=4, transforms=2, hidden_features=16)
    maf = flowkit.build("maf", features=4, transforms=2, hidden_features=16)
    for model in (flow, maf):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
        model.sample(8)
        copy = pickle.loads(pickle.dumps(model))
        torch.manual_seed(3)
        first = model.sample(8)
        torch.manual_seed(3)
        assert torch.equal(copy.sample(8), first)
