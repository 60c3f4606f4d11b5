"""The four flows of the suite (MAF, NSF-AR, NSF-C, RealNVP) in flowkit, zuko, nflows and normflows,
configured alike: ``transforms`` layers, each conditioner two hidden layers of ``hidden`` units
(ReLU, no residual blocks, no batch norm), ``bins`` spline bins, a permutation between layers and
a standard normal base. Coupling layers pass the first ``features // 2`` features through and
transform the rest, so every library's conditioner has the same layer shapes; ``parameters``
counts what each built, which is what proves the configurations match (the Markdown prints it).

``build(library, flow, features, args)`` returns an ``Entry``: the module, ``log_prob(x)`` and
``sample(n)``. Peers' known differences: zuko's splines act on ``[-5, 5]`` (its fixed default)
where the others use ``[-3, 3]``; normflows' coupling spline also transforms the identity half
by an unconditional spline (``apply_unconditional_transform``, as its wrapper does), which adds
``(3 * bins - 1) * features // 2`` parameters per layer and a little elementwise work.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

LIBRARIES = ("flowkit", "zuko", "nflows", "normflows")
FLOWS = ("MAF", "NSF-AR", "NSF-C", "RealNVP")
AUTOREGRESSIVE = ("MAF", "NSF-AR")


@dataclass
class Entry:
    """One library's build of one flow."""

    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int], Tensor]

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


def params_per_feature(flow: str, bins: int) -> int:
    return 2 if flow in ("MAF", "RealNVP") else 3 * bins - 1


def layer_shapes(flow: str, features: int, hidden: int, bins: int) -> list[tuple[int, int]]:
    """(in, out) of each conditioner layer of one transform: MADE's masks do not change the shapes'
    matmul cost, a coupling MLP sees ``features // 2`` inputs and parameterises the rest."""
    per = params_per_feature(flow, bins)
    if flow in AUTOREGRESSIVE:
        return [(features, hidden), (hidden, hidden), (hidden, features * per)]
    kept = features // 2
    return [(kept, hidden), (hidden, hidden), (hidden, (features - kept) * per)]


def perturb(module: nn.Module, scale: float = 0.01) -> None:
    """Move parameters off their (possibly identity) initialisation, identically in all libraries."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator).to(parameter)
            parameter.add_(scale * noise)


def _flowkit(flow: str, features: int, args: argparse.Namespace) -> Entry:
    from flowkit.presets import maf, nsf, nsf_coupling, realnvp

    hidden = [args.hidden, args.hidden]
    common = {"transforms": args.transforms, "hidden_features": hidden}
    spline = {"num_bins": args.bins, "tail_bound": 3.0}
    model = {"MAF": lambda: maf(features, **common), "NSF-AR": lambda: nsf(features, **common, **spline),
             "NSF-C": lambda: nsf_coupling(features, **common, **spline),
             "RealNVP": lambda: realnvp(features, **common)}[flow]()
    return Entry(model, model.log_prob, model.sample)


def _zuko(flow: str, features: int, args: argparse.Namespace) -> Entry:
    import zuko
    from zuko.flows.coupling import GeneralCouplingTransform
    from zuko.transforms import MonotonicRQSTransform

    hidden = (args.hidden, args.hidden)
    if flow == "MAF":
        model = zuko.flows.MAF(features, transforms=args.transforms, hidden_features=hidden)
    elif flow == "NSF-AR":
        model = zuko.flows.NSF(features, transforms=args.transforms, bins=args.bins, hidden_features=hidden)
    else:
        spline = {"univariate": MonotonicRQSTransform, "shapes": [(args.bins,), (args.bins,), (args.bins - 1,)]}
        kept = features // 2
        masks = [torch.arange(features) < kept, torch.arange(features) >= features - kept]
        layers = [GeneralCouplingTransform(features, mask=masks[i % 2], hidden_features=hidden,
                                           **(spline if flow == "NSF-C" else {}))
                  for i in range(args.transforms)]
        base = zuko.flows.UnconditionalDistribution(zuko.distributions.DiagNormal, torch.zeros(features),
                                                    torch.ones(features), buffer=True)
        model = zuko.flows.Flow(layers, base)
    return Entry(model, lambda x: model().log_prob(x), lambda n: model().sample((n,)))


class _ContextFree(nn.Module):
    """An MLP called as ``net(inputs, context)`` by coupling transforms (the context is unused)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        return self.network(inputs)


def _nflows(flow: str, features: int, args: argparse.Namespace) -> Entry:
    from nflows import distributions, flows, transforms
    from nflows.nn.nets import MLP

    def mlp(in_features: int, out_features: int) -> nn.Module:
        return _ContextFree(MLP((in_features,), (out_features,), [args.hidden, args.hidden]))

    kept = features // 2
    mask = torch.cat([-torch.ones(kept), torch.ones(features - kept)])  # > 0: transformed

    def layer() -> nn.Module:
        if flow == "MAF":  # num_blocks=1 with feedforward blocks: an initial masked layer and one block
            return transforms.MaskedAffineAutoregressiveTransform(features, args.hidden, num_blocks=1,
                                                                  use_residual_blocks=False)
        if flow == "NSF-AR":
            return transforms.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                features, args.hidden, num_bins=args.bins, tails="linear", tail_bound=3.0, num_blocks=1,
                use_residual_blocks=False)
        if flow == "NSF-C":
            return transforms.PiecewiseRationalQuadraticCouplingTransform(
                mask, mlp, num_bins=args.bins, tails="linear", tail_bound=3.0)
        return transforms.AffineCouplingTransform(mask, mlp)

    layers: list[nn.Module] = []
    for index in range(args.transforms):
        layers.append(layer())
        if index < args.transforms - 1:
            layers.append(transforms.ReversePermutation(features))
    model = flows.Flow(transforms.CompositeTransform(layers), distributions.StandardNormal([features]))
    return Entry(model, model.log_prob, model.sample)


def _normflows(flow: str, features: int, args: argparse.Namespace) -> Entry:
    import normflows as nf
    from normflows.flows.neural_spline.autoregressive import MaskedPiecewiseRationalQuadraticAutoregressive
    from normflows.flows.neural_spline.coupling import PiecewiseRationalQuadraticCoupling

    kept = features // 2

    def mlp(in_features: int, out_features: int) -> nn.Module:
        return _ContextFree(nf.nets.MLP([in_features, args.hidden, args.hidden, out_features], init_zeros=True))

    def layer() -> nn.Module:
        # normflows' wrappers fix residual conditioners; the same classes are built here with the
        # suite's plain two-layer conditioners (its own made.MADE and nets.MLP).
        if flow == "MAF":
            return nf.flows.MaskedAffineAutoregressive(features, args.hidden, num_blocks=1, use_residual_blocks=False)
        if flow == "NSF-AR":
            wrapper = nf.flows.AutoregressiveRationalQuadraticSpline(features, 1, args.hidden, num_bins=args.bins)
            wrapper.mprqat = MaskedPiecewiseRationalQuadraticAutoregressive(
                features=features, hidden_features=args.hidden, num_bins=args.bins, tails="linear", tail_bound=3.0,
                num_blocks=1, use_residual_blocks=False, activation=nn.ReLU())
            return wrapper
        if flow == "NSF-C":
            wrapper = nf.flows.CoupledRationalQuadraticSpline(features, 1, args.hidden, num_bins=args.bins)
            mask = torch.cat([torch.zeros(kept), torch.ones(features - kept)])
            wrapper.prqct = PiecewiseRationalQuadraticCoupling(
                mask=mask, transform_net_create_fn=mlp, num_bins=args.bins, tails="linear", tail_bound=3.0,
                apply_unconditional_transform=True)
            return wrapper
        # Its channel split keeps the first ceil(features / 2): one feature more than the others
        # at an odd width (the parameter counts show the difference).
        network = nf.nets.MLP([features - kept, args.hidden, args.hidden, 2 * kept], init_zeros=True)
        return nf.flows.AffineCouplingBlock(network, scale=True, scale_map="exp", split_mode="channel")

    layers: list[nn.Module] = []
    for index in range(args.transforms):
        layers.append(layer())
        if index < args.transforms - 1:
            layers.append(nf.flows.Permute(features, mode="swap"))
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(features, trainable=False), layers)
    return Entry(model, model.log_prob, lambda n: model.sample(n)[0])


BUILDERS = {"flowkit": _flowkit, "zuko": _zuko, "nflows": _nflows, "normflows": _normflows}


def build(library: str, flow: str, features: int, args: argparse.Namespace) -> Entry:
    """``library``'s ``flow`` on ``args.device``, parameters perturbed off their initialisation."""
    entry = BUILDERS[library](flow, features, args)
    entry.module.to(args.device)
    perturb(entry.module)
    return entry
