"""The models every benchmark compares: flowkit, zuko and nflows, configured alike.

``build_models`` returns ``{(library, model): {"module", "log_prob", "sample"}}`` for an MAF and an
autoregressive neural spline flow (NSF-AR) in each library, every module on the device, with
parameters moved off their initialisation identically (a zero-initialised output layer would make
the flowkit models trivially the identity).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from flowkit.presets import maf, nsf


def perturb(module: torch.nn.Module, scale: float = 0.01) -> None:
    """Move parameters off their (possibly identity) initialisation, identically in all libraries."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator).to(parameter)
            parameter.add_(scale * noise)


def build_models(args: argparse.Namespace) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(library, model): {"log_prob": fn, "sample": fn}}``, every model on the device."""
    import zuko
    from nflows import distributions, flows, transforms

    features, hidden, batch, device = args.features, args.hidden, args.batch, args.device
    data = torch.randn(batch, features, device=device)
    models: dict[tuple[str, str], dict[str, Any]] = {}

    def flowkit_entry(flow: torch.nn.Module) -> dict[str, Any]:
        flow = flow.to(device).eval()
        perturb(flow)
        return {"log_prob": lambda: flow.log_prob(data), "sample": lambda: flow.sample(batch), "module": flow}

    models["flowkit", "MAF"] = flowkit_entry(maf(features, transforms=args.transforms,
                                                 hidden_features=[hidden, hidden]))
    models["flowkit", "NSF-AR"] = flowkit_entry(nsf(features, transforms=args.transforms,
                                                    hidden_features=[hidden, hidden], num_bins=args.bins,
                                                    tail_bound=3.0))

    def zuko_entry(flow: torch.nn.Module) -> dict[str, Any]:
        flow = flow.to(device).eval()
        perturb(flow)
        return {"log_prob": lambda: flow().log_prob(data), "sample": lambda: flow().sample((batch,)),
                "module": flow}

    models["zuko", "MAF"] = zuko_entry(zuko.flows.MAF(features, transforms=args.transforms,
                                                      hidden_features=(hidden, hidden)))
    models["zuko", "NSF-AR"] = zuko_entry(zuko.flows.NSF(features, transforms=args.transforms, bins=args.bins,
                                                         hidden_features=(hidden, hidden)))

    def nflows_entry(make_layer: Callable[[], torch.nn.Module]) -> dict[str, Any]:
        layers: list[torch.nn.Module] = []
        for index in range(args.transforms):
            layers.append(make_layer())
            if index < args.transforms - 1:
                layers.append(transforms.ReversePermutation(features))
        flow = flows.Flow(transforms.CompositeTransform(layers), distributions.StandardNormal([features]))
        flow = flow.to(device).eval()
        perturb(flow)
        return {"log_prob": lambda: flow.log_prob(data), "sample": lambda: flow.sample(batch), "module": flow}

    # num_blocks=1 with feedforward blocks: an initial masked layer and one block, two hidden layers.
    models["nflows", "MAF"] = nflows_entry(lambda: transforms.MaskedAffineAutoregressiveTransform(
        features, hidden, num_blocks=1, use_residual_blocks=False))
    models["nflows", "NSF-AR"] = nflows_entry(
        lambda: transforms.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            features, hidden, num_bins=args.bins, tails="linear", tail_bound=3.0, num_blocks=1,
            use_residual_blocks=False))
    return models
