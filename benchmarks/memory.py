"""Peak resident memory of `flowkit fit` on a large table (issue 11: one million rows x 43 columns
should peak under twice the size of the data).

Writes a table of correlated, partly log-normal columns as CSV and as .npy into a temporary
folder, runs `flowkit fit` on each in a child process with a time limit (the defaults otherwise),
and reads the child's peak resident set size from the kernel (`getrusage`, RUSAGE_CHILDREN: one
child per measurement, so each figure is that run's own), and the same for a child that only
imports torch and flowkit: the part of the peak that does not grow with the data.

    python benchmarks/memory.py                 # 1,000,000 x 43, 60 s fits, one thread
    python benchmarks/memory.py --rows 200000   # quicker

Three fits: the .npy and the CSV file under the time limit (where a body too slow for the limit
gives way to a smaller one), and the .npy file without a time limit for ``--max-steps`` steps
(the largest body, which the row count suggests).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import metadata, write_report

# Runs a command and prints its peak RSS (KiB): a wrapper per measurement, so that RUSAGE_CHILDREN
# (the largest child waited for) is that command's own.
WRAPPER = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(done.returncode)")


def child_peak_mib(command: list[str]) -> tuple[float, float, str]:
    """Peak RSS (MiB) and wall seconds of one command, and its ``saved ...`` line (or its last)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    lines = (done.stdout + done.stderr).strip().splitlines()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {lines[-2:]}")
    peak = int(done.stderr.strip().splitlines()[-1]) / 1024  # KiB on Linux
    saved = [line for line in lines if line.startswith("saved ")]
    return peak, seconds, saved[0] if saved else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=43)
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--max-steps", type=int, default=300, help="steps of the run without a time limit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    args.device = "cpu"
    started, load_start = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    flowkit_command = [str(Path(sys.executable).with_name("flowkit"))]

    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((args.columns, args.columns)) / np.sqrt(args.columns)
    values = rng.standard_normal((args.rows, args.columns)) @ mixing.T
    values[:, :5] = np.exp(values[:, :5])  # skewed, strictly positive columns, as real tables have
    float64_mib = values.nbytes / 2**20
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        files = {"npy": Path(folder) / "table.npy", "csv": Path(folder) / "table.csv"}
        np.save(files["npy"], values)
        np.savetxt(files["csv"], values, delimiter=",", fmt="%.7g", comments="",
                   header=",".join(f"c{i}" for i in range(args.columns)))
        del values
        # The floor no table changes: torch and flowkit. torch.optim's first step imports
        # torch._dynamo (about 70 MiB more), which is why the trainers use flowkit's own AdamW.
        step = "o = {}(torch.nn.Linear(2, 2).parameters()); o.zero_grad(); o.step()"
        for label, code in (("import torch and flowkit", "import torch, flowkit"),
                            ("... and one step of flowkit's AdamW", "import torch, flowkit; "
                             "from flowkit.train.adamw import AdamW; " + step.format("AdamW")),
                            ("... and one step of torch.optim.AdamW (not used)", "import torch, flowkit; "
                             + step.format("torch.optim.AdamW"))):
            peak, seconds, _ = child_peak_mib([sys.executable, "-c", code])
            rows.append({"run": label, "peak_mib": peak, "seconds": seconds})
        runs = [("npy", ["--time-limit", str(args.time_limit)], f"--time-limit {args.time_limit:g}"),
                ("csv", ["--time-limit", str(args.time_limit)], f"--time-limit {args.time_limit:g}"),
                # No time limit: the body the row count suggests (the largest), for a few steps.
                ("npy", ["--max-steps", str(args.max_steps)], f"--max-steps {args.max_steps}")]
        for kind, options, label in runs:
            command = [*flowkit_command, "--threads", str(args.threads), "fit", str(files[kind]), *options,
                       "--output", str(Path(folder) / f"{kind}.flowkit"), "--no-plot"]
            peak, seconds, line = child_peak_mib(command)
            rows.append({"run": f"flowkit fit table.{kind} {label}", "file_mib": files[kind].stat().st_size / 2**20,
                         "peak_mib": peak, "seconds": seconds, "output": line.replace(folder + os.sep, "")})
    config = {"rows": args.rows, "columns": args.columns, "time_limit": args.time_limit, "max_steps": args.max_steps}
    report = {**metadata(args, "memory.py", load_start, started, config), "rows": args.rows, "columns": args.columns,
              "float64_mib": float64_mib, "time_limit": args.time_limit, "runs": rows}
    lines = [
        f"# Peak memory of `flowkit fit` on {args.rows:,} x {args.columns}", "",
        f"`{report['command']}`, {report['date']}, torch {torch.__version__}, {args.threads} thread(s), "
        f"time limit {args.time_limit:g} s. The table is {float64_mib:.0f} MiB as float64 "
        f"({float64_mib / 2:.0f} MiB as the float32 the model trains on).", "",
        "| run | file MiB | peak RSS MiB | peak / float64 data | seconds |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        file_mib = f"{row['file_mib']:.0f}" if "file_mib" in row else ""
        lines.append(f"| {row['run']} | {file_mib} | {row['peak_mib']:.0f} | {row['peak_mib'] / float64_mib:.2f} "
                     f"| {row['seconds']:.1f} |")
    lines += ["", "Fits: " + "; ".join(row["output"] for row in rows if "output" in row), ""]
    stem = write_report(report, "memory", args, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
