"""Reverse-KL fits of every preset with its defaults, with and without the posterior head.

Targets with known answers: a 2-D Gaussian of standard deviation 10 (mean (5, -3)), Neal's 5-D
funnel (std of the neck v: 3), a log-normal coordinate (x_0 ~ LogNormal(0, 0.5^2), x_1 ~ N(0, 1):
mean 1.133, std 0.604, 95% quantile 2.28) and two separated modes (N((+-4, 0), 0.7^2 I), equal
weights; the weight of the right mode under q and after PSIS reweighting).

    python benchmarks/variational_defaults.py                      # small flows, 300 steps (~15 min)
    python benchmarks/variational_defaults.py --issue              # NSF 4x(64, 64), 3000 steps, the funnel
    python benchmarks/variational_defaults.py --presets nsf --targets funnel --no-baseline

Results go to ``benchmarks/results/variational_defaults[_issue].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import flowkit
from flowkit.data.targets import GaussianMixture, NealsFunnel

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ["maf", "iaf", "realnvp", "nsf", "nsf_coupling"]


def wide_gaussian(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((x - torch.tensor([5.0, -3.0])) / 10.0).square().sum(-1)


def lognormal_coordinate(x: torch.Tensor) -> torch.Tensor:
    first = x[:, 0]
    inside = first > 0
    log_first = torch.where(inside, first, torch.ones_like(first)).log()
    density = -0.5 * (log_first / 0.5).square() - log_first
    return torch.where(inside, density, -1e3 * (1 + first.square())) - 0.5 * x[:, 1].square()


TARGETS = {
    "wide": (wide_gaussian, 2),
    "funnel": (NealsFunnel(features=5), 5),
    "lognormal": (lognormal_coordinate, 2),
    "modes": (GaussianMixture(torch.tensor([[-4.0, 0.0], [4.0, 0.0]]), 0.7), 2),
}


def summarise(name: str, flow: flowkit.Flow, target) -> dict[str, float]:
    samples = flow.sample(20_000).double()
    if name == "wide":
        return {"std_0": samples[:, 0].std().item(), "std_1": samples[:, 1].std().item()}
    if name == "funnel":
        return {"std_v": samples[:, 0].std().item(), "mean_v": samples[:, 0].mean().item()}
    if name == "lognormal":
        first = samples[:, 0]
        return {"mean": first.mean().item(), "std": first.std().item(),
                "q95": torch.quantile(first, 0.95).item(), "median": first.median().item()}
    result = flowkit.importance_sample(flow, target, 8000, warn=False)
    return {"weight_q": (samples[:, 0] > 0).double().mean().item(),
            "weight_psis": result.expectation(lambda x: (x[:, 0] > 0).double()).item()}


def run(preset: str, name: str, head: bool, size: dict, steps: int, learning_rate: float,
        num_samples: int, seed: int) -> dict:
    target, features = TARGETS[name]
    torch.manual_seed(seed)
    flow = flowkit.build(preset, features=features, **size)
    start = time.perf_counter()
    fit = flowkit.fit_variational(flow, target, steps=steps, learning_rate=learning_rate, num_samples=num_samples,
                                  progress=False, diagnostic_samples=4000, posterior_head="auto" if head else False,
                                  seed=seed)
    seconds = time.perf_counter() - start
    report = {key: value for key, value in fit.diagnostics.items() if isinstance(value, float)}
    return {"preset": preset, "target": name, "head": head, "seconds": seconds, **report,
            **summarise(name, flow, target)}


def describe(row: dict) -> str:
    keys = [key for key in ("std_0", "std_1", "std_v", "mean_v", "mean", "std", "median", "q95", "weight_q",
                            "weight_psis") if key in row]
    return ", ".join(f"{key} {row[key]:.3g}" for key in keys)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--issue", action="store_true", help="the issue's NSF 4x(64, 64) at 3000 steps, lr 1e-3")
    parser.add_argument("--no-baseline", action="store_true", help="skip the fits without the head")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.issue:
        size, steps, learning_rate, num_samples = dict(transforms=4, hidden_features=(64, 64)), 3000, 1e-3, 256
        tag = "_issue"
    else:
        size, steps, learning_rate, num_samples, tag = dict(transforms=2, hidden_features=16), 300, 1e-2, 128, ""
    rows = []
    for name in args.targets:
        for preset in args.presets:
            for head in (True,) if args.no_baseline else (True, False):
                rows.append(run(preset, name, head, size, steps, learning_rate, num_samples, args.seed))
                print(json.dumps(rows[-1]), flush=True)
    command = "python benchmarks/variational_defaults.py " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {"command": command, "size": size, "steps": steps, "learning_rate": learning_rate,
            "num_samples": num_samples, "torch": torch.__version__, "threads": 1,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"variational_defaults{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# Reverse KL with preset defaults, with and without the posterior head", "",
             f"`{command}`: {size}, {steps} steps, lr {learning_rate}, {num_samples} samples a step, seed "
             f"{args.seed}, torch {meta['torch']}, one thread, {meta['date']}.", "",
             "Truth: wide std 10; funnel std_v 3; log-normal mean 1.133, std 0.604, median 1, q95 2.28; "
             "modes weight 0.5.", "",
             "| target | preset | head | ELBO | log Z | ESS fraction | k-hat | answer | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['target']} | {row['preset']} | {'yes' if row['head'] else 'no'} | {row['elbo']:.3f} "
                     f"| {row['log_z']:.3f} | {row['ess_fraction']:.3f} | {row['khat']:.2f} | {describe(row)} "
                     f"| {row['seconds']:.0f} |")
    (RESULTS / f"variational_defaults{tag}.md").write_text("\n".join(lines) + "\n")
    if not math.isfinite(sum(row["elbo"] for row in rows)):
        print("warning: a fit ended with a non-finite ELBO", file=sys.stderr)


if __name__ == "__main__":
    main()
