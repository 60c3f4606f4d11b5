"""Bridges to nflows: copy an nflows MAF into flowkit, and drive an nflows flow through flowkit's
``Flow`` interface.

nflows (0.14) is imported lazily, only by the functions that need it, so flowkit does not
depend on it. Two differences between the libraries are bridged here:

* **Affine parameterisation.** nflows' ``MaskedAffineAutoregressiveTransform`` computes
  ``z = x * scale + shift`` with ``scale = softplus(u) + 1e-3`` (releases before 0.14 used
  ``sigmoid(u + 2) + 1e-3``) and orders each feature's parameters as ``(u, shift)``. flowkit's
  ``Affine`` orders them ``(shift, u)`` and offsets the softplus so that zero parameters are the
  identity. Rather than remap weights through a nonlinearity (impossible exactly), the mirror
  uses :class:`NflowsAffine`, a transformer with nflows' own formula and parameter order.
* **Hidden-unit order.** nflows assigns MADE's hidden degrees cyclically (``arange(H) % (D-1)
  + 1``); flowkit sorts the same multiset of degrees, so that its fast inverse can step through
  contiguous slices. A stable sort of nflows' degrees gives the permutation of hidden units,
  applied to the rows of each layer and the columns of the next: the same function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit.bijectors.autoregressive import MaskedAutoregressive
from flowkit.bijectors.base import Bijector, Chain
from flowkit.bijectors.linear import Permutation
from flowkit.bijectors.transformers import Transformer
from flowkit.distributions import DiagGaussian
from flowkit.flow import Flow
from flowkit.nn import hidden_sizes
from flowkit.presets import preset


class NflowsAffine(Transformer):
    """nflows' affine transformer: ``y = x * scale + shift``, ``scale = softplus(u) + eps``.

    Parameters per feature are ``(u, shift)`` in that order, as nflows lays them out. Unlike
    flowkit's ``Affine`` it is *not* the identity at zero parameters (scale ``log 2 + eps``); it
    exists to mirror nflows models exactly.

    Args:
        eps: the scale floor (nflows uses 1e-3).
        legacy_sigmoid: use ``sigmoid(u + 2) + eps``, the formula of nflows before 0.14.

    Example:
        >>> import torch
        >>> y, log_det = NflowsAffine().forward(torch.ones(1, 2), torch.zeros(1, 2, 2))
        >>> round(y[0, 0].item(), 4)
        0.6941
    """

    num_params = 2

    def __init__(self, eps: float = 1e-3, legacy_sigmoid: bool = False) -> None:
        self.eps = eps
        self.legacy_sigmoid = legacy_sigmoid

    def _scale_shift(self, params: Tensor) -> tuple[Tensor, Tensor]:
        unconstrained, shift = params[..., 0], params[..., 1]
        squash = torch.sigmoid(unconstrained + 2.0) if self.legacy_sigmoid else F.softplus(unconstrained)
        return squash + self.eps, shift

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        scale, shift = self._scale_shift(params)
        return x * scale + shift, torch.log(scale)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        scale, shift = self._scale_shift(params)
        return (y - shift) / scale, -torch.log(scale)

    def config(self) -> dict:
        return {"eps": self.eps, "legacy_sigmoid": self.legacy_sigmoid}


def _copy_made(source: nn.Module, target: MaskedAutoregressive) -> None:
    """Copy an nflows MADE (feedforward blocks) into ``target.made``, sorting hidden units."""
    source_layers = [source.initial_layer] + [block.linear for block in source.blocks]
    previous = torch.arange(target.features)  # input columns keep their (natural) order
    with torch.no_grad():
        for theirs, ours in zip(source_layers, target.made.layers, strict=True):
            order = torch.sort(theirs.degrees, stable=True).indices
            if not torch.equal(theirs.mask[order][:, previous], ours.mask):
                raise ValueError("nflows MADE masks do not match flowkit's after sorting hidden units")
            ours.weight.copy_(theirs.weight[order][:, previous])
            ours.bias.copy_(theirs.bias[order])
            previous = order
        # nflows' output units are feature-major, (features, num_params) in C order; flowkit's
        # order is MADE.by_feature's, so both sides are compared and copied as (features, num_params, ...).
        final, made = source.final_layer, target.made
        theirs = lambda rows: rows.view(made.features, made.num_params, *rows.shape[1:])
        if not torch.equal(theirs(final.mask[:, previous]), made.by_feature(made.output.mask)):
            raise ValueError("nflows MADE output mask does not match flowkit's")
        made.by_feature(made.output.weight).copy_(theirs(final.weight[:, previous]))
        made.by_feature(made.output.bias).copy_(theirs(final.bias))


def _convert(transform: nn.Module, features: int) -> Bijector:
    from nflows.transforms import MaskedAffineAutoregressiveTransform
    from nflows.transforms.permutations import Permutation as NflowsPermutation

    if isinstance(transform, NflowsPermutation):
        if transform._dim != 1:
            raise ValueError("only permutations of dimension 1 are supported")
        return Permutation(transform._permutation.clone())
    if isinstance(transform, MaskedAffineAutoregressiveTransform):
        made = transform.autoregressive_net
        if made.use_residual_blocks or hasattr(made, "context_layer"):
            raise ValueError("only unconditional nflows MADEs with feedforward blocks are supported")
        if any(block.batch_norm is not None for block in made.blocks):
            raise ValueError("nflows MADEs with batch norm are not supported")
        widths = [made.initial_layer.out_features] + [block.linear.out_features for block in made.blocks]
        layer = MaskedAutoregressive(NflowsAffine(eps=transform._epsilon), features, hidden_features=widths)
        _copy_made(made, layer)
        return layer
    raise ValueError(f"cannot convert nflows transform {type(transform).__name__}")


def maf_from_nflows(nflows_flow: nn.Module) -> Flow:
    """A flowkit ``Flow`` computing exactly the same density as an nflows MAF.

    The nflows flow must have a ``StandardNormal`` base and a ``CompositeTransform`` of
    ``MaskedAffineAutoregressiveTransform`` (``use_residual_blocks=False``, no context, no batch
    norm) and permutations. Weights are copied; the result has the dtype of the source.

    Example:
        >>> import torch
        >>> from nflows import distributions, flows, transforms
        >>> source = flows.Flow(transforms.CompositeTransform([
        ...     transforms.MaskedAffineAutoregressiveTransform(3, 8, use_residual_blocks=False),
        ...     transforms.ReversePermutation(3)]), distributions.StandardNormal([3]))
        >>> flow = maf_from_nflows(source)
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(flow.log_prob(x), source.log_prob(x), atol=1e-5)
        True
    """
    from nflows.distributions import StandardNormal
    from nflows.transforms import CompositeTransform

    base = nflows_flow._distribution
    if not isinstance(base, StandardNormal) or len(base._shape) != 1:
        raise ValueError("the nflows flow must have a 1-D StandardNormal base")
    features = int(base._shape[0])
    transform = nflows_flow._transform
    parts = list(transform._transforms) if isinstance(transform, CompositeTransform) else [transform]
    dtype = next(nflows_flow.parameters()).dtype
    chain = Chain([_convert(part, features) for part in parts])
    return Flow(DiagGaussian(features), chain).to(dtype)


class NflowsFlow(nn.Module):
    """Drive an nflows flow through flowkit's ``Flow`` interface (trainers, CLI, estimators).

    nflows samples ``num_samples`` per context row; flowkit draws one sample per context row,
    so with a context this wrapper asks nflows for one sample per row.

    Args:
        flow: an ``nflows.flows.Flow``.
        features: event size (default: read from the base distribution's shape).
        context_features: context width, 0 for an unconditional flow.

    Example:
        >>> import torch
        >>> from nflows import distributions, flows, transforms
        >>> source = flows.Flow(transforms.MaskedAffineAutoregressiveTransform(2, 8),
        ...                     distributions.StandardNormal([2]))
        >>> flow = NflowsFlow(source)
        >>> flow.log_prob(torch.zeros(3, 2)).shape, flow.sample(5).shape
        (torch.Size([3]), torch.Size([5, 2]))
    """

    def __init__(self, flow: nn.Module, features: int | None = None, context_features: int = 0) -> None:
        super().__init__()
        self.flow = flow
        self.features = features if features is not None else math.prod(flow._distribution._shape)
        self.context_features = context_features

    def _check(self, x: Tensor | None, context: Tensor | None, batch: int) -> Tensor | None:
        if x is not None and (x.dim() != 2 or x.shape[1] != self.features):
            raise ValueError(f"expected x of shape (batch, {self.features}), got {tuple(x.shape)}")
        if (context is None) != (self.context_features == 0):
            raise ValueError(f"this flow takes {self.context_features} context features")
        if context is not None and context.dim() == 1:
            context = context.expand(batch, -1)
        return context

    def log_prob(self, x: Tensor, context: Tensor | None = None, batch_size: int | None = None) -> Tensor:
        """Log-density of each row of ``x``, shape ``(batch,)``; ``batch_size`` scores in chunks."""
        context = self._check(x, context, x.shape[0])
        step = batch_size or max(x.shape[0], 1)
        return torch.cat([
            self.flow.log_prob(x[i:i + step], context=None if context is None else context[i:i + step])
            for i in range(0, x.shape[0], step)
        ])

    def rsample_and_log_prob(self, num_samples: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Samples (gradients flow through them) and their log-density, from nflows' fused call."""
        context = self._check(None, context, num_samples)
        if context is None:
            return self.flow.sample_and_log_prob(num_samples)
        x, log_prob = self.flow.sample_and_log_prob(1, context=context)
        return x[:, 0], log_prob[:, 0]

    def rsample(self, num_samples: int, context: Tensor | None = None) -> Tensor:
        context = self._check(None, context, num_samples)
        return self.flow.sample(num_samples) if context is None else self.flow.sample(1, context=context)[:, 0]

    def sample(self, num_samples: int, context: Tensor | None = None, batch_size: int | None = None) -> Tensor:
        """Samples without gradients; ``batch_size`` draws them in chunks."""
        context = self._check(None, context, num_samples)
        with torch.no_grad():
            step = batch_size or max(num_samples, 1)
            return torch.cat([
                self.rsample(min(step, num_samples - i), None if context is None else context[i:i + step])
                for i in range(0, num_samples, step)
            ])

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.log_prob(x, context)


def _nflows_autoregressive(features: int, context_features: int, transforms: int,
                           hidden_features: int | Sequence[int], make_layer) -> NflowsFlow:
    """An nflows stack of autoregressive layers with reversals between them, wrapped."""
    from nflows import distributions, flows
    from nflows import transforms as nflows_transforms

    widths = hidden_sizes(hidden_features)
    if len(set(widths)) != 1:
        raise ValueError(f"nflows MADEs have equal hidden widths, got {widths}")
    # nflows' MADE: an initial masked layer plus num_blocks blocks, so len(widths) - 1 blocks.
    options = {"hidden_features": widths[0], "num_blocks": len(widths) - 1, "use_residual_blocks": False,
               "context_features": context_features or None}
    layers: list[nn.Module] = []
    for index in range(transforms):
        layers.append(make_layer(nflows_transforms, options))
        if index < transforms - 1:
            layers.append(nflows_transforms.ReversePermutation(features))
    source = flows.Flow(nflows_transforms.CompositeTransform(layers), distributions.StandardNormal([features]))
    return NflowsFlow(source, features, context_features)


@preset
def nflows_maf(features: int, context_features: int = 0, transforms: int = 5,
               hidden_features: int | Sequence[int] = 64) -> NflowsFlow:
    """nflows' own MAF behind flowkit's interface, so flowkit's trainers and CLI drive it
    (``flowkit fit data.csv --flow nflows_maf``) and its model files save and load like any preset.

    Example:
        >>> import torch
        >>> flow = nflows_maf(3, transforms=2, hidden_features=16)
        >>> flow.log_prob(torch.zeros(2, 3)).shape, flow.config["preset"]
        (torch.Size([2]), 'nflows_maf')
    """
    return _nflows_autoregressive(
        features, context_features, transforms, hidden_features,
        lambda t, options: t.MaskedAffineAutoregressiveTransform(features, **options))


@preset
def nflows_nsf(features: int, context_features: int = 0, transforms: int = 5,
               hidden_features: int | Sequence[int] = 64, num_bins: int = 8, tail_bound: float = 3.0) -> NflowsFlow:
    """nflows' autoregressive neural spline flow (linear tails) behind flowkit's interface."""
    return _nflows_autoregressive(
        features, context_features, transforms, hidden_features,
        lambda t, options: t.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            features, num_bins=num_bins, tails="linear", tail_bound=tail_bound, **options))
