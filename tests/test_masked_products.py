"""MADE's block-triangular products compute exactly the masked dense MADE, values and gradients."""

from __future__ import annotations

import pytest
import torch

import flowkit
from flowkit.bijectors import MaskedAutoregressive
from flowkit.nn import MADE, _block_plan


def _dense(made: MADE):
    plan, made.plan = made.plan, None
    return plan


@pytest.mark.parametrize("features", [1, 2, 5, 9])
@pytest.mark.parametrize("context_features, residual", [(0, False), (3, False), (0, True), (2, True)])
@pytest.mark.parametrize("blocks", [1, 3, 4])
def test_blocked_made_matches_the_dense_masked_made(features, context_features, residual, blocks, monkeypatch) -> None:
    monkeypatch.setattr(MADE, "blocks", blocks)
    torch.manual_seed(features + blocks)
    made = MADE(features, 3, [10, 10], context_features=context_features, residual=residual).double()
    made.plan = _block_plan(made, made.input_degrees)  # forced: small MADEs use the dense path
    with torch.no_grad():
        for parameter in made.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    x = torch.randn(6, features, dtype=torch.float64, requires_grad=True)
    context = torch.randn(6, context_features, dtype=torch.float64, requires_grad=True) if context_features else None
    inputs = [x, *made.parameters()] + ([context] if context is not None else [])
    blocked = made(x, context)
    weights = torch.randn_like(blocked)
    grads = torch.autograd.grad((blocked * weights).sum(), inputs)
    plan = _dense(made)
    dense = made(x, context)
    made.plan = plan
    dense_grads = torch.autograd.grad((dense * weights).sum(), inputs)
    assert blocked.shape == dense.shape == (6, features, 3)
    torch.testing.assert_close(blocked, dense)
    for got, expected in zip(grads, dense_grads):
        torch.testing.assert_close(got, expected)


def test_the_rule_picks_large_spline_layers_and_wide_affine_ones_on_one_thread() -> None:
    spline = MADE(43, 23, [256, 256])  # NSF-AR at 43 features: 989 outputs, 4 groups everywhere
    assert spline.plan is not None and len(spline.plan[0]) == MADE.blocks
    assert MADE(6, 23, [256, 256]).plan is None
    assert MADE(43, 23, [256, 256], order="random").plan is None  # the prefixes need the natural order
    assert MADE(43, 2, [128, 128]).plan is None  # MAF with narrow hidden layers: small products
    affine = MADE(43, 2, [256, 256])  # MAF: 86 outputs, 2 groups, on one CPU thread and large batches
    assert len(affine.plan[0]) == MADE.narrow_blocks
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert affine.blocked(torch.zeros(512, 43)) and not affine.blocked(torch.zeros(256, 43))
        assert spline.blocked(torch.zeros(8, 43))
        torch.set_num_threads(2)
        assert not affine.blocked(torch.zeros(512, 43)) and spline.blocked(torch.zeros(512, 43))
    finally:
        torch.set_num_threads(threads)


def test_a_blocked_maf_matches_the_dense_one_values_and_gradients() -> None:
    """The 2-group plan of a wide affine MADE, through a whole MAF step on one thread."""
    torch.manual_seed(0)
    flow = flowkit.maf(features=9, transforms=2, hidden_features=[256, 256]).double()
    layers = [m for m in flow.modules() if isinstance(m, MaskedAutoregressive)]
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    x = torch.randn(512, 9, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert all(layer.made.blocked(x) for layer in layers)
        results = []
        for blocked in (True, False):
            plans = [layer.made.plan for layer in layers]
            if not blocked:
                for layer in layers:
                    layer.made.plan = None
            flow.zero_grad()
            log_prob = flow.log_prob(x)
            log_prob.sum().backward()
            results.append((log_prob.detach(), [p.grad.clone() for p in flow.parameters()]))
            for layer, plan in zip(layers, plans):
                layer.made.plan = plan
    finally:
        torch.set_num_threads(threads)
    (blocked_values, blocked_grads), (dense_values, dense_grads) = results
    torch.testing.assert_close(blocked_values, dense_values)
    for got, expected in zip(blocked_grads, dense_grads):
        torch.testing.assert_close(got, expected)


def test_a_blocked_flow_matches_dense_and_skips_autocast_and_compile() -> None:
    torch.manual_seed(0)
    flow = flowkit.nsf(features=12, transforms=2, hidden_features=[16, 16], num_bins=4)
    layers = [m for m in flow.modules() if isinstance(m, MaskedAutoregressive)]
    assert all(layer.made.plan is not None for layer in layers)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    x = torch.randn(9, 12)
    blocked = flow.log_prob(x)
    plans = [_dense(layer.made) for layer in layers]
    dense = flow.log_prob(x)
    for layer, plan in zip(layers, plans):
        layer.made.plan = plan
    torch.testing.assert_close(blocked, dense, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not layers[0].made.blocked(x)
