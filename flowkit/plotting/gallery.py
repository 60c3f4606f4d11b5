"""The gallery: every toy and target fit in one figure, a (truth, learned density, samples) triple
each, and the Markdown table of their figures.

The figure is drawn from plain arrays (``GalleryItem``), so a long run of fits can be cached and
drawn again without fitting. Each triple has its own log colour scale, three decades below the
true density's peak (the model's peak where the truth is unknown), shared by its truth and model
panels; the colour bar at the bottom reads in units of that peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from flowkit.data.grid import DensityGrid
from flowkit.plotting.common import DENSITY_MAP, LOG_DECADES, density_norm, draw_density, save


@dataclass
class GalleryItem:
    """One fit, as the gallery draws it: ``truth`` is None where the true density is unknown
    (the panel then shows ``data``)."""

    name: str
    kind: str
    truth: DensityGrid | None
    model: DensityGrid
    samples: np.ndarray
    data: np.ndarray | None
    metrics: dict[str, Any]


def _style(axis, grid: DensityGrid) -> None:
    axis.set_xlim(grid.box.low[0], grid.box.high[0])
    axis.set_ylim(grid.box.low[1], grid.box.high[1])
    axis.tick_params(labelsize=5, length=2, pad=1)


def plot_gallery(items: list[GalleryItem], path: str | Path, per_row: int = 3, panel: float = 1.55,
                 dpi: int = 72) -> None:
    """All items in one figure, ``per_row`` triples to a row."""
    rows = -(-len(items) // per_row)
    figure = Figure(figsize=(3 * per_row * panel + 0.4, rows * (panel + 0.32) + 0.9), layout="constrained")
    axes = np.atleast_2d(figure.subplots(rows, 3 * per_row))
    for index, item in enumerate(items):
        row, column = divmod(index, per_row)
        truth_axis, model_axis, sample_axis = axes[row, 3 * column:3 * column + 3]
        title = item.name if item.kind == "toy" else f"{item.name} (target)"
        peak = float((item.truth if item.truth is not None else item.model).density.max())
        norm = density_norm(peak, "log")
        if item.truth is not None:
            draw_density(truth_axis, item.truth, norm)
            truth_axis.set_title(f"{title}: truth", fontsize=7)
        else:
            shown = item.data[:3000]
            truth_axis.scatter(shown[:, 0], shown[:, 1], s=0.3, c="#1f3b73", alpha=0.5, linewidths=0, rasterized=True)
            truth_axis.set_title(f"{title}: data (no density)", fontsize=7)
        draw_density(model_axis, item.model, norm)
        gap = item.metrics.get("kl_from_truth") if item.kind == "toy" else item.metrics.get("elbo_gap")
        label = "KL" if item.kind == "toy" else "ELBO gap"
        model_axis.set_title("learned" + ("" if gap is None else f" ({label} {gap:.3f})"), fontsize=7)
        shown = item.samples[:3000]
        sample_axis.scatter(shown[:, 0], shown[:, 1], s=0.3, c="#1f3b73", alpha=0.5, linewidths=0, rasterized=True)
        sample_axis.set_title("samples" if item.kind == "toy" else
                              f"samples (ESS {100 * item.metrics['ess_fraction']:.0f}%)", fontsize=7)
        for axis in (truth_axis, model_axis, sample_axis):
            _style(axis, item.model)
    for axis in axes.flat[3 * len(items):]:
        axis.set_visible(False)
    mappable = ScalarMappable(norm=density_norm(1.0, "log"), cmap=DENSITY_MAP)
    bar = figure.colorbar(mappable, ax=axes[-1, :].tolist(), orientation="horizontal", fraction=0.5, aspect=60,
                          shrink=0.5, pad=0.02)
    bar.set_label(f"density / peak density of the truth (log colour scale, {LOG_DECADES:.0f} decades)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    save(figure, path, dpi=dpi, tight=False)


def gallery_table(items: list[GalleryItem]) -> str:
    """The Markdown tables of the gallery's figures (nats per point)."""
    lines = ["| toy | held-out NLL, fit | held-out NLL, truth | gap (KL from truth) | Gaussian NLL | steps |",
             "|---|---:|---:|---:|---:|---:|"]
    for item in items:
        m = item.metrics
        if item.kind != "toy":
            continue
        truth = "unknown" if m["truth_nll"] is None else f"{m['truth_nll']:.3f}"
        gap = "-" if m["kl_from_truth"] is None else f"{m['kl_from_truth']:.3f} ± {m['kl_standard_error']:.3f}"
        lines.append(f"| {item.name} | {m['test_nll']:.3f} | {truth} | {gap} | {m['gaussian_nll']:.3f} "
                     f"| {m['steps']} |")
    lines += ["", "| target | log Z (source) | ELBO | ELBO gap to log Z | IS log Z error | ESS fraction "
              "| PSIS k-hat | steps |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for item in items:
        m = item.metrics
        if item.kind != "target":
            continue
        lines.append(f"| {item.name} | {m['log_z']:.3f} ({m['log_z_source']}) | {m['elbo']:.3f} "
                     f"| {m['elbo_gap']:.3f} | {m['log_z_error']:+.3f} | {m['ess_fraction']:.3f} "
                     f"| {m['khat']:.2f} | {m['steps']} |")
    return "\n".join(lines) + "\n"
