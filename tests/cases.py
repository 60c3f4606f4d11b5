"""The one registry of test cases. Every bijector in flowkit appears here at least once, with
and without context where it takes one; ``test_invariants.py`` runs every invariant on every case.

To add a bijector, append a ``Case`` to ``BIJECTOR_CASES`` (and a 2-D flow to ``FLOW_CASES``
if it has a preset).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

import flowkit
from flowkit.bijectors import (
    ActNorm,
    Additive,
    Affine,
    Bijector,
    Chain,
    Coupling,
    Inverse,
    Permutation,
)
from flowkit.bijectors.autoregressive import MaskedAutoregressive
from flowkit.bijectors.elementwise import Logit, Sigmoid, Softplus
from flowkit.bijectors.linear import LULinear, Whitening
from flowkit.bijectors.normalization import BatchNorm
from flowkit.bijectors.preprocessing import Bounds, Dequantize
from flowkit.bijectors.transformers import RationalQuadraticSpline
from flowkit.bijectors.unconditional import Unconditional
from flowkit.distributions import DiagGaussian
from flowkit.posterior_head import attach_posterior_head
from flowkit.presets import iaf, maf, nsf, nsf_coupling


def standard_normal(batch: int, features: int) -> Tensor:
    return torch.randn(batch, features, dtype=torch.float64)


@dataclass
class Case:
    """A bijector configuration and what can be asserted about it.

    Attributes:
        name: test id.
        make: builds a fresh bijector (float32; the tests convert it to float64).
        features: event size.
        context_features: context width, 0 for none.
        identity_at_init: whether a fresh instance is the identity map.
        has_parameters: whether it has trainable parameters (a permutation has none).
        sample_input: draws ``(batch, features)`` float64 inputs inside the bijector's domain.
    """

    name: str
    make: Callable[[], Bijector]
    features: int
    context_features: int = 0
    identity_at_init: bool = True
    has_parameters: bool = True
    sample_input: Callable[[int, int], Tensor] = field(default=standard_normal)


BIJECTOR_CASES: list[Case] = [
    Case("coupling-affine", lambda: Coupling(Affine(), 4, hidden_features=8), 4),
    Case("coupling-affine-context",
         lambda: Coupling(Affine(), 4, context_features=3, hidden_features=8), 4, context_features=3),
    Case("coupling-additive", lambda: Coupling(Additive(), 3, hidden_features=8), 3),
    Case("coupling-additive-context",
         lambda: Coupling(Additive(), 3, context_features=2, hidden_features=[8]), 3, context_features=2),
    Case("coupling-affine-custom-mask",
         lambda: Coupling(Affine(), 5, mask=torch.tensor([False, True, False, True, True]),
                          hidden_features=[8, 8, 8]), 5),
    Case("permutation-reverse", lambda: Permutation.reverse(4), 4,
         identity_at_init=False, has_parameters=False),
    Case("permutation-random", lambda: Permutation.random(5, seed=3), 5,
         identity_at_init=False, has_parameters=False),
    Case("permutation-given", lambda: Permutation([2, 0, 1]), 3,
         identity_at_init=False, has_parameters=False),
    Case("actnorm", lambda: ActNorm(3), 3),
    Case("chain-realnvp-context",
         lambda: Chain([Coupling(Affine(), 4, context_features=2, hidden_features=8),
                        Permutation.reverse(4), ActNorm(4),
                        Coupling(Affine(), 4, context_features=2, hidden_features=8)]),
         4, context_features=2, identity_at_init=False),
    Case("inverse-coupling", lambda: Inverse(Coupling(Affine(), 4, hidden_features=8)), 4),
    # Splines: scale-2.5 inputs put about a third of the points in the linear tails (|x| > 2.5).
    Case("coupling-spline",
         lambda: Coupling(RationalQuadraticSpline(num_bins=5, tail_bound=2.5), 4, hidden_features=8), 4,
         sample_input=lambda batch, features: 2.5 * standard_normal(batch, features)),
    Case("coupling-spline-context",
         lambda: Coupling(RationalQuadraticSpline(num_bins=4, tail_bound=2.0), 3, context_features=2,
                          hidden_features=8), 3, context_features=2,
         sample_input=lambda batch, features: 2.5 * standard_normal(batch, features)),
    # Masked autoregressive (MAF, NSF-AR, IAF); the inverse runs MADE.solve, the fast path.
    Case("maf-affine", lambda: MaskedAutoregressive(Affine(), 4, hidden_features=[10, 10]), 4),
    Case("maf-affine-context-random-order",
         lambda: MaskedAutoregressive(Affine(), 4, context_features=2, hidden_features=[10, 10],
                                      order="random", seed=1), 4, context_features=2),
    Case("maf-spline",
         lambda: MaskedAutoregressive(RationalQuadraticSpline(num_bins=5, tail_bound=2.5), 3,
                                      hidden_features=[9, 9]), 3,
         sample_input=lambda batch, features: 2.5 * standard_normal(batch, features)),
    Case("maf-spline-context-random-order-residual",
         lambda: MaskedAutoregressive(RationalQuadraticSpline(num_bins=4, tail_bound=2.0), 4,
                                      context_features=3, hidden_features=[12, 12], order="random",
                                      seed=2, residual=True), 4, context_features=3,
         sample_input=lambda batch, features: 2.5 * standard_normal(batch, features)),
    # Large enough for MADE's block-triangular products (flowkit.masked_products): natural order,
    # outputs (8 x 11) at least twice the hidden width.
    Case("maf-spline-blocked-context-residual",
         lambda: MaskedAutoregressive(RationalQuadraticSpline(num_bins=4, tail_bound=2.0), 8,
                                      context_features=2, hidden_features=[12, 12], residual=True), 8,
         context_features=2, sample_input=lambda batch, features: 2.5 * standard_normal(batch, features)),
    Case("iaf", lambda: Inverse(MaskedAutoregressive(Affine(), 4, hidden_features=[10, 10])), 4),
    Case("iaf-context",
         lambda: Inverse(MaskedAutoregressive(Affine(), 3, context_features=2, hidden_features=[8, 8],
                                              order="random", seed=5)), 3, context_features=2),
    # Linear, normalisation and elementwise layers (splines, LU, batch norm, fixed maps).
    Case("lu-linear", lambda: LULinear(4, seed=1), 4, identity_at_init=False),
    Case("whitening", lambda: Whitening(3).fit(torch.randn(200, 3) @ torch.tensor([[1.0, 0.7, 0.0], [0.0, 0.5, 0.2],
                                                                                   [0.0, 0.0, 2.0]])),
         3, identity_at_init=False),
    Case("lu-linear-no-permutation-no-bias", lambda: LULinear(3, permute=False, bias=False), 3),
    # eps=1e-9: the init map is x / sqrt(1 + eps), within the identity test's 1e-6 only for small eps.
    Case("batchnorm", lambda: BatchNorm(3, eps=1e-9), 3),
    Case("chain-spline-lu-batchnorm-context",
         lambda: Chain([Coupling(RationalQuadraticSpline(num_bins=4, tail_bound=2.5), 3, context_features=2,
                                 hidden_features=8), LULinear(3, seed=2), BatchNorm(3)]),
         3, context_features=2, identity_at_init=False,
         sample_input=lambda batch, features: 2.5 * standard_normal(batch, features)),
    Case("sigmoid", lambda: Sigmoid(), 3, identity_at_init=False, has_parameters=False,
         sample_input=lambda batch, features: 3 * standard_normal(batch, features)),
    Case("logit", lambda: Logit(), 3, identity_at_init=False, has_parameters=False,
         sample_input=lambda batch, features: 0.01 + 0.98 * torch.rand(batch, features, dtype=torch.float64)),
    Case("logit-alpha", lambda: Logit(alpha=0.05), 2, identity_at_init=False, has_parameters=False,
         sample_input=lambda batch, features: torch.rand(batch, features, dtype=torch.float64)),
    Case("softplus", lambda: Softplus(), 3, identity_at_init=False, has_parameters=False,
         sample_input=lambda batch, features: torch.exp(2 * standard_normal(batch, features))),
    # Preprocessing of tabular models: integer cells (inputs on the integers, where the inverse
    # of forward is exact), and bounds of each kind side by side with an unbounded column.
    Case("dequantize", lambda: Dequantize(3, columns=[0, 2]), 3, identity_at_init=False, has_parameters=False,
         sample_input=lambda batch, features: torch.stack([
             torch.randint(-3, 9, (batch,)).double(), standard_normal(batch, 1)[:, 0],
             torch.randint(0, 2, (batch,)).double()], 1)),
    Case("bounds", lambda: Bounds([0.0, None, -1.0, None], [None, 2.0, 1.0, None], [1.5, 0.5, 1.0, 1.0]), 4,
         identity_at_init=False, has_parameters=False,
         sample_input=lambda batch, features: torch.stack([
             torch.exp(standard_normal(batch, 1)[:, 0]), 2 - torch.exp(standard_normal(batch, 1)[:, 0]),
             0.98 * (2 * torch.rand(batch, dtype=torch.float64) - 1), standard_normal(batch, 1)[:, 0]], 1)),
    # Free-parameter elementwise transformers (the posterior head's marginal spline).
    Case("unconditional-spline", lambda: Unconditional(RationalQuadraticSpline(num_bins=5, tail_bound=2.5), 3), 3,
         sample_input=lambda batch, features: 2.5 * standard_normal(batch, features)),
    Case("unconditional-affine", lambda: Unconditional(Affine(), 2), 2),
]

# 2-D flows whose density must integrate to one; each builder takes context_features.
FLOW_CASES: dict[str, Callable[[], flowkit.Flow]] = {
    "realnvp": lambda: flowkit.realnvp(2, transforms=3, hidden_features=16),
    "nice": lambda: flowkit.realnvp(2, transforms=3, hidden_features=16, additive=True, actnorm=True),
    "maf": lambda: maf(2, transforms=3, hidden_features=16),
    "maf-random": lambda: maf(2, transforms=3, hidden_features=16, permutation="random", residual=True),
    "iaf": lambda: iaf(2, transforms=3, hidden_features=16),
    "nsf": lambda: nsf(2, transforms=2, hidden_features=16, num_bins=5),
    "nsf-coupling": lambda: nsf_coupling(2, transforms=2, hidden_features=16, num_bins=5),
    "spline-coupling-lu-batchnorm": lambda: flowkit.Flow(DiagGaussian(2), Chain([
        Coupling(RationalQuadraticSpline(num_bins=5, tail_bound=3.0), 2, hidden_features=16),
        LULinear(2, seed=0), BatchNorm(2),
        Coupling(RationalQuadraticSpline(num_bins=5, tail_bound=3.0), 2, hidden_features=16),
        LULinear(2, seed=1)])),
    "nsf-posterior-head": lambda: attach_posterior_head(nsf(2, transforms=1, hidden_features=16, num_bins=5)),
}


def perturb(module: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> None:
    """Move every parameter off its initial value so that invariants are not checked only at the
    identity (zero-initialised output layers would make most of them trivial)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.add_(scale * noise)


def prepared(case: Case, seed: int = 0) -> Bijector:
    """A float64 instance in eval mode, with data-dependent initialisation done, perturbed."""
    torch.manual_seed(seed)
    bijector = case.make().double()
    warm_up = case.sample_input(64, case.features)
    context = context_for(case, 64)
    bijector.train()
    with torch.no_grad():
        bijector(warm_up, context)
    bijector.eval()
    perturb(bijector, seed=seed)
    return bijector


def context_for(case: Case, batch: int) -> Tensor | None:
    if case.context_features == 0:
        return None
    return torch.randn(batch, case.context_features, dtype=torch.float64)
