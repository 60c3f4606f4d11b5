"""MADE: the autoregressive property (strictly triangular Jacobian in its order), context reach,
identity at initialisation, and the degree bookkeeping the fast inverse relies on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flowkit.nn import MADE, hidden_degrees
from tests.cases import perturb


def jacobian(made: MADE, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """d outputs / d inputs for one event: shape (features, num_params, features)."""
    return torch.autograd.functional.jacobian(lambda v: made(v[None], context)[0], x)


@pytest.mark.parametrize("order", [None, "random", [3, 1, 4, 2, 5]])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("context_features", [0, 2])
@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])
def test_jacobian_strictly_triangular_in_order(order, residual: bool, context_features: int,
                                               activation: type[nn.Module]) -> None:
    torch.manual_seed(0)
    made = MADE(5, num_params=3, hidden_features=[12, 12, 12], context_features=context_features,
                order=order, seed=4, residual=residual, activation=activation).double()
    perturb(made, scale=0.5)
    degrees = made.input_degrees
    context = torch.randn(1, context_features, dtype=torch.float64) if context_features else None
    jac = sum(jacobian(made, torch.randn(5, dtype=torch.float64), context).abs().sum(1) for _ in range(4))
    # Output of feature i may depend on input j only when j comes strictly before i.
    allowed = degrees[:, None] > degrees[None, :]
    assert (jac[~allowed] == 0).all(), "an output depends on a current or later input"
    if activation is nn.Tanh:  # (dead ReLUs may legitimately cut a path at a given point)
        assert (jac[allowed] > 0).all(), "an output ignores an earlier input: masks cut too much"


def test_random_order_is_a_seeded_permutation() -> None:
    a = MADE(6, 2, 16, order="random", seed=1).input_degrees
    b = MADE(6, 2, 16, order="random", seed=1).input_degrees
    c = MADE(6, 2, 16, order="random", seed=2).input_degrees
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.sort(a).values, torch.arange(1, 7))


def test_bad_order_rejected() -> None:
    with pytest.raises(ValueError):
        MADE(3, 2, 8, order=[1, 1, 2])
    with pytest.raises(ValueError):
        MADE(3, 2, 8, order="backwards")
    with pytest.raises(ValueError):
        MADE(3, 2, [8, 16], residual=True)


def test_context_reaches_every_output() -> None:
    torch.manual_seed(0)
    made = MADE(4, num_params=2, hidden_features=[10, 10], context_features=3, order="random").double()
    perturb(made, scale=0.5)
    x = torch.randn(1, 4, dtype=torch.float64)
    context = torch.randn(3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda c: made(x, c[None])[0], context)
    # Every (feature, param) output moves with the context, the first feature in the order included.
    assert (jac.abs().sum(-1) > 0).all()


def test_zero_initialised_output() -> None:
    made = MADE(4, num_params=5, hidden_features=8, context_features=2)
    out = made(torch.randn(3, 4), torch.randn(3, 2))
    assert out.shape == (3, 4, 5) and (out == 0).all()


def test_hidden_degrees_sorted_and_cover_all_degrees() -> None:
    for features, width, context in [(5, 12, 0), (5, 12, 2), (43, 256, 0), (2, 3, 0)]:
        degrees = hidden_degrees(width, features, context)
        assert (degrees[1:] >= degrees[:-1]).all()
        low = 0 if context else 1
        assert set(degrees.tolist()) == set(range(low, features))


def test_every_hidden_unit_reaches_an_output() -> None:
    made = MADE(5, num_params=2, hidden_features=[9, 7])
    reach = made.output.mask
    for layer in reversed(made.layers):
        assert (reach.sum(0) > 0).all(), "a hidden unit is connected to no output"
        reach = reach @ layer.mask
