"""The performance suite: flowkit against zuko, nflows and normflows, and against the machine.

For each thread setting, batch size, flow (MAF, NSF-AR, NSF-C, RealNVP) and feature count, every
library builds the same flow (``peers.py``; parameter counts reported), then in interleaved
rounds (every library in every round, so drift in machine load hits them alike) it times a
training step (``-log_prob(batch).mean()``, backward, Adam), a ``log_prob`` and a ``sample`` of
``batch`` rows. Figures are medians over rounds. In the same run, ``ceiling.py`` times the bare
matrix products of every conditioner layer shape (float32; bfloat16 where the hardware has it),
which gives each throughput as a fraction of the machine's matmul ceiling. Peak memory of each
call is measured in a child process (``--memory-worker``) whose allocator returns freed memory to
the system, so resident-set peaks are the call's own (timing is never done there).

Run from the repository root::

    python benchmarks/suite.py --quick          # reduced grid, a few minutes on 2 cores
    python benchmarks/suite.py                  # the full grid (an hour or more on 2 cores)
    python benchmarks/suite.py --device cuda --batch 512 8192

Writes ``benchmarks/results/suite_<device>[_<tag>].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ceiling  # noqa: E402
import peers  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("train", "log_prob", "sample")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--flows", nargs="+", default=list(peers.FLOWS), choices=peers.FLOWS)
    parser.add_argument("--libraries", nargs="+", default=list(peers.LIBRARIES), choices=peers.LIBRARIES)
    parser.add_argument("--features", nargs="+", type=int, default=[6, 43])
    parser.add_argument("--batch", nargs="+", type=int, default=[512, 4096])
    parser.add_argument("--threads", nargs="+", default=["1", "default"],
                        help="torch thread counts to run at ('default': torch's own)")
    parser.add_argument("--transforms", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--bins", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (medians)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peer-sample-rounds", type=int, default=3,
                        help="rounds for peers' autoregressive sampling (one network pass per feature)")
    parser.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                        help="wall time, or the process's CPU time (robust to other load; use with one thread)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child process")
    parser.add_argument("--quick", action="store_true",
                        help="reduced grid: batch 512, 3 rounds, 1 peer sampling round")
    parser.add_argument("--tag", default="")
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.rounds, args.warmup, args.peer_sample_rounds = [512], 3, 1, 1
    return args


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def timed(function, device: str) -> float:
    """Seconds of one call: wall clock, or with ``--clock cpu`` the process's CPU time, which a
    machine shared with other load (preemption) inflates far less; on one thread it is the work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = clock()
    function()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return clock() - start


def calls(entry: peers.Entry, features: int, batch: int, device: str) -> dict:
    """The three timed calls of one library's flow: a training step, ``log_prob`` and ``sample``."""
    data = torch.randn(batch, features, device=device)
    optimizer = torch.optim.Adam(entry.module.parameters(), lr=1e-5)  # small: the model stays put

    def train() -> None:
        entry.module.train()
        optimizer.zero_grad(set_to_none=True)
        (-entry.log_prob(data).mean()).backward()
        optimizer.step()

    def log_prob() -> None:
        entry.module.eval()
        with torch.no_grad():
            entry.log_prob(data)

    def sample() -> None:
        entry.module.eval()
        with torch.no_grad():
            entry.sample(batch)

    return {"train": train, "log_prob": log_prob, "sample": sample}


def measure_config(args: argparse.Namespace, flow: str, features: int, batch: int) -> list[dict]:
    """Interleaved timings of every library on one configuration."""
    torch.manual_seed(0)
    entries = {library: peers.build(library, flow, features, args) for library in args.libraries}
    functions = {library: calls(entry, features, batch, args.device) for library, entry in entries.items()}
    shapes = peers.layer_shapes(flow, features, args.hidden, args.bins)
    bare = {dtype: ceiling.bare_products(shapes, args.transforms, batch, args.device, getattr(torch, dtype))
            for dtype in dtypes(args)}
    slow_sampling = flow in peers.AUTOREGRESSIVE
    for library in functions:
        for metric in METRICS:
            # Peers' autoregressive sampling is a loop of full network passes: nothing to warm.
            slow = metric == "sample" and slow_sampling and library != "flowkit"
            for _ in range(0 if slow else args.warmup):
                functions[library][metric]()
    times = {(library, metric): [] for library in functions for metric in METRICS}
    times |= {(dtype, metric): [] for dtype in bare for metric in ("train", "log_prob")}
    for function in (f for products in bare.values() for f in products.values()):
        function()
    for round_ in range(args.rounds):
        for dtype, products in bare.items():  # the ceiling, in the same rounds as the libraries
            for metric, function in products.items():
                times[dtype, metric].append(timed(function, args.device))
        for library, function in functions.items():
            for metric in METRICS:
                if metric == "sample" and slow_sampling and library != "flowkit" \
                        and round_ >= args.peer_sample_rounds:
                    continue
                times[library, metric].append(timed(function[metric], args.device))
    rows = []
    for library, entry in entries.items():
        row = {"flow": flow, "features": features, "batch": batch, "library": library,
               "parameters": entry.parameters}
        for metric in METRICS:
            seconds = statistics.median(times[library, metric])
            row[f"{metric}_ms"] = 1e3 * seconds
            row[f"{metric}_rows_per_s"] = batch / seconds
        row["train_steps_per_s"] = 1.0 / (row["train_ms"] / 1e3)
        for dtype in bare:
            for metric in ("train", "log_prob"):
                row[f"ceiling_{metric}_ms_{dtype}"] = 1e3 * statistics.median(times[dtype, metric])
        rows.append(row)
    return rows


def dtypes(args: argparse.Namespace) -> list[str]:
    """float32, and bfloat16 where the hardware multiplies it natively."""
    return ["float32", "bfloat16"] if ceiling.bf16_support(args.device)[0] else ["float32"]


def add_ratios(rows: list[dict], ceilings: dict, args: argparse.Namespace) -> None:
    """Each row's speed over the best peer (flowkit: > 1 is a lead) and fraction of the ceiling."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["threads"], row["flow"], row["features"], row["batch"]), []).append(row)
    for (threads, flow, features, batch), group in groups.items():
        shapes = peers.layer_shapes(flow, features, args.hidden, args.bins)
        flops = ceiling.step_flops(shapes, args.transforms, batch)
        for row in group:
            for metric in METRICS:
                others = [r[f"{metric}_rows_per_s"] for r in group if r["library"] != row["library"]
                          and r["library"] != "flowkit"]
                if others:
                    row[f"{metric}_vs_best_peer"] = row[f"{metric}_rows_per_s"] / max(others)
                    best = max((r for r in group if r["library"] not in ("flowkit", row["library"])),
                               key=lambda r, m=metric: r[f"{m}_rows_per_s"])
                    row[f"{metric}_best_peer"] = best["library"]
            row["train_gflops"] = flops["train"] / (row["train_ms"] / 1e3) / 1e9
            row["log_prob_gflops"] = flops["log_prob"] / (row["log_prob_ms"] / 1e3) / 1e9
            for dtype in dtypes(args):
                # The bare products timed in the same rounds; ``*_isolated`` from the per-shape
                # rates measured once per batch size (the table at the end of the report).
                row[f"train_fraction_{dtype}"] = row[f"ceiling_train_ms_{dtype}"] / row["train_ms"]
                row[f"log_prob_fraction_{dtype}"] = row[f"ceiling_log_prob_ms_{dtype}"] / row["log_prob_ms"]
                # Sampling's necessary arithmetic is one forward pass, the log_prob ceiling.
                row[f"sample_fraction_{dtype}"] = row[f"ceiling_log_prob_ms_{dtype}"] / row["sample_ms"]
                rates = ceilings[threads, batch].get(dtype)
                if isinstance(rates, dict):
                    limit = ceiling.step_ceiling(shapes, args.transforms, rates)
                    row[f"train_fraction_{dtype}_isolated"] = limit["train_s"] / (row["train_ms"] / 1e3)


def measure_ceilings(args: argparse.Namespace, batch: int) -> dict:
    shapes = {s for flow in args.flows for f in args.features
              for s in peers.layer_shapes(flow, f, args.hidden, args.bins)}
    out: dict = {"float32": ceiling.shape_rates(batch, shapes, args.device, torch.float32)}
    supported, reason = ceiling.bf16_support(args.device)
    out["bfloat16"] = ceiling.shape_rates(batch, shapes, args.device, torch.bfloat16) if supported \
        else f"not measured: {reason}"
    return out


def memory_worker(args: argparse.Namespace) -> None:
    """Print the peak resident memory (MiB) each call adds, one JSON line per library and config."""
    torch.set_num_threads(1)
    for flow in args.flows:
        for features in args.features:
            for batch in args.batch:
                for library in args.libraries:
                    torch.manual_seed(0)
                    entry = peers.build(library, flow, features, args)
                    functions = calls(entry, features, batch, args.device)
                    result = {"flow": flow, "features": features, "batch": batch, "library": library}
                    for metric in METRICS:
                        functions[metric]()  # first call: lazy state (optimiser moments, workspaces)
                        before = _status("VmRSS")
                        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
                        functions[metric]()
                        result[f"{metric}_peak_mib"] = max(0.0, (_status("VmHWM") - before) / 1024)
                    print(json.dumps(result), flush=True)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory(args: argparse.Namespace) -> dict[tuple, dict]:
    """Run ``memory_worker`` in a child whose glibc allocator unmaps every large free block, so
    the resident peak follows the live tensors (CPU only: GPUs would use torch.cuda's counters)."""
    if args.device != "cpu" or not Path("/proc/self/clear_refs").exists():
        return {}
    environment = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = {}
    # One child per configuration and library: in one long-lived child, memory freed by earlier
    # configurations was reused by later ones and their peaks read as zero.
    for flow in args.flows:
        for features in args.features:
            for batch in args.batch:
                for library in args.libraries:
                    command = [sys.executable, __file__, "--memory-worker", "--flows", flow, "--libraries", library,
                               "--features", str(features), "--batch", str(batch), "--transforms",
                               str(args.transforms), "--hidden", str(args.hidden), "--bins", str(args.bins)]
                    output = subprocess.run(command, env=environment, capture_output=True, text=True,
                                            check=True).stdout
                    for line in output.splitlines():
                        record = json.loads(line)
                        out[record["flow"], record["features"], record["batch"], record["library"]] = record
    return out


def run(args: argparse.Namespace, checkpoint=None) -> dict:
    default_threads = torch.get_num_threads()
    rows: list[dict] = []
    ceilings: dict = {}
    for threads_option in args.threads:
        threads = default_threads if threads_option == "default" else int(threads_option)
        torch.set_num_threads(threads)
        for batch in args.batch:
            ceilings[threads, batch] = measure_ceilings(args, batch)
            for flow in args.flows:
                for features in args.features:
                    started = time.perf_counter()
                    for row in measure_config(args, flow, features, batch):
                        rows.append(row | {"threads": threads})
                    print(f"threads {threads} batch {batch} {flow} {features}: {time.perf_counter() - started:.0f} s",
                          file=sys.stderr, flush=True)
                    if checkpoint is not None:  # a partial report after every configuration
                        add_ratios(rows, ceilings, args)
                        checkpoint({"rows": rows, "ceilings": _jsonable_ceilings(ceilings),
                                    "default_threads": default_threads, "partial": True})
    add_ratios(rows, ceilings, args)
    memory = {} if args.no_memory else measure_memory(args)
    for row in rows:
        record = memory.get((row["flow"], row["features"], row["batch"], row["library"]))
        if record:
            row.update({key: value for key, value in record.items() if key.endswith("_peak_mib")})
    torch.set_num_threads(default_threads)
    return {"rows": rows, "ceilings": _jsonable_ceilings(ceilings), "default_threads": default_threads}


def _jsonable_ceilings(ceilings: dict) -> list[dict]:
    out = []
    for (threads, batch), by_dtype in ceilings.items():
        for dtype, rates in by_dtype.items():
            if isinstance(rates, str):
                out.append({"threads": threads, "batch": batch, "dtype": dtype, "note": rates})
                continue
            for (fan_in, fan_out), rate in rates.items():
                out.append({"threads": threads, "batch": batch, "dtype": dtype, "in": fan_in, "out": fan_out} | rate)
    return out


def metadata(args: argparse.Namespace, load_start: list[float], started: float) -> dict:
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return {
        "command": " ".join(["python", "benchmarks/suite.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(args.device),
        "cpu": f"{capabilities.get('cpu_name', platform.processor())}, {os.cpu_count()} logical cores, "
               f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}",
        "bf16": ceiling.bf16_support(args.device)[1],
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     **{name: version(name) for name in ("zuko", "nflows", "normflows")}},
        "config": {"transforms": args.transforms, "hidden": [args.hidden] * 2, "bins": args.bins,
                   "rounds": args.rounds, "peer_sample_rounds": args.peer_sample_rounds, "dtype": "float32",
                   "clock": args.clock},
        "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def _vs(row: dict, metric: str) -> str:
    value = row.get(f"{metric}_vs_best_peer")
    return "-" if value is None else f"{value:.2f}x ({row[f'{metric}_best_peer']})"


def markdown(report: dict) -> str:
    meta, rows = report["meta"], report["rows"]
    lines = [f"# Performance suite ({meta['device']}){' (partial: still running)' if report.get('partial') else ''}",
             "",
             f"Command: `{meta['command']}`  ",
             f"Date: {meta['date']}; {meta['cpu']}; bf16: {meta['bf16']}  ",
             f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}  ",
             f"Load average (1, 5, 15 min) at start / end: {meta['load_start']} / {meta['load_end']}; "
             f"wall {meta['wall_seconds']} s  ",
             f"Config: {meta['config']}. A training step is -log_prob(batch).mean(), backward, Adam.", "",
             "## flowkit against the best peer", "",
             "Speed over the fastest of zuko, nflows and normflows on each call (> 1: flowkit faster; that peer in "
             "brackets; normflows' MAF puts the one-pass direction on sampling (an IAF in effect), so its log_prob and "
             "training take one network pass per feature), and "
             "flowkit's fraction of the float32 matmul ceiling (the bare products of its layer shapes).", "",
             "| threads | batch | flow | features | train | log_prob | sample | train / ceiling "
             "| log_prob / ceiling |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row["library"] != "flowkit":
            continue
        lines.append(f"| {row['threads']} | {row['batch']} | {row['flow']} | {row['features']} "
                     f"| {_vs(row, 'train')} | {_vs(row, 'log_prob')} | {_vs(row, 'sample')} "
                     f"| {row.get('train_fraction_float32', 0):.2f} "
                     f"| {row.get('log_prob_fraction_float32', 0):.2f} |")
    lines += ["", "## Every library", "",
              "Rows per second (a training step's rows, log_prob's, sample's), training steps per second, "
              "achieved matmul GFLOP/s of a step, fraction of the float32 ceiling, peak resident memory a "
              "call adds (MiB; train / log_prob / sample), and the trainable parameter count.", "",
              "| threads | batch | flow | features | library | parameters | train steps/s | train rows/s "
              "| log_prob rows/s | sample rows/s | train GFLOP/s | train / ceiling | peak MiB |",
              "|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        memory = " / ".join(f"{row[f'{m}_peak_mib']:.0f}" for m in METRICS if f"{m}_peak_mib" in row) or "-"
        lines.append(f"| {row['threads']} | {row['batch']} | {row['flow']} | {row['features']} | {row['library']} "
                     f"| {row['parameters']:,} | {row['train_steps_per_s']:.1f} | {row['train_rows_per_s']:,.0f} "
                     f"| {row['log_prob_rows_per_s']:,.0f} | {row['sample_rows_per_s']:,.0f} "
                     f"| {row['train_gflops']:.1f} | {row.get('train_fraction_float32', 0):.2f} | {memory} |")
    lines += ["", "## Matmul ceiling", "",
              "Median time of the bare products of each conditioner layer shape `(batch, in) x (in, out)`: the "
              "forward and the two backward products; GFLOP/s over all three.", "",
              "| threads | batch | dtype | in | out | forward us | backward us | GFLOP/s |",
              "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for item in report["ceilings"]:
        if "note" in item:
            lines.append(f"| {item['threads']} | {item['batch']} | {item['dtype']} | - | - | - | - | {item['note']} |")
            continue
        lines.append(f"| {item['threads']} | {item['batch']} | {item['dtype']} | {item['in']} | {item['out']} "
                     f"| {1e6 * item['forward_s']:.0f} | {1e6 * item['backward_s']:.0f} | {item['gflops']:.1f} |")
    lines += ["", "Medians over interleaved rounds after warm-up. Peers' autoregressive sampling runs one network "
              "pass per feature, so it gets `peer_sample_rounds` rounds.", ""]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    global clock
    clock = CLOCK[args.clock]
    if args.memory_worker:
        memory_worker(args)
        return
    load_start = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"suite_{args.device.split(':')[0]}{'_' + args.tag if args.tag else ''}"

    def write(report: dict) -> None:
        report["meta"] = metadata(args, load_start, started)
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(report))

    report = run(args, checkpoint=write)
    write(report)
    print(markdown(report))


if __name__ == "__main__":
    main()
