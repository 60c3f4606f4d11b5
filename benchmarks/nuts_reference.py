"""Reference posteriors by a long Pyro NUTS run, cached in ``benchmarks/results/nuts_<name>.json``.

A variational benchmark on a real posterior needs answers it did not produce itself. One NUTS
chain (float64, one thread) gives the posterior means and standard deviations; convergence is
checked by splitting that chain (split R-hat, and the bulk ESS of the whole chain, both from
``pyro.ops.stats``), and both are stored with the seed and the settings. Later runs read the file;
``load_reference(..., refresh=True)`` (``variational.py --refresh-reference``) reruns the chain.

    python benchmarks/nuts_reference.py                  # the breast-cancer logistic regression
    python benchmarks/nuts_reference.py --draws 500 --warmup 300 --no-save   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's flowkit, not an installed one
from flowkit.data.targets import BayesianLogisticRegression  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {"chains": 1, "warmup": 1000, "draws": 4000, "max_tree_depth": 8, "target_accept_prob": 0.8, "seed": 0}
PRIOR_SCALE = 1.0


def breast_cancer_regression(prior_scale: float = PRIOR_SCALE) -> BayesianLogisticRegression:
    """scikit-learn's breast cancer table (569 rows, 30 covariates), the covariates standardised
    (so one prior scale suits every weight) plus an intercept column: a 31-D posterior."""
    from sklearn.datasets import load_breast_cancer

    covariates, labels = load_breast_cancer(return_X_y=True)
    covariates = (covariates - covariates.mean(0)) / covariates.std(0)
    covariates = np.concatenate([np.ones((len(covariates), 1)), covariates], axis=1)
    return BayesianLogisticRegression(torch.from_numpy(covariates), torch.from_numpy(labels.astype(np.float64)),
                                      prior_scale=prior_scale)


DATASETS = {"breast_cancer": breast_cancer_regression}


def run_nuts(target: BayesianLogisticRegression, warmup: int, draws: int, max_tree_depth: int,
             target_accept_prob: float, seed: int, **_) -> dict:
    """One NUTS chain on ``target``'s log-density; moments and split-chain diagnostics."""
    import pyro.ops.stats as stats
    from pyro.infer import MCMC, NUTS

    torch.manual_seed(seed)
    # potential_fn with a traced gradient: no Pyro model trace per leapfrog step (several times faster).
    kernel = NUTS(potential_fn=lambda params: -target(params["w"][None])[0], jit_compile=True,
                  ignore_jit_warnings=True, max_tree_depth=max_tree_depth, target_accept_prob=target_accept_prob)
    mcmc = MCMC(kernel, num_samples=draws, warmup_steps=warmup, disable_progbar=True,
                initial_params={"w": torch.zeros(target.features, dtype=torch.float64)})
    start = time.perf_counter()
    mcmc.run()
    seconds = time.perf_counter() - start
    chain = mcmc.get_samples()["w"].double()
    # split R-hat compares the chain's two halves; the ESS counts the whole chain's autocorrelation.
    ess = stats.effective_sample_size(chain[None], chain_dim=0, sample_dim=1)
    return {"mean": chain.mean(0).tolist(), "std": chain.std(0).tolist(),
            "split_rhat_max": stats.split_gelman_rubin(chain[None], chain_dim=0, sample_dim=1).max().item(),
            "ess_min": ess.min().item(), "ess_median": ess.median().item(),
            "step_size": float(kernel.step_size), "seconds": round(seconds, 1)}


def load_reference(name: str, refresh: bool = False, save: bool = True, **overrides) -> dict:
    """The cached reference of dataset ``name``; run (and save) NUTS when absent or ``refresh``."""
    path = RESULTS / f"nuts_{name}.json"
    settings = {**SETTINGS, **overrides}
    if path.exists() and not refresh:
        return json.loads(path.read_text())
    target = DATASETS[name]()
    print(f"NUTS reference for {name}: {settings} (minutes) ...", flush=True)
    reference = {"dataset": name, "features": target.features, "prior_scale": target.prior_scale,
                 "settings": settings, "torch": torch.__version__, "threads": torch.get_num_threads(),
                 **run_nuts(target, **settings)}
    print(f"  {reference['seconds']} s, split R-hat max {reference['split_rhat_max']:.3f}, "
          f"ESS min {reference['ess_min']:.0f} of {settings['draws']}", flush=True)
    if save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(reference, indent=2) + "\n")
        temporary.replace(path)
    return reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="breast_cancer", choices=sorted(DATASETS))
    parser.add_argument("--warmup", type=int, default=SETTINGS["warmup"])
    parser.add_argument("--draws", type=int, default=SETTINGS["draws"])
    parser.add_argument("--seed", type=int, default=SETTINGS["seed"])
    parser.add_argument("--no-save", action="store_true", help="print, do not write the cache")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reference = load_reference(args.dataset, refresh=True, save=not args.no_save, warmup=args.warmup,
                               draws=args.draws, seed=args.seed)
    print(json.dumps({key: value for key, value in reference.items() if key not in ("mean", "std")}))


if __name__ == "__main__":
    main()
