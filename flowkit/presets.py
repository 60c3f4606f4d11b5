"""Ready-made flows. Each preset is registered by name so a saved model can be rebuilt from its
config (``build(name, **kwargs)``), and each returned ``Flow`` carries that config in
``flow.config``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from flowkit.bijectors.autoregressive import MaskedAutoregressive
from flowkit.bijectors.base import Bijector, Chain, Inverse
from flowkit.bijectors.coupling import Coupling
from flowkit.bijectors.linear import LULinear, Permutation, Whitening
from flowkit.bijectors.normalization import ActNorm, BatchNorm
from flowkit.bijectors.preprocessing import make_preprocessing
from flowkit.bijectors.transformers import Additive, Affine, RationalQuadraticSpline, Transformer
from flowkit.distributions import DiagGaussian
from flowkit.flow import Flow

PRESETS: dict[str, Callable[..., Flow]] = {}


def preset(function: Callable[..., Flow]) -> Callable[..., Flow]:
    """Register a preset and attach its name and keyword arguments to the flow it builds.

    Every registered preset also takes ``whiten=True``: a learned ``Whitening`` layer at the latent
    end of the chain, which ``flowkit.train.fit_tabular`` initialises from the training rows so the
    flow starts as their full-covariance Gaussian. And every
    preset takes ``trainable_base=True``: the base Gaussian's ``loc`` and ``scale`` become
    parameters. Spline flows need it to fit a target wider than their tail bound
    by reverse KL (each spline maps ``[-B, B]`` onto itself and is the identity outside, so with a
    fixed N(0, I) base almost no mass leaves ``[-B, B]``); density fitting of standardised data
    does not. And ``preprocessing=[...]`` (a JSON-able spec, see
    ``flowkit.bijectors.preprocessing.make_preprocessing``) puts dequantisation and bounds layers
    in front of everything else, so ``log_prob`` is in the data's units.
    """

    @functools.wraps(function)
    def build_flow(features: int, trainable_base: bool = False, whiten: bool = False,
                   preprocessing: list | None = None, **kwargs) -> Flow:
        flow = function(features, **kwargs)
        if whiten:
            if not hasattr(flow, "bijector"):
                raise ValueError(f"{function.__name__} has no flowkit chain to put a whitening layer in")
            body = list(flow.bijector.bijectors) if isinstance(flow.bijector, Chain) else [flow.bijector]
            flow.bijector = Chain([*body, Whitening(features)])
            kwargs["whiten"] = True
        if trainable_base:
            if not isinstance(getattr(flow, "base", None), DiagGaussian):
                raise ValueError(f"{function.__name__} has no flowkit base distribution to train")
            flow.base = DiagGaussian(features, trainable=True)
            kwargs["trainable_base"] = True
        if preprocessing:
            if not hasattr(flow, "bijector"):
                raise ValueError(f"{function.__name__} has no flowkit chain to put preprocessing layers in")
            body = list(flow.bijector.bijectors) if isinstance(flow.bijector, Chain) else [flow.bijector]
            flow.bijector = Chain([*make_preprocessing(preprocessing, features), *body])
            kwargs["preprocessing"] = list(preprocessing)
        flow.config = {"preset": function.__name__, "features": features, **kwargs}
        return flow

    PRESETS[function.__name__] = build_flow
    return build_flow


def build(preset: str, **kwargs) -> Flow:
    """Build a registered preset by name (``build(**flow.config)`` rebuilds a flow)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS))}")
    posterior_head = kwargs.pop("posterior_head", False)
    flow = PRESETS[preset](**kwargs)
    if posterior_head:  # added by fit_variational: see flowkit.posterior_head
        from flowkit.posterior_head import attach_posterior_head

        attach_posterior_head(flow)
    return flow


def make_permutation(kind: str, features: int, seed: int) -> Bijector:
    """The mixing layer placed between transforms: ``reverse``, ``random`` (seeded) or ``lu``
    (a learned ``LULinear``)."""
    if kind == "reverse":
        return Permutation.reverse(features)
    if kind == "random":
        return Permutation.random(features, seed=seed)
    if kind == "lu":
        return LULinear(features, seed=seed)
    raise ValueError(f"unknown permutation {kind!r}; choose reverse, random or lu")


def _stack(
    features: int,
    context_features: int,
    transforms: int,
    make_layer: Callable[[int], list[Bijector]],
    permutation: str,
    seed: int,
    batch_norm: bool,
) -> Flow:
    """``transforms`` blocks from ``make_layer(index)``, with a mixing layer (and optionally
    BatchNorm) between consecutive blocks, all in one flat chain."""
    layers: list[Bijector] = []
    for index in range(transforms):
        layers.extend(make_layer(index))
        if index < transforms - 1:
            layers.append(make_permutation(permutation, features, seed + index))
            if batch_norm:
                layers.append(BatchNorm(features))
    return Flow(DiagGaussian(features), Chain(layers), context_features=context_features)


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
    transformer = Additive() if additive else Affine()

    def block(index: int) -> list[Bijector]:
        coupling = Coupling(transformer, features, context_features=context_features,
                            hidden_features=hidden_features)
        return [ActNorm(features), coupling] if actnorm else [coupling]

    return _stack(features, context_features, transforms, block, permutation, seed, batch_norm=False)


def _autoregressive(transformer: Transformer, features: int, context_features: int,
                    hidden_features: int | Sequence[int], residual: bool) -> MaskedAutoregressive:
    return MaskedAutoregressive(transformer, features, context_features=context_features,
                                hidden_features=hidden_features, residual=residual)


@preset
def maf(
    features: int,
    context_features: int = 0,
    transforms: int = 5,
    hidden_features: int | Sequence[int] = 64,
    residual: bool = False,
    permutation: str = "reverse",
    seed: int = 0,
    batch_norm: bool = False,
) -> Flow:
    """Masked autoregressive flow (Papamakarios et al., 2017): one-pass density, fast sampling.

    Example:
        >>> import torch, flowkit.presets as presets
        >>> flow = presets.maf(features=3, transforms=2, hidden_features=16)
        >>> flow.sample(4).shape
        torch.Size([4, 3])
    """
    return _stack(features, context_features, transforms,
                  lambda index: [_autoregressive(Affine(), features, context_features,
                                                 hidden_features, residual)],
                  permutation, seed, batch_norm)


@preset
def iaf(
    features: int,
    context_features: int = 0,
    transforms: int = 5,
    hidden_features: int | Sequence[int] = 64,
    residual: bool = False,
    permutation: str = "reverse",
    seed: int = 0,
    batch_norm: bool = False,
) -> Flow:
    """Inverse autoregressive flow (Kingma et al., 2016): one-pass sampling and
    ``rsample_and_log_prob`` (reverse-KL), sequential density of external points.

    Example:
        >>> import torch, flowkit.presets as presets
        >>> flow = presets.iaf(features=3, transforms=2, hidden_features=16)
        >>> x, log_q = flow.rsample_and_log_prob(4)
        >>> x.shape, log_q.shape
        (torch.Size([4, 3]), torch.Size([4]))
    """
    return _stack(features, context_features, transforms,
                  lambda index: [Inverse(_autoregressive(Affine(), features, context_features,
                                                         hidden_features, residual))],
                  permutation, seed, batch_norm)


@preset
def nsf(
    features: int,
    context_features: int = 0,
    transforms: int = 5,
    hidden_features: int | Sequence[int] = 64,
    num_bins: int = 8,
    tail_bound: float = 3.0,
    residual: bool = False,
    permutation: str = "reverse",
    seed: int = 0,
    batch_norm: bool = False,
) -> Flow:
    """Autoregressive neural spline flow, NSF-AR (Durkan et al., 2019).

    Example:
        >>> import torch, flowkit.presets as presets
        >>> flow = presets.nsf(features=3, transforms=2, hidden_features=16, num_bins=4)
        >>> flow.log_prob(torch.zeros(2, 3)).shape
        torch.Size([2])
    """
    return _stack(features, context_features, transforms,
                  lambda index: [_autoregressive(RationalQuadraticSpline(num_bins, tail_bound), features,
                                                 context_features, hidden_features, residual)],
                  permutation, seed, batch_norm)


@preset
def nsf_coupling(
    features: int,
    context_features: int = 0,
    transforms: int = 5,
    hidden_features: int | Sequence[int] = 64,
    num_bins: int = 8,
    tail_bound: float = 3.0,
    permutation: str = "reverse",
    seed: int = 0,
    batch_norm: bool = False,
) -> Flow:
    """Coupling neural spline flow, NSF-C (Durkan et al., 2019): one pass in both directions.

    Example:
        >>> import torch, flowkit.presets as presets
        >>> flow = presets.nsf_coupling(features=4, context_features=1, transforms=2, hidden_features=16)
        >>> flow.sample(3, context=torch.ones(1)).shape
        torch.Size([3, 4])
    """
    return _stack(features, context_features, transforms,
                  lambda index: [Coupling(RationalQuadraticSpline(num_bins, tail_bound), features,
                                          context_features=context_features, hidden_features=hidden_features)],
                  permutation, seed, batch_norm)
