"""Reverse-KL posteriors: flowkit's presets (defaults of ``fit_variational``, posterior head
included) against zuko's MAF and NSF trained by plain Adam, on targets with known answers.

Targets: a 5-D correlated Gaussian (variances 0.1 to 10, rotated), Neal's 5-D funnel, Haario's
2-D banana, and a Bayesian logistic regression on scikit-learn's breast-cancer table (31-D, N(0, 1)
prior on standardised covariates and an intercept) whose reference means and standard deviations
come from a long Pyro NUTS chain (``nuts_reference.py``, cached in ``results/nuts_breast_cancer.json``).

Protocol, alike for every method: the same transforms and hidden widths (3 x (64, 64)), 500 steps of
256 samples, learning rate 5e-3 with cosine decay to zero (``fit_variational``'s schedule; its
default rate, 1e-3, is meant for 2000 steps: at 500 it leaves every method under-trained, e.g.
on the logistic posterior flowkit iaf's std error 0.23 against 0.06 at 5e-3, zuko MAF's 0.54
against 0.30), seeds 0-2 (0-1 on the 31-D posterior). flowkit: ``flowkit.build(preset, ...)``
then ``fit_variational`` with every other option at its default (AdamW without weight decay,
gradient-norm clip 5, the posterior head). zuko:
``torch.optim.Adam``, the loss ``mean(log q(x) - log p(x))`` on ``flow().rsample_and_log_prob``;
a step with a non-finite loss is skipped (and counted), as flowkit's loop does. Then for each fit,
``flowkit.importance_sample`` (PSIS) on 8192 draws: the same code path for both libraries, zuko's
flow through a two-method adapter.

Errors, over coordinates: ``mean error = max_i |mean_q,i - mean_i| / std_i`` and
``std error = max_i |std_q,i / std_i - 1|``, from q's own draws (and after PSIS reweighting). On
the funnel only the neck v counts: the sample std of the other coordinates is dominated by
e^{v/2}'s tail (from 8192 exact draws it is itself off by tens of percent).

zuko's NSF is not fitted to the 31-D posterior by default (``--all-pairs`` does): its sampling
inverts each autoregressive layer with one network pass per coordinate, 1.9 s a training step
here, 16 minutes a fit.

    python benchmarks/variational.py                 # the recorded run (one thread, 22 min)
    python benchmarks/variational.py --quick         # 1 seed, 100 steps, maf, iaf and zuko: ~75 s
    python benchmarks/variational.py --refresh-reference --targets logistic

Results: ``benchmarks/results/variational_cpu[_<tag>].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's flowkit, not an installed one
import common  # noqa: E402
import nuts_reference  # noqa: E402

import flowkit  # noqa: E402
from flowkit.data.targets import Banana, CorrelatedGaussian, NealsFunnel  # noqa: E402

PRESETS = ["maf", "iaf", "realnvp", "nsf", "nsf_coupling"]
ZUKO = ["MAF", "NSF"]
IMPORTANCE_SAMPLES = 8192
SKIPPED = {("logistic", "zuko NSF"): "1.9 s a training step here (one network pass per coordinate to sample)"}


def make_targets(refresh: bool) -> dict[str, dict]:
    """``{name: {"target", "mean", "std", "log_z", "coordinates"}}`` with float64 references."""
    def known(target: nn.Module, coordinates: slice = slice(None)) -> dict:
        return {"target": target, "mean": target.mean, "std": target.covariance.diagonal().sqrt(),
                "log_z": target.log_z, "coordinates": coordinates, "reference": "exact"}

    reference = nuts_reference.load_reference("breast_cancer", refresh=refresh)
    logistic = {"target": nuts_reference.breast_cancer_regression(reference["prior_scale"]),
                "mean": torch.tensor(reference["mean"]), "std": torch.tensor(reference["std"]), "log_z": None,
                "coordinates": slice(None),
                "reference": f"NUTS, {reference['settings']['draws']} draws, ESS >= {reference['ess_min']:.0f}, "
                             f"split R-hat {reference['split_rhat_max']:.3f}"}
    return {"gaussian": known(CorrelatedGaussian(features=5, seed=0)),
            "funnel": known(NealsFunnel(features=5), slice(0, 1)),
            "banana": known(Banana()),
            "logistic": logistic}


class ZukoProposal(nn.Module):
    """A zuko flow seen as ``importance_sample`` sees a proposal: ``rsample_and_log_prob(n, context)``."""

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def rsample_and_log_prob(self, num_samples: int, context: torch.Tensor | None = None):
        return self.flow(context).rsample_and_log_prob((num_samples,))


def fit_zuko(flow: nn.Module, target: nn.Module, steps: int, num_samples: int, learning_rate: float) -> int:
    """Plain Adam on the reparameterised reverse KL, cosine-decayed; returns the skipped steps."""
    optimizer = torch.optim.Adam(flow.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    skipped = 0
    for _ in range(steps):
        x, log_q = flow().rsample_and_log_prob((num_samples,))
        loss = (log_q - target(x)).mean()
        optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            optimizer.step()
        else:
            skipped += 1
        schedule.step()
    return skipped


def fit_one(method: str, spec: dict, args: argparse.Namespace, seed: int) -> dict:
    """Build, fit and score one method on one target with one seed."""
    import zuko

    target, features = spec["target"], spec["target"].features
    hidden = (args.hidden, args.hidden)
    torch.manual_seed(seed)
    record: dict = {"method": method, "seed": seed}
    if method.startswith("zuko"):
        kind = method.split()[1]
        flow = getattr(zuko.flows, kind)(features, transforms=args.transforms, hidden_features=hidden)
        record["parameters"] = common.parameter_count(flow)
        skipped = []
        seconds = common.timed(lambda: skipped.append(fit_zuko(flow, target, args.steps, args.samples,
                                                               args.learning_rate)), "cpu")
        record["skipped_steps"], proposal = skipped[0], ZukoProposal(flow)
    else:
        flow = flowkit.build(method.split()[1], features=features, transforms=args.transforms, hidden_features=hidden,
                             seed=seed)
        record["body_parameters"] = common.parameter_count(flow)
        fitted = []
        seconds = common.timed(lambda: fitted.append(flowkit.fit_variational(
            flow, target, steps=args.steps, num_samples=args.samples, learning_rate=args.learning_rate, seed=seed,
            progress=False, diagnostic_samples=0)), "cpu")
        record["parameters"] = common.parameter_count(flow)  # the posterior head included
        record["stopped"], proposal = fitted[0].stopped, flow
    record["seconds"] = round(seconds, 2)
    torch.manual_seed(10_000 + seed)
    result = flowkit.importance_sample(proposal, target, IMPORTANCE_SAMPLES, warn=False)
    return {**record, **score(result, spec)}


def moment_errors(mean: torch.Tensor, std: torch.Tensor, spec: dict) -> tuple[float, float]:
    """``max_i |mean_i - ref_i| / ref std_i`` and ``max_i |std_i / ref std_i - 1|`` over the kept coordinates."""
    keep = spec["coordinates"]
    if not bool(torch.isfinite(mean).all() and torch.isfinite(std).all()):
        return math.inf, math.inf
    reference_std = spec["std"][keep]
    return (((mean - spec["mean"][keep]).abs() / reference_std).max().item(),
            (std / reference_std - 1).abs().max().item())


def noise_floor(spec: dict) -> tuple[float, float] | None:
    """The errors of as many exact draws as q gets: what no method can beat (None without a sampler)."""
    if spec["reference"] != "exact":
        return None
    draws = spec["target"].sample(IMPORTANCE_SAMPLES, torch.Generator().manual_seed(0))[:, spec["coordinates"]]
    return moment_errors(draws.mean(0), draws.std(0), spec)


def score(result: flowkit.ImportanceResult, spec: dict) -> dict:
    """Moment errors of q and of its PSIS reweighting, log Z, ESS fraction and k-hat."""
    keep = spec["coordinates"]
    draws = result.samples[:, keep]
    finite = bool(torch.isfinite(draws).all())
    mean_error, std_error = moment_errors(draws.mean(0), draws.std(0), spec)
    psis_mean_error, psis_std_error = moment_errors(
        result.mean[keep], result.covariance.diagonal()[keep].clamp(min=0).sqrt(), spec)
    return {"mean_error": mean_error, "std_error": std_error, "psis_mean_error": psis_mean_error,
            "psis_std_error": psis_std_error, "log_z": result.log_z, "log_z_se": result.log_z_se,
            "ess_fraction": result.ess / IMPORTANCE_SAMPLES, "khat": result.khat,
            "q_std": draws.std(0).tolist() if finite else None}


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and spread (population std over seeds) of each figure, per target and method."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["target"], row["method"]), []).append(row)
    summary = []
    for (target, method), group in groups.items():
        entry = {"target": target, "method": method, "seeds": len(group), "parameters": group[0]["parameters"]}
        for key in ("mean_error", "std_error", "psis_mean_error", "psis_std_error", "log_z", "log_z_se",
                    "ess_fraction", "khat", "seconds"):
            values = [row[key] for row in group]
            finite = all(math.isfinite(value) for value in values)
            entry[key] = statistics.fmean(values) if finite else math.inf
            entry[key + "_sd"] = statistics.pstdev(values) if finite else math.inf
        summary.append(entry)
    return summary


def verdict(flowkit_entry: dict, zuko_entry: dict) -> str:
    """better / met / worse on the std error: differences within 0.02 or the seeds' spreads are a tie."""
    difference = flowkit_entry["std_error"] - zuko_entry["std_error"]
    tolerance = max(0.02, flowkit_entry["std_error_sd"] + zuko_entry["std_error_sd"])
    if not math.isfinite(difference) or abs(difference) <= tolerance:
        return "met" if math.isfinite(flowkit_entry["std_error"]) else "worse"
    return "better" if difference < 0 else "worse"


def _figure(entry: dict, key: str, digits: int = 3) -> str:
    value, spread = entry[key], entry[key + "_sd"]
    if not math.isfinite(value):
        return "inf"
    return f"{value:.{digits}f}" if entry["seeds"] == 1 else f"{value:.{digits}f} ± {spread:.{digits}f}"


def markdown(summary: list[dict], specs: dict, meta: dict) -> str:
    lines = ["# Reverse-KL posteriors: flowkit presets against zuko", "",
             f"`{meta['command']}`; {meta['date']}; torch {meta['versions']['torch']}, zuko "
             f"{meta['versions']['zuko']}; {meta['threads']} thread; {meta['wall_seconds']} s in all.", "",
             f"Every method: {meta['config']['transforms']} transforms, hidden {meta['config']['hidden']}, "
             f"{meta['config']['steps']} steps of {meta['config']['samples']} samples, lr "
             f"{meta['config']['learning_rate']} with cosine decay, seeds {meta['config']['seeds']} "
             f"({meta['config']['logistic_seeds']} on logistic). flowkit: "
             "`fit_variational` defaults (posterior head, clip 5); zuko: plain Adam. Figures are the mean ± "
             "std over seeds. Mean error: max over coordinates of |Δmean| / reference std; std error: max of "
             "|std / reference std - 1|; 'PSIS' after reweighting 8192 draws. Parameters: flowkit's include "
             "the posterior head.", "", *(f"Skipped: {line}." for line in meta["config"]["skipped"]), ""]
    for name, spec in specs.items():
        entries = [entry for entry in summary if entry["target"] == name]
        if not entries:
            continue
        truth = "unknown" if spec["log_z"] is None else f"{spec['log_z']:g}"
        lines += [f"## {name} ({spec['target'].features}-D; reference: {spec['reference']}; true log Z {truth})", "",
                  "| method | parameters | mean error | std error | PSIS mean error | PSIS std error | log Z (IS) "
                  "| log Z se | ESS fraction | k-hat | seconds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        floor = noise_floor(spec)
        if floor is not None:
            lines.append(f"| exact draws (noise floor) | - | {floor[0]:.3f} | {floor[1]:.3f} | | | | | | | |")
        for entry in entries:
            lines.append(f"| {entry['method']} | {entry['parameters']} | {_figure(entry, 'mean_error')} "
                         f"| {_figure(entry, 'std_error')} | {_figure(entry, 'psis_mean_error')} "
                         f"| {_figure(entry, 'psis_std_error')} | {_figure(entry, 'log_z')} "
                         f"| {entry['log_z_se']:.3f} | {_figure(entry, 'ess_fraction', 2)} "
                         f"| {_figure(entry, 'khat', 2)} | {entry['seconds']:.0f} |")
        lines.append("")
    lines += ["## flowkit against zuko's better flow, on the std error", "",
              "| target | zuko's better | " + " | ".join(PRESETS) + " |", "|---|---|" + "---|" * len(PRESETS)]
    for name in specs:
        zuko = [entry for entry in summary if entry["target"] == name and entry["method"].startswith("zuko")]
        ours = {entry["method"].split()[1]: entry for entry in summary
                if entry["target"] == name and entry["method"].startswith("flowkit")}
        if not zuko or not ours:
            continue
        best = min(zuko, key=lambda entry: entry["std_error"])
        cells = [f"{verdict(ours[preset], best)} ({ours[preset]['std_error']:.3f})" if preset in ours else "-"
                 for preset in PRESETS]
        lines.append(f"| {name} | {best['method']} ({best['std_error']:.3f}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", nargs="+", default=["gaussian", "funnel", "banana", "logistic"])
    parser.add_argument("--methods", nargs="+", default=[*(f"flowkit {p}" for p in PRESETS),
                                                         *(f"zuko {k}" for k in ZUKO)])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--logistic-seeds", type=int, default=2, help="seeds on the 31-D posterior")
    parser.add_argument("--all-pairs", action="store_true", help="also zuko's NSF on the 31-D posterior")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--samples", type=int, default=256, help="reparameterised draws a step")
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--transforms", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64, help="width of the two hidden layers")
    parser.add_argument("--quick", action="store_true", help="1 seed, 100 steps, maf, iaf and zuko")
    parser.add_argument("--refresh-reference", action="store_true", help="rerun the NUTS reference")
    parser.add_argument("--tag", default="", help="suffix for the result file names")
    parser.add_argument("--render-only", action="store_true", help="rewrite the .md from the recorded .json")
    args = parser.parse_args()
    args.device = "cpu"
    if args.quick:
        args.seeds = args.logistic_seeds = 1
        args.steps, args.tag = 100, args.tag or "quick"
        args.methods = ["flowkit maf", "flowkit iaf", "zuko MAF", "zuko NSF"]
    torch.set_num_threads(1)
    started, load_start = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    specs = {name: spec for name, spec in make_targets(args.refresh_reference).items() if name in args.targets}
    if args.render_only:
        stem = common.RESULTS / f"variational_cpu{'_' + args.tag if args.tag else ''}"
        report = json.loads(stem.with_suffix(".json").read_text())
        stem.with_suffix(".md").write_text(markdown(report["summary"], specs, report["meta"]))
        return
    rows = []
    for name, spec in specs.items():
        for method in args.methods:
            if (name, method) in SKIPPED and not args.all_pairs:
                continue
            for seed in range(args.logistic_seeds if name == "logistic" else args.seeds):
                rows.append({"target": name, **fit_one(method, spec, args, seed)})
                row = rows[-1]
                print(f"{name:9s} {method:20s} seed {seed}: mean err {row['mean_error']:.3f}  std err "
                      f"{row['std_error']:.3f}  log Z {row['log_z']:.3f}  ESS {row['ess_fraction']:.2f}  "
                      f"k-hat {row['khat']:.2f}  {row['seconds']:.0f} s", flush=True)
    config = {"transforms": args.transforms, "hidden": [args.hidden] * 2, "steps": args.steps,
              "samples": args.samples, "learning_rate": args.learning_rate, "schedule": "cosine",
              "seeds": list(range(args.seeds)), "logistic_seeds": list(range(args.logistic_seeds)),
              "skipped": [] if args.all_pairs else [f"{t} / {m}: {why}" for (t, m), why in SKIPPED.items()],
              "importance_samples": IMPORTANCE_SAMPLES, "dtype": "float32"}
    meta = common.metadata(args, "variational.py", load_start, started, config=config)
    summary = summarise(rows)
    common.write_report({"meta": meta, "summary": summary, "rows": rows}, "variational", args,
                        markdown(summary, specs, meta))


if __name__ == "__main__":
    main()
