"""torch-profiler profiles of flowkit's training step, ``log_prob`` and ``sample`` per configuration.

For each flow and feature count of the suite it runs a few calls of each under
``torch.profiler`` and writes the operators with the most self time, with the share of the call
that is matrix products (``addmm``/``mm``/``bmm``/``linear``), to
``benchmarks/results/profile_<device>[_<tag>].md``: where each call's time goes, the evidence that
``benchmarks/NOTES.md`` reasons from.

Run from the repository root::

    python benchmarks/profiles.py --threads 1 --features 6 43 --batch 512
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
from suite import calls  # noqa: E402

MATMULS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::addmm_", "aten::baddbmm", "aten::linear")


def profile_call(function, repeats: int, rows: int) -> str:
    for _ in range(2):
        function()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            function()
    averages = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in averages)
    matmul = sum(event.self_cpu_time_total for event in averages if event.key in MATMULS)
    top = sorted(averages, key=lambda event: event.self_cpu_time_total, reverse=True)[:rows]
    lines = [f"Self CPU time per call {total / repeats / 1e3:.1f} ms, matrix products {100 * matmul / total:.0f}%.",
             "", "| operator | calls / call | self ms / call | share |", "|---|---:|---:|---:|"]
    for event in top:
        lines.append(f"| `{event.key}` | {event.count / repeats:.0f} | {event.self_cpu_time_total / repeats / 1e3:.2f} "
                     f"| {100 * event.self_cpu_time_total / total:.0f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--flows", nargs="+", default=list(peers.FLOWS), choices=peers.FLOWS)
    parser.add_argument("--features", nargs="+", type=int, default=[6, 43])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--transforms", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--bins", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8, help="operators listed per call")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = [f"# Profiles of flowkit calls ({args.device})", "",
           f"Command: `python benchmarks/profiles.py {' '.join(sys.argv[1:])}`  ",
           f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; torch {torch.__version__}; "
           f"threads {torch.get_num_threads()}; load average {[round(x, 2) for x in os.getloadavg()]}  ",
           f"Config: transforms {args.transforms}, hidden [{args.hidden}, {args.hidden}], bins {args.bins}, "
           f"batch {args.batch}, float32. Self time under the profiler (which adds its own overhead per op).", ""]
    for flow in args.flows:
        for features in args.features:
            torch.manual_seed(0)
            entry = peers.build("flowkit", flow, features, args)
            functions = calls(entry, features, args.batch, args.device)
            for name, function in functions.items():
                out += [f"## {flow}, {features} features: {name}", "",
                        profile_call(function, args.repeats, args.rows), ""]
            print(f"{flow} {features} done", file=sys.stderr, flush=True)
    results = Path(__file__).resolve().parent / "results"
    path = results / f"profile_{args.device.split(':')[0]}{'_' + args.tag if args.tag else ''}.md"
    path.write_text("\n".join(out))
    print(path)


if __name__ == "__main__":
    main()
