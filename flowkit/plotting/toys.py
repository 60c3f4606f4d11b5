"""Pictures of a 2-D toy or target fit (``flowkit toy``): truth, learned density and samples on the
same axes and colour scale, the training curve against the truth, and an animation of training.

Density panels use a log colour scale by default (three decades below the true density's peak), so
the thin bridges a flow leaves between modes and the tails it misses stay visible; ``scale="linear"``
gives the usual linear look. Truth and model always share the box, the ticks and the colour scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from flowkit.data.grid import DensityGrid, evaluate_grid
from flowkit.plotting.common import colour_bar, density_norm, draw_density, save
from flowkit.train.toy import ToyFit


def density_grids(fit: ToyFit, resolution: int = 200) -> tuple[DensityGrid | None, DensityGrid]:
    """The true (None where unknown) and learned densities of a fit on its box."""
    truth = None if fit.true_log_density is None else evaluate_grid(fit.true_log_density, fit.box, resolution)
    return truth, evaluate_grid(fit.log_density, fit.box, resolution)


def _peak(truth: DensityGrid | None, model: DensityGrid) -> float:
    return float((truth if truth is not None else model).density.max())


def _scatter(axis, points: np.ndarray, fit: ToyFit, count: int = 4000) -> None:
    shown = points[:count]
    axis.scatter(shown[:, 0], shown[:, 1], s=0.6, c="#1f3b73", alpha=0.5, linewidths=0, rasterized=True)
    axis.set_xlim(fit.box.low[0], fit.box.high[0])
    axis.set_ylim(fit.box.low[1], fit.box.high[1])


def summary(fit: ToyFit) -> str:
    """The fit's figures on one line, as the pictures show them."""
    m = fit.metrics
    if fit.kind == "toy":
        text = f"held-out NLL {m['test_nll']:.3f}"
        if m.get("truth_nll") is not None:
            text += f" (truth {m['truth_nll']:.3f}, KL from truth {m['kl_from_truth']:.3f})"
        return text + f", Gaussian {m['gaussian_nll']:.3f} nats"
    if m.get("elbo") is None:
        return f"log Z {m['log_z']:.3f} ({m['log_z_source']}); no diagnostics"
    return (f"ELBO {m['elbo']:.3f}, log Z estimate {m['log_z_estimate']:.3f} vs {m['log_z']:.3f} "
            f"({m['log_z_source']}), ESS {100 * m['ess_fraction']:.1f}%, k-hat {m['khat']:.2f}")


def plot_toy_fit(fit: ToyFit, path: str | Path, scale: str = "log", resolution: int = 200,
                 num_samples: int = 4000) -> None:
    """One row: the data (toys), the true density, the learned density and flow samples, with
    the fit's figures in the title.

    Example:
        >>> import os, tempfile
        >>> from flowkit.train.toy import fit_toy
        >>> fit = fit_toy("line", transforms=1, hidden_features=8, num_samples=400, test_samples=400, steps=5)
        >>> path = os.path.join(tempfile.mkdtemp(), "fit.png")
        >>> plot_toy_fit(fit, path, resolution=40, num_samples=200)
        >>> open(path, "rb").read(4) == b"\\x89PNG"
        True
    """
    truth, model = density_grids(fit, resolution)
    norm = density_norm(_peak(truth, model), scale)
    panels = (["data"] if fit.kind == "toy" else []) + ["truth", "model", "samples"]
    figure = Figure(figsize=(4.1 * len(panels), 3.9), layout="constrained")
    axes = figure.subplots(1, len(panels))
    for axis, panel in zip(axes, panels):
        if panel == "data":
            _scatter(axis, fit.data, fit, num_samples)
            axis.set_title(f"training data ({len(fit.data)} rows)", fontsize=10)
        elif panel == "truth":
            if truth is None:
                axis.text(0.5, 0.5, "true density\nnot known in closed form", ha="center", va="center",
                          transform=axis.transAxes)
                axis.set_xlim(fit.box.low[0], fit.box.high[0])
                axis.set_ylim(fit.box.low[1], fit.box.high[1])
            else:
                draw_density(axis, truth, norm)  # the learned panel's colour bar holds for both
            axis.set_title("true density" if fit.kind == "toy" else "target density (normalised)", fontsize=10)
        elif panel == "model":
            colour_bar(figure, draw_density(axis, model, norm), axis, scale)
            axis.set_title(f"learned density (mass in box {model.integral:.3f})", fontsize=10)
        else:
            _scatter(axis, fit.sample(num_samples), fit, num_samples)
            axis.set_title(f"flow samples ({num_samples})", fontsize=10)
        axis.tick_params(labelsize=7)
    m = fit.metrics
    figure.suptitle(f"{fit.name}: {m['flow']}, {m['transforms']} transforms, {m['steps']} steps "
                    f"({'maximum likelihood' if fit.kind == 'toy' else 'reverse KL'})\n{summary(fit)}", fontsize=10)
    save(figure, path, tight=False)


def plot_toy_history(fit: ToyFit, path: str | Path) -> None:
    """The training curve in nats against the step, with the line no fit can cross: the truth's
    held-out NLL for a toy, ``-log Z`` for a target (the negative ELBO is ``KL(q || p) - log Z``)."""
    history = [row for row in fit.result.history if isinstance(row.get("train_loss"), (int, float))]
    if not history:
        raise ValueError("the training history holds no loss values to plot")
    shift = fit.standardizer.log_det if fit.kind == "toy" else 0.0  # toys: losses in data units
    figure = Figure(figsize=(6.4, 4), layout="constrained")
    axis = figure.subplots()
    steps = [row["step"] for row in history]
    axis.plot(steps, [row["train_loss"] - shift for row in history],
              label="train NLL" if fit.kind == "toy" else "negative ELBO (training samples)")
    validation = [(row["step"], row["validation_loss"] - shift) for row in history
                  if isinstance(row.get("validation_loss"), (int, float))]
    if validation:
        axis.plot(*zip(*validation), label="validation NLL")
    bound = fit.metrics.get("truth_nll") if fit.kind == "toy" else -fit.metrics["log_z"]
    if bound is not None:
        axis.axhline(bound, color="black", linestyle="--", linewidth=1,
                     label="truth's held-out NLL" if fit.kind == "toy" else f"-log Z ({fit.metrics['log_z_source']})")
    low = min(min(row["train_loss"] - shift for row in history), bound if bound is not None else np.inf)
    losses = [row["train_loss"] - shift for row in history]
    high = max(losses[1:] if len(losses) > 2 else losses)  # the first record's spike would flatten the rest
    if validation:
        high = max(high, max(value for _, value in validation[1:] or validation))
    axis.set_ylim(low - 0.1 * (high - low + 1e-3), high + 0.1 * (high - low + 1e-3))
    axis.set_xlabel("step")
    axis.set_ylabel("nats per point")
    axis.set_title(f"{fit.name}: training curve", fontsize=10)
    axis.legend(fontsize=8)
    save(figure, path, tight=False)


def animate_toy_fit(fit: ToyFit, path: str | Path, scale: str = "log", fps: int = 8) -> None:
    """A GIF of the learned density at the steps ``fit.frames`` were recorded (``frames=`` of the fit)."""
    from matplotlib.animation import PillowWriter

    if not fit.frames:
        raise ValueError("the fit recorded no frames (fit with frames > 0)")
    truth, model = density_grids(fit, fit.frames[0][1].xs.size)
    norm = density_norm(_peak(truth, model), scale)
    figure = Figure(figsize=(4.2, 3.9), dpi=80, layout="constrained")
    axis = figure.subplots()
    image = draw_density(axis, fit.frames[0][1], norm)
    colour_bar(figure, image, axis, scale)
    axis.tick_params(labelsize=7)
    writer = PillowWriter(fps=fps)
    temporary = Path(path).with_name(f".{Path(path).name}.part.gif")
    try:
        with writer.saving(figure, str(temporary), dpi=80):
            for step, grid in [*fit.frames, (fit.metrics["steps"], model)]:
                image.set_data(np.clip(grid.density, 1e-300, None))
                axis.set_title(f"{fit.name}: learned density at step {step}", fontsize=9)
                writer.grab_frame()
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
