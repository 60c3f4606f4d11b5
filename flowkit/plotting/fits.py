"""Pictures of a fitted model (``flowkit fit`` and ``flowkit plot``): the data next to the learned
density and samples (2-D), the layers bending space, marginals of data against samples (any
dimension), and the training curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from flowkit.bijectors.base import Chain
from flowkit.data.tabular import Standardizer
from flowkit.flow import Flow
from flowkit.plotting.common import save as _save


def _bounds(data: np.ndarray, margin: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.quantile(data, 0.002, axis=0), np.quantile(data, 0.998, axis=0)
    pad = (high - low) * margin + 1e-9
    return low - pad, high + pad


def _model_log_density(flow: Flow, points: np.ndarray, standardizer: Standardizer | None) -> np.ndarray:
    """log p(x) in data units: the model's density of standardised values plus the scaling's log-det."""
    dtype = next(flow.parameters()).dtype
    inputs = standardizer.transform(points) if standardizer is not None else points
    with torch.no_grad():
        log_density = flow.log_prob(torch.as_tensor(inputs, dtype=dtype), batch_size=65536).double().numpy()
    return log_density + (standardizer.log_det if standardizer is not None else 0.0)


def _model_samples(flow: Flow, count: int, standardizer: Standardizer | None) -> np.ndarray:
    samples = flow.sample(count, batch_size=65536).double().numpy()
    return standardizer.inverse(samples) if standardizer is not None else samples


def plot_density_2d(flow: Flow, data: np.ndarray, path: str | Path, standardizer: Standardizer | None = None,
                    title: str | None = None, resolution: int = 200, num_samples: int = 20000) -> None:
    """Three panels for a 2-D flow: the data, the learned density on a grid, and samples.

    Example:
        >>> import os, tempfile, numpy as np, flowkit
        >>> path = os.path.join(tempfile.mkdtemp(), "density.png")
        >>> plot_density_2d(flowkit.realnvp(2, transforms=1), np.random.randn(500, 2), path)
        >>> os.path.getsize(path) > 0
        True
    """
    if data.shape[1] != 2 or flow.features != 2:
        raise ValueError(f"plot_density_2d needs 2-D data and flow, got {data.shape[1]} and {flow.features}")
    low, high = _bounds(data)
    xs, ys = np.linspace(low[0], high[0], resolution), np.linspace(low[1], high[1], resolution)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    density = np.exp(_model_log_density(flow, grid, standardizer)).reshape(resolution, resolution)
    samples = _model_samples(flow, num_samples, standardizer)
    extent = [low[0], high[0], low[1], high[1]]
    bins = [np.linspace(low[0], high[0], 120), np.linspace(low[1], high[1], 120)]

    figure = Figure(figsize=(13.5, 4.4))
    axes = figure.subplots(1, 3)
    axes[0].hist2d(data[:, 0], data[:, 1], bins=bins, cmap="viridis")
    axes[0].set_title(f"data ({len(data)} points)")
    axes[1].imshow(density, origin="lower", extent=extent, aspect="auto", cmap="viridis")
    axes[1].set_title("learned density")
    axes[2].hist2d(samples[:, 0], samples[:, 1], bins=bins, cmap="viridis")
    axes[2].set_title(f"flow samples ({num_samples})")
    for axis in axes:
        axis.set_xlim(low[0], high[0])
        axis.set_ylim(low[1], high[1])
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title)
    _save(figure, path)


def plot_layers(flow: Flow, path: str | Path, standardizer: Standardizer | None = None,
                num_points: int = 4000, seed: int = 0) -> None:
    """How each layer bends space: base samples coloured by their angle, pushed through the chain
    one layer at a time in the sampling direction (2-D flows whose bijector is a ``Chain``)."""
    if flow.features != 2 or not isinstance(flow.bijector, Chain):
        raise ValueError("plot_layers needs a 2-D flow whose bijector is a Chain")
    generator = torch.Generator().manual_seed(seed)
    dtype = next(flow.parameters()).dtype
    eps = torch.randn(num_points, 2, generator=generator, dtype=dtype)
    colour = torch.atan2(eps[:, 1], eps[:, 0]).numpy()
    with torch.no_grad():  # the base's own loc and scale (trained by reverse-KL fits), as sampling does
        points = flow.base.loc.to(dtype) + flow.base.scale.to(dtype) * eps if hasattr(flow.base, "loc") else eps
    stages = [("base", points)]
    with torch.no_grad():
        for index, layer in reversed(list(enumerate(flow.bijector))):
            points = layer.inverse(points)[0]
            stages.append((f"after layer {index}: {layer.__class__.__name__}", points))
    columns = min(4, len(stages))
    rows = -(-len(stages) // columns)
    figure = Figure(figsize=(3.4 * columns, 3.3 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns)).flatten()
    for index, (axis, (name, stage)) in enumerate(zip(axes, stages)):
        values = stage.double().numpy()
        if standardizer is not None and index == len(stages) - 1:  # the last stage is in data units
            values = standardizer.inverse(values)
        axis.scatter(values[:, 0], values[:, 1], c=colour, s=1.5, cmap="hsv", linewidths=0)
        last = index == len(stages) - 1
        axis.set_title(f"{name}{' (data units)' if last and standardizer is not None else ''}", fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in axes[len(stages):]:
        axis.set_visible(False)
    _save(figure, path)


def plot_marginals(data: np.ndarray, samples: np.ndarray, columns: list[str], path: str | Path,
                   max_features: int = 16) -> None:
    """Histograms of each feature, data against flow samples (the first ``max_features``)."""
    count = min(max_features, data.shape[1])
    width = min(4, count)
    rows = -(-count // width)
    figure = Figure(figsize=(3.2 * width, 2.6 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, width)).flatten()
    for index in range(count):
        low, high = np.quantile(data[:, index], [0.005, 0.995])
        bins = np.linspace(low, high, 50) if high > low else 30
        axes[index].hist(data[:, index], bins=bins, density=True, alpha=0.55, label="data")
        axes[index].hist(samples[:, index], bins=bins, density=True, alpha=0.55, label="samples")
        axes[index].set_title(columns[index], fontsize=9)
        axes[index].set_yticks([])
    axes[0].legend(fontsize=8)
    if data.shape[1] > count:
        figure.suptitle(f"first {count} of {data.shape[1]} features")
    for axis in axes[count:]:
        axis.set_visible(False)
    _save(figure, path)


def plot_history(history: list[dict[str, Any]], path: str | Path) -> None:
    """Training and validation loss against the step (records without both numbers are skipped)."""
    curves = {label: [(row["step"], row[key]) for row in history
                      if isinstance(row, dict) and _is_number(row.get("step")) and _is_number(row.get(key))]
              for key, label in (("train_loss", "train"), ("validation_loss", "validation"))}
    if not any(curves.values()):
        raise ValueError("the training history holds no loss values to plot")
    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    for label, points in curves.items():
        if points:
            axis.plot(*zip(*points), label=label)
    axis.set_xlabel("step")
    axis.set_ylabel("negative log-likelihood (nats)")
    axis.legend()
    _save(figure, path)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
