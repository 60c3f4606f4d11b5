"""`flowkit fit` with its defaults against a full-covariance Gaussian and zuko's NSF, at the same
wall-clock budget, on real tables: held-out log-likelihood per row in the data's own units.

Protocol (the one a new user follows): each table is split 80/20 (seeded; MINIBOONE comes split:
its standard validation rows train, its test rows are held out), the training rows are written to
a CSV, `flowkit fit train.csv --time-limit B -q` runs with every other option at its default, and
`flowkit score` scores the held-out rows. zuko's NSF (5 transforms, hidden (256, 256), Adam 1e-3,
batch 256, 10% of the training rows for validation, best-validation weights, standardised inputs)
trains in the same process budget. The Gaussian is the maximum-likelihood one of the training
rows. Integer tables (digits) are dequantised with uniform noise in [0, 1) before the split.

    python benchmarks/tabular.py                      # every table, budgets 30 s and 120 s
    python benchmarks/tabular.py --tables wine --budgets 30

Results: benchmarks/results/tabular_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MINIBOONE = ROOT.parent / "shared" / "datasets" / "miniboone"
RESULTS = ROOT / "benchmarks" / "results"


def _split(values: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(values))
    cut = int(round(0.8 * len(values)))
    return values[order[:cut]], values[order[cut:]]


def _sklearn(name: str) -> np.ndarray:
    import sklearn.datasets as sk

    return getattr(sk, f"load_{name}")().data.astype(np.float64)


def _statsmodels(name: str, drop: tuple[str, ...] = ()) -> np.ndarray:
    import statsmodels.api as sm

    frame = getattr(sm.datasets, name).load_pandas().data.select_dtypes("number")
    return frame.drop(columns=list(drop)).to_numpy(np.float64)


def _dequantised(values: np.ndarray, seed: int = 0) -> np.ndarray:
    return values + np.random.default_rng(seed + 1).uniform(0.0, 1.0, values.shape)


TABLES = {
    "miniboone": lambda: (np.load(MINIBOONE / "val.npy"), np.load(MINIBOONE / "test.npy")),
    "breast_cancer": lambda: _split(_sklearn("breast_cancer")),
    "wine": lambda: _split(_sklearn("wine")),
    "digits": lambda: _split(_dequantised(_sklearn("digits"))),
    "macrodata": lambda: _split(_statsmodels("macrodata", drop=("year", "quarter"))),
    "star98": lambda: _split(_statsmodels("star98")),
}


def mean_and_two_se(log_density: np.ndarray) -> tuple[float, float]:
    return float(log_density.mean()), float(2 * log_density.std(ddof=1) / math.sqrt(len(log_density)))


def gaussian(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    mean = train.mean(0)
    covariance = np.cov(train.T, bias=True)
    sign, log_det = np.linalg.slogdet(covariance)
    if sign <= 0:
        return np.full(len(test), -np.inf)
    centred = test - mean
    mahalanobis = np.einsum("ij,ij->i", centred @ np.linalg.inv(covariance), centred)
    return -0.5 * (mahalanobis + log_det + train.shape[1] * math.log(2 * math.pi))


def flowkit_cli(train: np.ndarray, test: np.ndarray, budget: float, folder: Path) -> tuple[np.ndarray, dict]:
    header = ",".join(f"c{i}" for i in range(train.shape[1]))
    np.savetxt(folder / "train.csv", train, delimiter=",", header=header, comments="", fmt="%.17g")
    np.savetxt(folder / "test.csv", test, delimiter=",", header=header, comments="", fmt="%.17g")
    script = str(Path(sys.executable).with_name("flowkit"))
    started = time.monotonic()
    fit = subprocess.run([script, "--threads", str(torch.get_num_threads()), "fit", str(folder / "train.csv"),
                          "-o", str(folder / "m.flowkit"), "--no-plot", "-q", "--time-limit", str(budget)],
                         capture_output=True, text=True)
    seconds = time.monotonic() - started
    if fit.returncode != 0:
        raise RuntimeError(f"flowkit fit failed: {fit.stderr.strip()}")
    score = subprocess.run([script, "score", str(folder / "m.flowkit"), str(folder / "test.csv"), "-o",
                            str(folder / "s.csv")], capture_output=True, text=True)
    if score.returncode != 0:
        raise RuntimeError(f"flowkit score failed: {score.stderr.strip()}")
    info = json.loads(subprocess.run([script, "info", str(folder / "m.flowkit"), "--json"], capture_output=True,
                                     text=True, check=True).stdout)
    training = info["training"]
    return np.loadtxt(folder / "s.csv", delimiter=",", skiprows=1), {
        "seconds": seconds, "choice": training.get("choice"), "kept": training.get("kept"),
        "steps": training.get("steps"), "stopped": training.get("stopped")}


def zuko_nsf(train: np.ndarray, test: np.ndarray, budget: float, seed: int = 0) -> tuple[np.ndarray, dict]:
    import zuko

    torch.manual_seed(seed)
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)
    order = np.random.default_rng(seed).permutation(len(train))
    held = max(1, int(round(0.1 * len(train))))
    fit_rows = torch.as_tensor((train[order[held:]] - mean) / std, dtype=torch.float32)
    val_rows = torch.as_tensor((train[order[:held]] - mean) / std, dtype=torch.float32)
    flow = zuko.flows.NSF(train.shape[1], transforms=5, hidden_features=(256, 256))
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    best, best_state, epochs = math.inf, copy.deepcopy(flow.state_dict()), 0
    started = time.monotonic()
    while time.monotonic() - started < budget:
        flow.train()
        for batch in torch.randperm(len(fit_rows)).split(256):
            loss = -flow().log_prob(fit_rows[batch]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if time.monotonic() - started >= budget:
                break
        epochs += 1
        flow.eval()
        with torch.no_grad():
            validation = float(-flow().log_prob(val_rows).mean())
        if validation < best:
            best, best_state = validation, copy.deepcopy(flow.state_dict())
    flow.load_state_dict(best_state)
    flow.eval()
    with torch.no_grad():
        scores = flow().log_prob(torch.as_tensor((test - mean) / std, dtype=torch.float32)).double().numpy()
    return scores - np.log(std).sum(), {"seconds": time.monotonic() - started, "epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    parser.add_argument("--budgets", nargs="+", type=float, default=[30.0, 120.0])
    parser.add_argument("--methods", nargs="+", default=["flowkit", "zuko"], choices=["flowkit", "zuko"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, for both libraries")
    parser.add_argument("--tag", default="cpu")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    output = RESULTS / f"tabular_{arguments.tag}.json"
    records = json.loads(output.read_text())["records"] if output.exists() else []
    for name in arguments.tables:
        train, test = TABLES[name]()
        low, width = mean_and_two_se(gaussian(train, test))
        row = {"table": name, "rows": int(len(train)), "columns": int(train.shape[1]), "test_rows": int(len(test))}
        _keep(records, {**row, "method": "gaussian", "budget": None, "mean": low, "two_se": width})
        print(f"{name}: {len(train)} x {train.shape[1]}, gaussian {low:.2f} +- {width:.2f}", flush=True)
        for budget in arguments.budgets:
            for method in arguments.methods:  # interleaved per table and budget
                with tempfile.TemporaryDirectory() as folder:
                    if method == "flowkit":
                        scores, extra = flowkit_cli(train, test, budget, Path(folder))
                    else:
                        scores, extra = zuko_nsf(train, test, budget)
                mean, two_se = mean_and_two_se(scores)
                _keep(records, {**row, "method": method, "budget": budget, "mean": mean, "two_se": two_se, **extra})
                print(f"  {method} {budget:.0f} s: {mean:.2f} +- {two_se:.2f} ({extra})", flush=True)
                _write(output, records)
    _write(output, records)


def _keep(records: list[dict], record: dict) -> None:
    """Replace an earlier record of the same table, method and budget (reruns update the table)."""
    key = (record["table"], record["method"], record["budget"])
    records[:] = [r for r in records if (r["table"], r["method"], r["budget"]) != key] + [record]


def _write(output: Path, records: list[dict]) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": _cpu(), "load_average": os.getloadavg()[0]}
    output.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    output.with_suffix(".md").write_text(markdown(records, meta))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def markdown(records: list[dict], meta: dict) -> str:
    """The table: per table and budget, each method's held-out log-likelihood and the targets."""
    lines = [f"# flowkit fit (defaults) against a Gaussian and zuko NSF ({meta['date']}, torch {meta['torch']}, "
             f"{meta['cpu']}, load average {meta['load_average']:.1f})", "",
             "Held-out log-likelihood, nats per row in the data's own units, mean +- 2 standard errors.", "",
             "| table (train rows x columns) | budget | Gaussian | zuko NSF | flowkit fit | >= Gaussian | >= zuko |",
             "|---|---|---|---|---|---|---|"]
    tables = list(dict.fromkeys(r["table"] for r in records))
    for table in tables:
        rows = {(r["method"], r["budget"]): r for r in records if r["table"] == table}
        base = rows.get(("gaussian", None))
        budgets = sorted({r["budget"] for r in rows.values() if r["budget"] is not None})
        for budget in budgets:
            zuko, ours = rows.get(("zuko", budget)), rows.get(("flowkit", budget))
            cell = lambda r: "-" if r is None else f"{r['mean']:.2f} +- {r['two_se']:.2f}"
            versus = lambda a, b: "-" if a is None or b is None else ("yes" if a["mean"] >= b["mean"] else "no")
            lines.append(f"| {table} ({base['rows']} x {base['columns']}) | {budget:.0f} s | {cell(base)} | "
                         f"{cell(zuko)} | {cell(ours)} | {versus(ours, base)} | {versus(ours, zuko)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
