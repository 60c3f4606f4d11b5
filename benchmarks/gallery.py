"""The 2-D gallery: every toy fitted by maximum likelihood and every 2-D target by reverse KL, with
flowkit's own ``fit_toy`` / ``fit_target`` (what ``flowkit toy`` runs), drawn in one figure with a
Markdown table of their figures.

    python benchmarks/gallery.py                 # all fits (15-35 min on one core), then the figure
    python benchmarks/gallery.py --replot        # redraw from the cached fits in out/gallery/
    python benchmarks/gallery.py --only banana two_moons

Writes ``benchmarks/results/gallery.png``, ``gallery.md`` and ``gallery.json``. Torch runs on one
thread (``--threads``), so the run takes one core.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from flowkit.data.grid import TARGET_BOXES, Box, DensityGrid
from flowkit.data.toys import TOYS
from flowkit.io import atomic_write
from flowkit.plotting.gallery import GalleryItem, gallery_table, plot_gallery
from flowkit.plotting.toys import density_grids
from flowkit.train.toy import fit_target, fit_toy

HERE = Path(__file__).resolve().parent
CACHE = HERE.parent / "out" / "gallery"
RESOLUTION = 150


def _save_item(item: GalleryItem) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    arrays = {"model": item.model.log_density, "samples": item.samples, "box": np.array([*item.model.box.low,
                                                                                          *item.model.box.high])}
    if item.truth is not None:
        arrays["truth"] = item.truth.log_density
    if item.data is not None:
        arrays["data"] = item.data
    np.savez_compressed(CACHE / f"{item.kind}-{item.name}.npz", **arrays)
    (CACHE / f"{item.kind}-{item.name}.json").write_text(json.dumps(item.metrics))


def _load_item(kind: str, name: str) -> GalleryItem:
    arrays = np.load(CACHE / f"{kind}-{name}.npz")
    low0, low1, high0, high1 = arrays["box"]
    box = Box((float(low0), float(low1)), (float(high0), float(high1)))
    xs, ys = box.cells(arrays["model"].shape[1])
    grid = lambda values: DensityGrid(box, xs, ys, values)
    return GalleryItem(name, kind, grid(arrays["truth"]) if "truth" in arrays else None, grid(arrays["model"]),
                       arrays["samples"], arrays["data"] if "data" in arrays else None,
                       json.loads((CACHE / f"{kind}-{name}.json").read_text()))


def fit_item(kind: str, name: str, steps: int, time_limit: float, seed: int) -> GalleryItem:
    started = time.time()
    if kind == "toy":
        fit = fit_toy(name, steps=steps, time_limit=time_limit, seed=seed)
    else:
        fit = fit_target(name, steps=steps, time_limit=time_limit, seed=seed)
    truth, model = density_grids(fit, RESOLUTION)
    item = GalleryItem(name, kind, truth, model, fit.sample(3000, seed=seed), None if fit.data is None
                       else fit.data[:3000], fit.metrics)
    gap = fit.metrics.get("kl_from_truth") if kind == "toy" else fit.metrics.get("elbo_gap")
    print(f"{kind} {name}: {fit.metrics['steps']} steps, gap {gap}, {time.time() - started:.0f} s", flush=True)
    return item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--time-limit", type=float, default=100.0, help="seconds of training per fit at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None, help="refit only these (the rest from the cache)")
    parser.add_argument("--replot", action="store_true", help="fit nothing; draw from the cache")
    parser.add_argument("--output-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    entries = [("toy", name) for name in TOYS] + [("target", name) for name in TARGET_BOXES]
    items = []
    for kind, name in entries:
        cached = (CACHE / f"{kind}-{name}.npz").exists()
        refit = not args.replot and (args.only is None or name in args.only or not cached)
        if refit:
            item = fit_item(kind, name, args.steps, args.time_limit, args.seed)
            _save_item(item)
        items.append(item if refit else _load_item(kind, name))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    plot_gallery(items, args.output_dir / "gallery.png")
    header = (f"# 2-D gallery\n\nflowkit's own fits (`fit_toy` / `fit_target`, what `flowkit toy` runs): "
              f"nsf_coupling, 4 transforms, hidden 64, {args.steps} steps (at most {args.time_limit:.0f} s each), "
              f"seed {args.seed}, one CPU thread ({platform.processor() or platform.machine()}). Nats per point. "
              "Toys: 10000 rows (9000 train, 1000 validation), scored on 10000 fresh rows; the gap is the "
              "estimate of KL(truth || fit) on them, with its standard error. Targets: reverse KL with 256 "
              "samples a step; diagnostics on 20000 fresh samples; log Z exact or by the midpoint rule on a "
              "1000 x 1000 grid. A fit that reached its time limit ran fewer steps (the steps column). "
              "PSIS k-hat above 0.7 says the importance weights have heavy tails: q misses mass of the "
              "target (reverse KL is mode-seeking), and the ESS and log Z estimate cannot be trusted. "
              "Regenerate with `make gallery`.\n\n")
    atomic_write(args.output_dir / "gallery.md", lambda handle: handle.write(header + gallery_table(items)), mode="w")
    figures = {f"{item.kind}:{item.name}": item.metrics for item in items}
    atomic_write(args.output_dir / "gallery.json", lambda handle: handle.write(json.dumps(figures, indent=1)), mode="w")
    print(f"wrote {args.output_dir / 'gallery.png'}, gallery.md and gallery.json")


if __name__ == "__main__":
    main()
