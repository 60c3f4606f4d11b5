"""Ready-made flows. Each preset is registered by name so a saved model can be rebuilt from its
config (``build(name, **kwargs)``), and each returned ``Flow`` carries that config in
``flow.config``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from flowkit.bijectors.base import Bijector, Chain
from flowkit.bijectors.coupling import Coupling
from flowkit.bijectors.linear import Permutation
from flowkit.bijectors.normalization import ActNorm
from flowkit.bijectors.transformers import Additive, Affine
from flowkit.distributions import DiagGaussian
from flowkit.flow import Flow

PRESETS: dict[str, Callable[..., Flow]] = {}


def preset(function: Callable[..., Flow]) -> Callable[..., Flow]:
    """Register a preset and attach its name and keyword arguments to the flow it builds."""

    @functools.wraps(function)
    def build_flow(features: int, **kwargs) -> Flow:
        flow = function(features, **kwargs)
        flow.config = {"preset": function.__name__, "features": features, **kwargs}
        return flow

    PRESETS[function.__name__] = build_flow
    return build_flow


def build(preset: str, **kwargs) -> Flow:
    """Build a registered preset by name (``build(**flow.config)`` rebuilds a flow)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS))}")
    return PRESETS[preset](**kwargs)


def make_permutation(kind: str, features: int, seed: int) -> Bijector:
    """The permutation placed between transforms: ``reverse`` or ``random`` (seeded)."""
    if kind == "reverse":
        return Permutation.reverse(features)
    if kind == "random":
        return Permutation.random(features, seed=seed)
    raise ValueError(f"unknown permutation {kind!r}; choose reverse or random")


@preset
def realnvp(
    features: int,
    context_features: int = 0,
    transforms: int = 5,
    hidden_features: int | Sequence[int] = 64,
    additive: bool = False,
    actnorm: bool = False,
    permutation: str = "reverse",
    seed: int = 0,
) -> Flow:
    """RealNVP (affine coupling), or NICE with ``additive=True``.

    Example:
        >>> import torch, flowkit
        >>> flow = flowkit.realnvp(features=3, context_features=1, transforms=2)
        >>> flow.sample(4, context=torch.ones(1)).shape
        torch.Size([4, 3])
    """
    layers: list[Bijector] = []
    for index in range(transforms):
        if actnorm:
            layers.append(ActNorm(features))
        transformer = Additive() if additive else Affine()
        layers.append(Coupling(transformer, features, context_features=context_features,
                               hidden_features=hidden_features))
        if index < transforms - 1:
            layers.append(make_permutation(permutation, features, seed + index))
    return Flow(DiagGaussian(features), Chain(layers), context_features=context_features)
