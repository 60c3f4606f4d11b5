"""bf16 against float32 training: the speed of a step and the held-out log-likelihood on MINIBOONE.

Trains the same flowkit flow twice with ``fit_density`` on the MINIBOONE validation split
(``../shared/datasets/miniboone/val.npy``, relative to the repository; never copied into it), once in
float32 and once with ``bf16=True``, and scores the test split (``test.npy``) with each: the
log-likelihoods should agree within their standard errors. It also times training steps of both,
interleaved. On hardware without native bf16 ``fit_density(bf16=True)`` refuses; ``--emulate``
then forces the autocast path anyway, to check the numerics only (emulated bf16 is slower than
float32, so its timing says nothing about AMX).

Run from the repository root::

    python benchmarks/bf16.py --threads 1            # where the CPU has AMX / AVX512-BF16, or on a GPU
    python benchmarks/bf16.py --threads 1 --compile  # and through torch.compile (about a minute more)
    python benchmarks/bf16.py --threads 1 --emulate  # anywhere: the accuracy check only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowkit.presets import maf, nsf  # noqa: E402
from flowkit.train import fit_density, precision  # noqa: E402
from flowkit.train.schedule import make_optimizer  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "miniboone"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--flow", choices=["maf", "nsf"], default="maf")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--transforms", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--emulate", action="store_true", help="force bf16 where the hardware lacks it (numerics only)")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--compile", action="store_true",
                        help="also train and time both precisions through torch.compile (fit_density(compile=True))")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    supported, reason = (precision.cpu_bf16_support() if args.device == "cpu"
                         else (torch.cuda.is_bf16_supported(), torch.cuda.get_device_name()))
    if args.emulate and not supported:
        precision.cpu_bf16_support = lambda: (True, "emulated by --emulate")
    load_start = [round(x, 2) for x in os.getloadavg()]
    train = np.load(Path(args.data) / "val.npy").astype(np.float32)
    test = torch.from_numpy(np.load(Path(args.data) / "test.npy").astype(np.float32))
    mean, std = train.mean(0), train.std(0)
    train, test = (train - mean) / std, (test - torch.from_numpy(mean)) / torch.from_numpy(std)
    build = maf if args.flow == "maf" else nsf
    results = {}
    flows = {}
    configurations = [("float32", False, False), ("bf16", True, False)]
    if args.compile:
        configurations += [("float32, compiled", False, True), ("bf16, compiled", True, True)]
    for name, bf16, compiled in configurations:
        torch.manual_seed(0)
        flow = build(train.shape[1], transforms=args.transforms, hidden_features=[args.hidden] * 2)
        started = time.perf_counter()
        fit = fit_density(flow, train, epochs=args.epochs, batch_size=args.batch, learning_rate=1e-3,
                          patience=None, bf16=bf16, compile=compiled, device=args.device, progress=False, seed=0)
        flow.eval()
        with torch.no_grad():
            log_p = flow.log_prob(test.to(args.device)).cpu().double()
        results[name] = {"test_log_likelihood": float(log_p.mean()),
                         "standard_error": float(log_p.std() / len(log_p) ** 0.5),
                         "fit_seconds": round(time.perf_counter() - started, 1), "epochs": len(fit.history)}
        flows[name] = (torch.compile(flow) if compiled else flow, bf16)
    # Interleaved step timing of the trained models, one batch, the trainers' own (fused) AdamW at a
    # tiny rate; compiled models were compiled while training, so no step here compiles.
    x = torch.from_numpy(train[:args.batch]).to(args.device)
    times: dict[str, list[float]] = {name: [] for name in flows}
    steps = {}
    for name, (flow, bf16) in flows.items():
        flow.train()
        optimizer = make_optimizer(flow.parameters(), 1e-7)

        def step(flow=flow, bf16=bf16, optimizer=optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast(torch.device(args.device), bf16):
                loss = -flow(x).mean()
            loss.float().backward()
            optimizer.step()

        steps[name] = step
        step()
    for _ in range(15):  # rounds of 3 steps each, interleaved: medians of 15
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(3):
                step()
            times[name].append((time.perf_counter() - start) / 3)
    for name in flows:
        results[name]["step_ms"] = round(1e3 * statistics.median(times[name]), 1)
    speedups = {name: results["float32"]["step_ms"] / row["step_ms"] for name, row in results.items()}
    report = {"results": results, "bf16_speedup": speedups["bf16"], "speedups": speedups,
              "hardware_bf16": reason, "emulated": bool(args.emulate and not supported),
              "command": " ".join(["python", "benchmarks/bf16.py", *sys.argv[1:]]),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()]}
    suffix = args.device.split(":")[0] + ("_" + args.tag if args.tag else "")
    out = Path(__file__).resolve().parent / "results" / f"bf16_{suffix}"
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# bf16 against float32 ({args.device}, {args.flow.upper()} on MINIBOONE)", "",
             f"Command: `{report['command']}`  ",
             f"Date: {report['date']}; torch {report['torch']}; threads {report['threads']}; load average "
             f"{load_start} / {report['load_end']}  ",
             f"Hardware bf16: {reason}{'; EMULATED (numerics only, timing meaningless)' if report['emulated'] else ''}",
             "", "| precision | test log-likelihood | +/- 1 s.e. | epochs | fit s | step ms |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in results.items():
        lines.append(f"| {name} | {row['test_log_likelihood']:.2f} | {row['standard_error']:.2f} | {row['epochs']} "
                     f"| {row['fit_seconds']} | {row['step_ms']} |")
    lines += ["", "Step speed-up over the float32 step: "
              + ", ".join(f"{name} {value:.2f}x" for name, value in speedups.items() if name != "float32"), ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
