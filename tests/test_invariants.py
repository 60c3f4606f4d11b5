"""Invariants every bijector in ``cases.BIJECTOR_CASES`` must satisfy, in float64."""

from __future__ import annotations

import io

import pytest
import torch

from tests.cases import BIJECTOR_CASES, FLOW_CASES, Case, context_for, perturb, prepared

CASES = [pytest.param(case, id=case.name) for case in BIJECTOR_CASES]


@pytest.mark.parametrize("case", CASES)
def test_shapes(case: Case) -> None:
    bijector = prepared(case)
    x, context = case.sample_input(7, case.features), context_for(case, 7)
    z, log_det = bijector(x, context)
    assert z.shape == x.shape and log_det.shape == (7,)
    x_back, inverse_log_det = bijector.inverse(z, context)
    assert x_back.shape == x.shape and inverse_log_det.shape == (7,)


@pytest.mark.parametrize("case", CASES)
def test_inverse_of_forward_is_input(case: Case) -> None:
    bijector = prepared(case)
    x, context = case.sample_input(32, case.features), context_for(case, 32)
    z, _ = bijector(x, context)
    assert not torch.allclose(z, x), "perturbed bijector should not be the identity"
    x_back, _ = bijector.inverse(z, context)
    torch.testing.assert_close(x_back, x, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("case", CASES)
def test_log_det_matches_autograd_jacobian(case: Case) -> None:
    bijector = prepared(case)
    for _ in range(3):
        x = case.sample_input(1, case.features)[0]
        context = context_for(case, 1)
        jacobian = torch.autograd.functional.jacobian(lambda v, c=context: bijector(v[None], c)[0][0], x)
        _, expected = torch.linalg.slogdet(jacobian)
        _, log_det = bijector(x[None], context)
        torch.testing.assert_close(log_det[0], expected, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("case", CASES)
def test_inverse_log_det_is_minus_forward(case: Case) -> None:
    bijector = prepared(case)
    x, context = case.sample_input(16, case.features), context_for(case, 16)
    z, log_det = bijector(x, context)
    _, inverse_log_det = bijector.inverse(z, context)
    torch.testing.assert_close(inverse_log_det, -log_det, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].context_features])
def test_context_changes_output(case: Case) -> None:
    bijector = prepared(case)
    x = case.sample_input(16, case.features)
    z_a, log_det_a = bijector(x, context_for(case, 16))
    z_b, log_det_b = bijector(x, context_for(case, 16))
    assert not torch.allclose(z_a, z_b)
    assert not torch.allclose(log_det_a, log_det_b) or case.name.startswith("coupling-additive")


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].has_parameters])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_every_parameter_gets_a_gradient(case: Case, direction: str) -> None:
    bijector = prepared(case)
    x, context = case.sample_input(16, case.features), context_for(case, 16)
    method = bijector if direction == "forward" else bijector.inverse
    out, log_det = method(x, context)
    (out.square().sum() + log_det.sum()).backward()
    for name, parameter in bijector.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize("case", CASES)
def test_state_dict_round_trip(case: Case) -> None:
    bijector = prepared(case)
    buffer = io.BytesIO()
    torch.save(bijector.state_dict(), buffer)
    buffer.seek(0)
    fresh = case.make().double().eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x, context = case.sample_input(8, case.features), context_for(case, 8)
    for a, b in zip(bijector(x, context), fresh(x, context)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].identity_at_init])
def test_identity_at_init(case: Case) -> None:
    bijector = case.make().double().eval()
    x, context = case.sample_input(16, case.features), context_for(case, 16)
    z, log_det = bijector(x, context)
    torch.testing.assert_close(z, x, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(log_det, torch.zeros_like(log_det), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(FLOW_CASES))
def test_2d_density_integrates_to_one(name: str) -> None:
    torch.manual_seed(0)
    flow = FLOW_CASES[name]().double()
    flow.train()
    with torch.no_grad():
        flow.log_prob(torch.randn(256, 2, dtype=torch.float64))  # data-dependent initialisation
    flow.eval()
    perturb(flow.bijector, scale=0.1)
    grid = torch.linspace(-10, 10, 501, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    with torch.no_grad():
        density = flow.log_prob(points, batch_size=50_000).exp()
    cell = (grid[1] - grid[0]) ** 2
    mass = (density.sum() * cell).item()
    assert abs(mass - 1.0) < 0.02, f"density integrates to {mass}"
