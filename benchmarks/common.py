"""What every benchmark shares: the models it compares (flowkit, zuko and nflows, configured
alike), the command-line arguments, the timer, and the metadata and files of a report.

``build_models`` returns ``{(library, model): {"module", "log_prob", "sample", "density"}}``
(``log_prob`` and ``sample`` time a fixed batch; ``density(x)`` scores any rows) for an MAF and an
autoregressive neural spline flow (NSF-AR) in each library, every module on the device, with
parameters moved off their initialisation identically (a zero-initialised output layer would make
the flowkit models trivially the identity).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
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
        return {"log_prob": lambda: flow.log_prob(data), "sample": lambda: flow.sample(batch), "module": flow,
                "density": flow.log_prob}

    models["flowkit", "MAF"] = flowkit_entry(maf(features, transforms=args.transforms,
                                                 hidden_features=[hidden, hidden]))
    models["flowkit", "NSF-AR"] = flowkit_entry(nsf(features, transforms=args.transforms,
                                                    hidden_features=[hidden, hidden], num_bins=args.bins,
                                                    tail_bound=3.0))

    def zuko_entry(flow: torch.nn.Module) -> dict[str, Any]:
        flow = flow.to(device).eval()
        perturb(flow)
        return {"log_prob": lambda: flow().log_prob(data), "sample": lambda: flow().sample((batch,)),
                "module": flow, "density": lambda x: flow().log_prob(x)}

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
        return {"log_prob": lambda: flow.log_prob(data), "sample": lambda: flow.sample(batch), "module": flow,
                "density": flow.log_prob}

    # num_blocks=1 with feedforward blocks: an initial masked layer and one block, two hidden layers.
    models["nflows", "MAF"] = nflows_entry(lambda: transforms.MaskedAffineAutoregressiveTransform(
        features, hidden, num_blocks=1, use_residual_blocks=False))
    models["nflows", "NSF-AR"] = nflows_entry(
        lambda: transforms.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            features, hidden, num_bins=args.bins, tails="linear", tail_bound=3.0, num_blocks=1,
            use_residual_blocks=False))
    return models


RESULTS = Path(__file__).resolve().parent / "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model configuration and run controls every harness takes."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--features", type=int, default=43)
    parser.add_argument("--transforms", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--bins", type=int, default=8)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tag", default="", help="suffix for the result file names")


def timed(function: Callable[[], Any], device: str) -> float:
    """Seconds for one call, with the device synchronised on both sides."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def parameter_count(module: torch.nn.Module) -> int:
    """Trainable parameters of a model (what "matched sizes" compares)."""
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)


def metadata(args: argparse.Namespace, script: str, load_start: list[float], started: float,
             config: dict | None = None) -> dict:
    """Where, when and how a report was measured; ``config`` replaces the flow-size block of the
    harnesses that share ``add_arguments``."""
    from importlib.metadata import version

    return {
        "command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(args.device),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "zuko": version("zuko"),
                     "nflows": version("nflows")},
        "config": config if config is not None else {
            "features": args.features, "transforms": args.transforms, "hidden": [args.hidden] * 2,
            "bins": args.bins, "batch": args.batch, "dtype": "float32"},
        "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def write_report(report: dict, name: str, args: argparse.Namespace, markdown: str) -> Path:
    """Write ``results/<name>_<device>[_<tag>].json`` and ``.md``; returns the path stem."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{name}_{args.device.split(':')[0]}{'_' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown)
    return stem
