"""Sampling vs density throughput of autoregressive flows: flowkit against zuko and nflows.

One run times, side by side and with the same configuration, ``log_prob`` and ``sample`` of an
MAF and an autoregressive neural spline flow (NSF-AR) in each library. Libraries are interleaved
within every repeat, so that drift in machine load (shared CPUs) hits all of them alike; each
figure is the median over repeats after warm-up. Peers invert a masked autoregressive layer with
``features`` full network passes, so their sampling is timed with fewer repeats.

Run from the repository root::

    python benchmarks/sampling.py                   # CPU, writes benchmarks/results/sampling_cpu.*
    python benchmarks/sampling.py --device cuda     # GPU, writes benchmarks/results/sampling_cuda.*
    python benchmarks/sampling.py --threads 1 --tag 1thread
    python benchmarks/sampling.py --threads 1 --compile   # also flowkit with compiled steps

The configuration (features 43, 5 transforms, two hidden layers of 256, 8 bins, batch 512,
float32) can be changed with flags; see ``--help``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, without installing

from common import add_arguments, build_models, metadata, timed, write_report  # noqa: E402


def compiled_entry(entry: dict, args: argparse.Namespace) -> dict:
    """A copy of a flowkit model with compiled sampling steps and a compiled ``log_prob``, so the
    ratio compares like with like (the eager rows keep the original)."""
    flow = copy.deepcopy(entry["module"]).compile_sampling()
    log_prob = torch.compile(flow.log_prob, fullgraph=True)
    data = torch.randn(args.batch, args.features, device=args.device)
    return {"log_prob": lambda: log_prob(data), "sample": lambda: flow.sample(args.batch), "module": flow}


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    models = build_models(args)
    if args.compile:
        for model in ("MAF", "NSF-AR"):
            models["flowkit + torch.compile", model] = compiled_entry(models["flowkit", model], args)
    times: dict[tuple[str, str, str], list[float]] = {}
    # Warm-up (allocations, lazy initialisation, flowkit's sampling workspace, cuDNN/cuBLAS handles).
    for (library, model), entry in models.items():
        for method in ("log_prob", "sample"):
            for _ in range(args.warmup if library.startswith("flowkit") or method == "log_prob" else 1):
                with torch.no_grad():
                    timed(entry[method], args.device)
            times[library, model, method] = []
    for repeat in range(args.repeats):
        for (library, model), entry in models.items():  # interleaved: every library in every round
            for method in ("log_prob", "sample"):
                if method == "sample" and not library.startswith("flowkit") and repeat >= args.peer_sample_repeats:
                    continue
                with torch.no_grad():
                    times[library, model, method].append(timed(entry[method], args.device))
    rows = []
    for (library, model), entry in models.items():
        log_prob = args.batch / statistics.median(times[library, model, "log_prob"])
        sample = args.batch / statistics.median(times[library, model, "sample"])
        rows.append({
            "library": library, "model": model,
            "parameters": sum(p.numel() for p in entry["module"].parameters()),
            "log_prob_per_s": log_prob, "sample_per_s": sample, "sample_over_log_prob": sample / log_prob,
            "repeats_log_prob": len(times[library, model, "log_prob"]),
            "repeats_sample": len(times[library, model, "sample"]),
            "median_ms_log_prob": 1e3 * statistics.median(times[library, model, "log_prob"]),
            "median_ms_sample": 1e3 * statistics.median(times[library, model, "sample"]),
        })
    by_key = {(row["library"], row["model"]): row for row in rows}
    for row in rows:
        if not row["library"].startswith("flowkit"):
            ours = by_key["flowkit", row["model"]]
            row["flowkit_sampling_speedup"] = ours["sample_per_s"] / row["sample_per_s"]
            if args.compile:
                compiled = by_key["flowkit + torch.compile", row["model"]]
                row["flowkit_compiled_sampling_speedup"] = compiled["sample_per_s"] / row["sample_per_s"]
    return {"rows": rows}


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        f"# Sampling vs log_prob throughput ({meta['device']})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; torch {meta['versions']['torch']}, zuko {meta['versions']['zuko']}, "
        f"nflows {meta['versions']['nflows']}; threads {meta['threads']}; CPUs {meta['cpu_count']}; "
        f"load average at start/end {meta['load_start']} / {meta['load_end']}  ",
        f"Config: {meta['config']}",
        "",
        "| library | model | log_prob (samples/s) | sample (samples/s) | sample / log_prob "
        "| flowkit sampling speed-up (eager / compiled) | repeats (log_prob / sample) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        speedups = [row.get(key) for key in ("flowkit_sampling_speedup", "flowkit_compiled_sampling_speedup")]
        speedup = " / ".join(f"{value:.1f}x" for value in speedups if value is not None) or "-"
        lines.append(
            f"| {row['library']} | {row['model']} | {row['log_prob_per_s']:,.0f} | {row['sample_per_s']:,.0f} "
            f"| {row['sample_over_log_prob']:.3f} | {speedup} "
            f"| {row['repeats_log_prob']} / {row['repeats_sample']} |")
    lines += ["", "Medians over repeats after warm-up; libraries interleaved within each repeat. "
              "zuko's NSF uses its fixed spline bound B=5 (flowkit and nflows: B=3).", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    labels = [f"{row['library']}\n{row['model']}" for row in rows]
    positions = range(len(rows))
    figure, axis = plt.subplots(figsize=(8, 3.5))
    axis.bar([p - 0.2 for p in positions], [row["log_prob_per_s"] for row in rows], 0.4, label="log_prob")
    axis.bar([p + 0.2 for p in positions], [row["sample_per_s"] for row in rows], 0.4, label="sample")
    axis.set_yscale("log")
    axis.set_ylabel("samples / s")
    axis.set_xticks(list(positions), labels, fontsize=8)
    axis.set_title(f"Throughput, batch {report['meta']['config']['batch']}, {report['meta']['device']}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--peer-sample-repeats", type=int, default=3,
                        help="repeats for the peers' (slow, D-pass) sampling")
    parser.add_argument("--compile", action="store_true",
                        help="also time flowkit with compiled sampling steps and log_prob (a minute of compiling)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    report = run(args)
    report["meta"] = metadata(args, "sampling.py", load_start, started)
    stem = write_report(report, "sampling", args, markdown(report))
    plot(report, stem.with_suffix(".png"))
    print(markdown(report))


if __name__ == "__main__":
    main()
