"""Training-step throughput of autoregressive flows: flowkit against zuko and nflows, and against
the machine's matmul ceiling, measured in the same run.

A training step is ``-log_prob(batch).mean()``, backward, and an Adam step. The MADE networks are
the work: their dense matrix products (masks do not change the product's cost) take
``2 * batch * sum(in * out)`` flops forward and about twice that backward. The ceiling is the
rate of a plain dense MLP of exactly those layer shapes, trained the same way (no masks, no
flow): what a flow library could reach if everything around the matmuls were free. Each row
reports its rate as a fraction of that ceiling. Libraries are interleaved within each repeat.

Run from the repository root::

    python benchmarks/training.py --threads 1 --compile  # CPU; writes benchmarks/results/training_cpu.*
    python benchmarks/training.py --device cuda    # GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, without installing

from common import add_arguments, build_models, metadata, timed, write_report  # noqa: E402

PARAMS_PER_FEATURE = {"MAF": lambda bins: 2, "NSF-AR": lambda bins: 3 * bins - 1}


def layer_shapes(args: argparse.Namespace, model: str) -> list[tuple[int, int]]:
    """(in, out) of each MADE layer of one transform."""
    outputs = args.features * PARAMS_PER_FEATURE[model](args.bins)
    return [(args.features, args.hidden), (args.hidden, args.hidden), (args.hidden, outputs)]


def step_flops(args: argparse.Namespace, model: str) -> float:
    """Matmul flops of one training step: forward 2*B*in*out per layer, backward twice that."""
    per_transform = sum(2 * args.batch * i * o for i, o in layer_shapes(args, model))
    return 3 * per_transform * args.transforms


def dense_ceiling(args: argparse.Namespace, model: str) -> Callable[[], None]:
    """A training step of plain MLPs with the MADE layer shapes, one per transform."""
    networks = nn.ModuleList(
        nn.Sequential(*[layer for i, o in layer_shapes(args, model) for layer in (nn.Linear(i, o), nn.ReLU())][:-1])
        for _ in range(args.transforms)
    ).to(args.device)
    optimizer = torch.optim.Adam(networks.parameters(), lr=1e-4)
    data = torch.randn(args.batch, args.features, device=args.device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = sum(network(data).square().mean() for network in networks)
        loss.backward()
        optimizer.step()

    return step


def flow_step(module: nn.Module, log_prob: Callable[[], torch.Tensor]) -> Callable[[], None]:
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        (-log_prob().mean()).backward()
        optimizer.step()

    return step


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    models = build_models(args)
    steps = {(library, model): flow_step(entry["module"], entry["log_prob"])
             for (library, model), entry in models.items()}
    if args.compile:  # the same flowkit modules, their loss through torch.compile (what fit_density(compile=True) does)
        for model in PARAMS_PER_FEATURE:
            entry = models["flowkit", model]
            steps["flowkit + torch.compile", model] = flow_step(entry["module"], torch.compile(entry["log_prob"]))
    for model in PARAMS_PER_FEATURE:
        steps["dense MLP (ceiling)", model] = dense_ceiling(args, model)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    for _ in range(args.repeats):
        for key, step in steps.items():  # interleaved: every library in every round
            times[key].append(timed(step, args.device))
    rows = []
    for (library, model), samples in times.items():
        seconds = statistics.median(samples)
        rows.append({"library": library, "model": model, "median_ms": 1e3 * seconds,
                     "samples_per_s": args.batch / seconds,
                     "gflops": step_flops(args, model) / seconds / 1e9})
    by_key = {(row["library"], row["model"]): row for row in rows}
    for row in rows:
        ceiling = by_key["dense MLP (ceiling)", row["model"]]
        row["fraction_of_ceiling"] = row["gflops"] / ceiling["gflops"]
        if row["library"] in ("zuko", "nflows"):
            row["flowkit_speedup"] = by_key["flowkit", row["model"]]["samples_per_s"] / row["samples_per_s"]
            if args.compile:
                compiled = by_key["flowkit + torch.compile", row["model"]]
                row["flowkit_compiled_speedup"] = compiled["samples_per_s"] / row["samples_per_s"]
    return {"rows": rows}


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        f"# Training-step throughput ({meta['device']})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; torch {meta['versions']['torch']}; threads {meta['threads']}; "
        f"load average at start/end {meta['load_start']} / {meta['load_end']}  ",
        f"Config: {meta['config']}; a step is -log_prob(batch).mean(), backward, Adam.",
        "",
        "| library | model | ms / step | samples/s | matmul GFLOP/s | fraction of dense ceiling "
        "| flowkit speed-up (eager / compiled) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        speedups = [row.get(key) for key in ("flowkit_speedup", "flowkit_compiled_speedup")]
        speedup = " / ".join(f"{value:.2f}x" for value in speedups if value is not None) or "-"
        lines.append(f"| {row['library']} | {row['model']} | {row['median_ms']:.1f} | {row['samples_per_s']:,.0f} "
                     f"| {row['gflops']:.1f} | {row['fraction_of_ceiling']:.2f} | {speedup} |")
    lines += ["", "Medians over repeats after warm-up, libraries interleaved. The ceiling is a plain dense "
              "MLP with the MADE layer shapes trained the same way; GFLOP/s counts only those matmuls.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--compile", action="store_true",
                        help="also time flowkit with torch.compile (compiling takes tens of seconds)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    report = run(args)
    report["meta"] = metadata(args, "training.py", load_start, started)
    write_report(report, "training", args, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
