"""Layer-specific behaviour of LULinear, BatchNorm and the elementwise maps, beyond the shared
invariants of test_invariants.py."""

from __future__ import annotations

import math

import pytest
import torch

from flowkit.bijectors.elementwise import Logit, Sigmoid, Softplus
from flowkit.bijectors.linear import LULinear
from flowkit.bijectors.normalization import BatchNorm
from tests.cases import perturb

DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]


# --- LULinear -----------------------------------------------------------------------------------


def test_lu_linear_weight_is_permuted_lower_times_upper() -> None:
    layer = LULinear(5, seed=3).double()
    perturb(layer, scale=0.5)
    lower, upper, diagonal = layer._factors()
    assert torch.equal(lower.diagonal(), torch.ones(5, dtype=torch.float64))
    assert torch.equal(lower.triu(1), torch.zeros_like(lower))
    assert torch.equal(upper.tril(-1), torch.zeros_like(upper))
    assert (diagonal > 0).all()
    permutation = torch.eye(5, dtype=torch.float64)[layer.permutation]
    torch.testing.assert_close(layer.weight(), permutation @ lower @ upper, atol=1e-14, rtol=0)
    x = torch.randn(6, 5, dtype=torch.float64)
    z, log_det = layer(x)
    torch.testing.assert_close(z, x @ layer.weight().T + layer.bias, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_det[0], torch.linalg.slogdet(layer.weight())[1], atol=1e-12, rtol=0)


def test_lu_linear_permutation_is_fixed_by_seed() -> None:
    assert torch.equal(LULinear(8, seed=4).permutation, LULinear(8, seed=4).permutation)
    assert not torch.equal(LULinear(8, seed=4).permutation, LULinear(8, seed=5).permutation)
    assert torch.equal(LULinear(8, permute=False).permutation, torch.arange(8))
    layer = LULinear(8, seed=4)
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x)[0], x[:, layer.permutation], atol=1e-6, rtol=0)


def test_lu_linear_stays_invertible_while_training() -> None:
    """Nothing is cached: after optimiser steps the inverse still inverts the current forward."""
    torch.manual_seed(0)
    layer = LULinear(4, seed=0).double()
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    target = torch.randn(64, 4, dtype=torch.float64) @ torch.randn(4, 4, dtype=torch.float64)
    for _ in range(20):
        z, log_det = layer(target)
        loss = 0.5 * z.square().sum(-1).mean() - log_det.mean()  # Gaussian maximum likelihood
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.allclose(layer.weight(), torch.eye(4, dtype=torch.float64)[layer.permutation])
    z, log_det = layer(target)
    x_back, inverse_log_det = layer.inverse(z)
    torch.testing.assert_close(x_back, target, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(inverse_log_det, -log_det, atol=1e-12, rtol=0)


# --- BatchNorm ----------------------------------------------------------------------------------


def test_batchnorm_training_uses_batch_statistics_and_updates_running_ones() -> None:
    torch.manual_seed(0)
    layer = BatchNorm(3, momentum=0.25).double()
    x = 2 + 3 * torch.randn(200, 3, dtype=torch.float64)
    z, log_det = layer(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    expected_log_det = -0.5 * torch.log(x.var(0, unbiased=False) + layer.eps).sum()
    torch.testing.assert_close(log_det, expected_log_det.expand(200), atol=1e-12, rtol=0)
    torch.testing.assert_close(layer.running_mean, 0.25 * x.mean(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(layer.running_var, 0.75 + 0.25 * x.var(0, unbiased=True), atol=1e-12, rtol=0)


def test_batchnorm_inverse_uses_running_statistics_in_both_modes() -> None:
    torch.manual_seed(0)
    layer = BatchNorm(2).double()
    layer(5 + torch.randn(100, 2, dtype=torch.float64))  # training step: running stats move
    perturb(layer, scale=0.3)
    z = torch.randn(10, 2, dtype=torch.float64)
    training_inverse = layer.inverse(z)
    layer.eval()
    eval_inverse = layer.inverse(z)
    for a, b in zip(training_inverse, eval_inverse):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    x_back, _ = eval_inverse
    torch.testing.assert_close(layer(x_back)[0], z, atol=1e-12, rtol=0)


def test_batchnorm_init_is_identity_up_to_eps() -> None:
    layer = BatchNorm(4, eps=1e-5).double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    z, log_det = layer(x)
    torch.testing.assert_close(z, x / math.sqrt(1 + 1e-5), atol=1e-15, rtol=0)
    torch.testing.assert_close(log_det, torch.full((5,), -2 * math.log1p(1e-5), dtype=torch.float64))


def test_batchnorm_training_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        BatchNorm(3)(torch.randn(1, 3))
    BatchNorm(3).eval()(torch.randn(1, 3))  # eval mode needs no batch


# --- Elementwise maps ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_logit_are_inverse_maps(dtype: torch.dtype) -> None:
    x = torch.linspace(-8, 8, 33, dtype=dtype)[None]
    y, log_det = Sigmoid()(x)
    z, logit_log_det = Logit()(y)
    torch.testing.assert_close(z, x, atol=1e-3 if dtype == torch.float32 else 1e-10, rtol=1e-5)
    torch.testing.assert_close(logit_log_det, -log_det, atol=1e-3 if dtype == torch.float32 else 1e-9, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_saturated_values_stay_finite(dtype: torch.dtype) -> None:
    ends = torch.tensor([[0.0, 1.0]], dtype=dtype)
    for z, log_det in [Sigmoid().inverse(ends), Logit()(ends), Logit(alpha=0.05)(ends)]:
        assert torch.isfinite(z).all() and torch.isfinite(log_det).all()
    z, _ = Logit(alpha=0.05)(ends)
    torch.testing.assert_close(z, torch.tensor([[-1.0, 1.0]], dtype=dtype) * math.log(0.95 / 0.05))
    y, log_det = Sigmoid()(torch.tensor([[-1e4, 1e4]], dtype=dtype))
    assert torch.isfinite(log_det).all() and log_det.item() < -1e4


@pytest.mark.parametrize("dtype", DTYPES)
def test_softplus_is_stable_for_tiny_and_large_inputs(dtype: torch.dtype) -> None:
    x = torch.tensor([[1e-30, 1e-6, 1.0, 30.0, 1e6]], dtype=dtype)
    z, log_det = Softplus()(x)
    assert torch.isfinite(z).all() and torch.isfinite(log_det).all()
    # log(expm1(x)) is log(x) + x/2 for tiny x and x + log1p(-exp(-x)) for large x.
    torch.testing.assert_close(z[0, 0], torch.tensor(math.log(1e-30), dtype=dtype))
    torch.testing.assert_close(z[0, 4], torch.tensor(1e6, dtype=dtype))
    x_back, inverse_log_det = Softplus().inverse(z)
    torch.testing.assert_close(x_back, x, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
    torch.testing.assert_close(inverse_log_det, -log_det, rtol=1e-5, atol=1e-5)
    far_negative, _ = Softplus().inverse(torch.tensor([[-1e4]], dtype=dtype))
    assert (far_negative > 0).all() and torch.isfinite(Softplus()(far_negative)[0]).all()


def test_softplus_inverse_is_exact_beyond_torch_threshold() -> None:
    """F.softplus returns z itself above 20; the exact value differs by log1p(exp(-z))."""
    z = torch.tensor([[21.0, 25.0]], dtype=torch.float64)
    x, _ = Softplus().inverse(z)
    torch.testing.assert_close(x - z, torch.log1p(torch.exp(-z)), atol=1e-14, rtol=0)  # ~ulp(25)
