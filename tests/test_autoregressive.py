"""MaskedAutoregressive: the fast inverse (every MADE unit computed once) equals the plain
D-pass inverse, in both gradient modes, for every combination the fast path handles."""

from __future__ import annotations

import importlib

import pytest
import torch

from flowkit.bijectors.autoregressive import MaskedAutoregressive
from flowkit.bijectors.autoregressive_solve import Workspace
from flowkit.bijectors.base import Inverse
from flowkit.bijectors.transformers import Affine, RationalQuadraticSpline, Transformer
from flowkit.nn import MADE
from flowkit.presets import build
from tests.cases import perturb

TRANSFORMERS = {"affine": Affine, "spline": lambda: RationalQuadraticSpline(num_bins=5, tail_bound=3.0)}


def make_layer(transformer: Transformer, context_features: int, order,
               residual: bool) -> MaskedAutoregressive:
    torch.manual_seed(0)
    layer = MaskedAutoregressive(transformer, 6, context_features=context_features,
                                 hidden_features=[20, 20], order=order, seed=3, residual=residual).double()
    perturb(layer, scale=0.3)
    return layer


@pytest.mark.parametrize("transformer", list(TRANSFORMERS))
@pytest.mark.parametrize("context_features", [0, 3])
@pytest.mark.parametrize("order", [None, "random"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_fast_inverse_equals_reference(transformer: str, context_features: int, order,
                                       residual: bool, grad: bool) -> None:
    layer = make_layer(TRANSFORMERS[transformer](), context_features, order, residual)
    z = 2 * torch.randn(40, 6, dtype=torch.float64)
    context = torch.randn(40, context_features, dtype=torch.float64) if context_features else None
    with torch.set_grad_enabled(grad):
        x_fast, log_det_fast = layer.inverse(z, context)
    x_ref, log_det_ref = layer.inverse_reference(z, context)
    assert not torch.allclose(x_ref, z, atol=1e-3), "perturbed layer should not be the identity"
    # 1e-10 absolute, and relative for the few large values (a small affine scale sends x to ~1e4,
    # where 1e-10 is a few dozen ulps of float64 and the two summation orders differ by that).
    torch.testing.assert_close(x_fast, x_ref, atol=1e-10, rtol=1e-13)
    torch.testing.assert_close(log_det_fast, log_det_ref, atol=1e-10, rtol=1e-13)
    # Both really invert forward.
    z_back, log_det_forward = layer(x_fast, context)
    torch.testing.assert_close(z_back, z, atol=1e-9, rtol=0)
    torch.testing.assert_close(log_det_forward, -log_det_fast, atol=1e-9, rtol=0)


@pytest.mark.parametrize("block", [1, 2, 4, 6])
@pytest.mark.parametrize("transformer", list(TRANSFORMERS))
@pytest.mark.parametrize("context_features, order, residual", [(0, None, False), (3, "random", True)])
@pytest.mark.parametrize("deferred", [False, True], ids=["per_step_log_det", "deferred_log_det"])
def test_blocked_workspace_equals_reference(block: int, transformer: str, context_features: int, order,
                                            residual: bool, deferred: bool) -> None:
    """Every block size: block updates (wide products into later units) and in-block steps together
    add exactly the contributions of the unblocked step-by-step solve; with ``inverse_writer`` the
    steps write x in place and the log-dets of all features come from one call at the end."""
    layer = make_layer(TRANSFORMERS[transformer](), context_features, order, residual)
    z = 2 * torch.randn(30, 6, dtype=torch.float64)
    context = torch.randn(30, context_features, dtype=torch.float64) if context_features else None
    workspace = Workspace(layer.made, z, context is not None, block=block)
    with torch.no_grad():
        into = layer.transformer.inverse_writer(z[:, 0]) if deferred else None
        x, log_det = workspace.solve(z, layer.transformer.inverse, context, into=into)
        updates = sum(len(step[3]) > 0 for step in workspace.plan)
    assert updates == (5 // block if block < 6 else 0), "each finished block but the last updates later units"
    x_ref, log_det_ref = layer.inverse_reference(z, context)
    torch.testing.assert_close(x, x_ref, atol=1e-10, rtol=1e-13)
    torch.testing.assert_close(log_det, log_det_ref, atol=1e-10, rtol=1e-13)


def test_fast_inverse_gradients_match_reference() -> None:
    """rsample (IAF training) differentiates through the fast inverse: same gradients."""
    layer = make_layer(Affine(), 2, "random", residual=False)
    z = torch.randn(16, 6, dtype=torch.float64)
    context = torch.randn(16, 2, dtype=torch.float64)
    grads = []
    for method in (layer.inverse, layer.inverse_reference):
        layer.zero_grad()
        x, log_det = method(z, context)
        (x.square().sum() + log_det.sum()).backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    for fast, reference in zip(*grads):
        torch.testing.assert_close(fast, reference, atol=1e-10, rtol=1e-10)


class CountingMADE(MADE):
    """Counts full passes: the fast inverse must make none."""

    calls = 0

    def forward(self, x, context=None):
        CountingMADE.calls += 1
        return super().forward(x, context)


def test_fast_inverse_makes_no_full_pass() -> None:
    layer = make_layer(Affine(), 0, None, residual=False)
    counting = CountingMADE(6, 2, [20, 20]).double()
    counting.load_state_dict(layer.made.state_dict())
    layer.made = counting
    z = torch.randn(8, 6, dtype=torch.float64)
    with torch.no_grad():
        layer.inverse(z)
    assert CountingMADE.calls == 0
    layer.inverse_reference(z)
    assert CountingMADE.calls == 6


def test_iaf_is_inverse_of_maf_and_samples_in_one_pass() -> None:
    maf = make_layer(Affine(), 0, None, residual=False)
    iaf = Inverse(maf)
    eps = torch.randn(10, 6, dtype=torch.float64)
    x, log_det = iaf.inverse(eps)  # IAF sampling: one MADE pass
    eps_back, log_det_back = iaf(x)  # IAF density: the sequential solve
    torch.testing.assert_close(eps_back, eps, atol=1e-10, rtol=0)
    torch.testing.assert_close(log_det_back, -log_det, atol=1e-10, rtol=0)


def test_float32_fast_inverse_close_to_reference() -> None:
    layer = make_layer(RationalQuadraticSpline(num_bins=8), 2, "random", residual=True).float()
    z, context = torch.randn(64, 6), torch.randn(64, 2)
    with torch.no_grad():
        x_fast, _ = layer.inverse(z, context)
        x_ref, _ = layer.inverse_reference(z, context)
    torch.testing.assert_close(x_fast, x_ref, atol=1e-4, rtol=1e-4)


def test_workspace_follows_parameter_updates_and_shapes() -> None:
    """The gradient-free inverse caches views of the weights: after an in-place update (an
    optimiser step), a new batch size, a context or a dtype change it must still be exact."""
    layer = make_layer(RationalQuadraticSpline(num_bins=4), 2, "random", residual=True)
    context = torch.randn(12, 2, dtype=torch.float64)
    z = torch.randn(12, 6, dtype=torch.float64)

    def check(z: torch.Tensor, context: torch.Tensor) -> None:
        with torch.no_grad():
            x_fast, log_det_fast = layer.inverse(z, context)
        x_ref, log_det_ref = layer.inverse_reference(z, context)
        torch.testing.assert_close(x_fast, x_ref, atol=1e-10, rtol=0)
        torch.testing.assert_close(log_det_fast, log_det_ref, atol=1e-10, rtol=0)

    check(z, context)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    x, log_det = layer(z, context)
    (x.square().sum() + log_det.sum()).backward()
    optimizer.step()
    check(z, context)
    check(z[:5], context[:5])
    check(z, torch.randn(12, 2, dtype=torch.float64))
    first = layer._workspace.x_rows
    with torch.no_grad():
        x_a, _ = layer.inverse(z, context)
        x_b, _ = layer.inverse(z, context)
    assert layer._workspace.x_rows is first and x_a.data_ptr() != x_b.data_ptr()  # reused, not aliased
    layer.float()
    with torch.no_grad():
        x32, _ = layer.inverse(z.float(), context.float())
    torch.testing.assert_close(x32, layer.inverse_reference(z.float(), context.float())[0], atol=1e-4, rtol=1e-4)


def test_inference_mode_then_no_grad() -> None:
    """A workspace built under inference_mode must not be written outside it."""
    layer = make_layer(Affine(), 0, "random", residual=False)
    z = torch.randn(8, 6, dtype=torch.float64)
    with torch.inference_mode():
        x_inference, _ = layer.inverse(z)
    with torch.no_grad():
        x_no_grad, _ = layer.inverse(z)
    torch.testing.assert_close(x_inference, x_no_grad, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["maf", "iaf", "nsf", "nsf_coupling"])
def test_presets_rebuild_from_config_and_score_their_samples(name: str) -> None:
    torch.manual_seed(0)
    flow = build(name, features=3, context_features=2, transforms=2, hidden_features=[12, 12],
                 permutation="random", seed=4).double()
    perturb(flow.bijector, scale=0.2)
    twin = build(**flow.config).double()
    twin.load_state_dict(flow.state_dict())
    context = torch.randn(6, 2, dtype=torch.float64)
    x, log_q = flow.rsample_and_log_prob(6, context)
    torch.testing.assert_close(twin.log_prob(x, context), log_q, atol=1e-9, rtol=0)
    (x.square().sum() + log_q.sum()).backward()  # pathwise gradients reach the conditioners
    assert all(p.grad is not None for p in flow.parameters())


@pytest.mark.parametrize("name", ["maf", "iaf", "nsf", "nsf_coupling"])
def test_presets_with_lu_and_batch_norm_invert(name: str) -> None:
    if not hasattr(importlib.import_module("flowkit.bijectors.linear"), "LULinear"):
        pytest.skip("LULinear has not landed")
    torch.manual_seed(0)
    flow = build(name, features=3, context_features=2, transforms=3, hidden_features=[12, 12],
                 permutation="lu", batch_norm=True).double()
    names = [type(layer).__name__ for layer in flow.bijector]
    assert "LULinear" in names and "BatchNorm" in names
    context = torch.randn(64, 2, dtype=torch.float64)
    x = 2 * torch.randn(64, 3, dtype=torch.float64) + 1
    flow.train()
    flow.log_prob(x, context)  # batch statistics
    flow.eval()
    perturb(flow.bijector, scale=0.1)
    z, log_det = flow.bijector(x, context)
    x_back, inverse_log_det = flow.bijector.inverse(z, context)
    torch.testing.assert_close(x_back, x, atol=1e-9, rtol=0)
    torch.testing.assert_close(inverse_log_det, -log_det, atol=1e-9, rtol=0)


def test_frozen_layer_takes_the_workspace_path_with_grad_enabled() -> None:
    layer = make_layer(Affine(), 2, "random", residual=False).requires_grad_(False)
    z, context = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    x, _ = layer.inverse(z, context)  # grad mode on, but nothing needs a gradient
    assert layer._workspace is not None
    torch.testing.assert_close(x, layer.inverse_reference(z, context)[0], atol=1e-10, rtol=0)
    z.requires_grad_(True)
    x, log_det = layer.inverse(z, context)  # now the input needs one: the differentiable path
    (x.sum() + log_det.sum()).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("name, backend", [("nsf", "eager"), ("nsf", "inductor")])
def test_compiled_sampling_draws_the_same_samples(name: str, backend: str) -> None:
    """compile_sampling swaps in a compiled spline step for sampling only: the same draws
    (inductor may reassociate float32 arithmetic), shared by the layers, and gradients untouched."""
    torch.manual_seed(0)
    flow = build(name, features=4, context_features=2, transforms=2, hidden_features=[12, 12]).eval()
    perturb(flow.bijector, scale=0.3)
    context = torch.randn(1, 2).expand(16, -1)
    torch.manual_seed(1)
    eager = flow.sample(16, context)
    layers = [layer for layer in flow.modules() if isinstance(layer, MaskedAutoregressive)]
    assert flow.compile_sampling(backend) is flow
    assert layers[0]._compiled_step is layers[1]._compiled_step is not None
    torch.manual_seed(1)
    torch.testing.assert_close(flow.sample(16, context), eager, atol=1e-5, rtol=1e-5)
    x, log_q = flow.rsample_and_log_prob(16, context)  # the differentiable path: still eager, still exact
    torch.testing.assert_close(flow.log_prob(x, context), log_q, atol=1e-4, rtol=1e-4)


def test_compile_sampling_leaves_affine_steps_eager() -> None:
    """An affine step is a handful of ops: a compiled call would cost more than it saves."""
    flow = build("maf", features=3, transforms=2, hidden_features=8).compile_sampling("eager")
    assert all(layer._compiled_step is None for layer in flow.modules() if isinstance(layer, MaskedAutoregressive))
