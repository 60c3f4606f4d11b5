"""What ``flowkit toy`` computes: a flow fitted to a 2-D toy by maximum likelihood, or to a 2-D
energy target by reverse KL, with the figures that say how good the fit is.

Both fits work in standardised coordinates and keep the ``Standardizer`` that maps them back, as
``flowkit fit`` does: a toy is standardised by its training rows; a target by its drawing box
(centre, and a third of the half-width as the scale), so banana-sized targets suit a spline's
``[-3, 3]`` as well as unit-sized ones. For a target the change of variables is exact and costs
nothing: ``log p_u(u) = log p(m + s u) + sum(log s)`` has the same ``log Z``.

Figures (nats, per point):

- toys: ``test_nll`` of the fit and ``truth_nll`` of the true density on fresh samples, and their
  difference ``kl_from_truth``, an unbiased estimate of ``KL(p || q)`` (with its standard error);
  ``gaussian_nll`` is the full-covariance Gaussian of the training rows, the baseline to beat.
- targets: ``elbo``, the importance-sampling ``log_z_estimate``, the true ``log_z`` (exact or on a
  fine grid), ``elbo_gap = log_z - elbo`` (``KL(q || p)``), ``ess_fraction`` and PSIS ``khat``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowkit.data.grid import Box, DensityGrid, evaluate_grid, planar_target, target_log_density, target_log_z
from flowkit.data.tabular import Standardizer, Table
from flowkit.data.toy_densities import toy_log_density
from flowkit.data.toys import make_toy
from flowkit.flow import Flow
from flowkit.presets import PRESETS, build
from flowkit.train.density import fit_density
from flowkit.train.result import FitResult
from flowkit.train.variational import fit_variational

FRAME_RESOLUTION = 90  # cells a side of the density grids recorded for an animation


@dataclass
class ToyFit:
    """A fitted 2-D flow and what was measured.

    Attributes:
        name: the toy or target.
        kind: ``"toy"`` (maximum likelihood) or ``"target"`` (reverse KL).
        flow: the trained flow (CPU, evaluation mode), on standardised coordinates.
        standardizer: maps data units to the flow's coordinates.
        box: where the pictures are drawn.
        result: the training run.
        metrics: the figures, JSON-ready.
        data: a toy's training rows (a target's exact samples where it has a sampler, else None).
        true_log_density: numpy function of the true log-density, or None where it is unknown.
        frames: ``(step, DensityGrid)`` of the learned density during training (``frames > 0``).
    """

    name: str
    kind: str
    flow: Flow
    standardizer: Standardizer
    box: Box
    result: FitResult
    metrics: dict[str, Any]
    data: np.ndarray | None = None
    true_log_density: Callable[[np.ndarray], np.ndarray] | None = None
    frames: list[tuple[int, DensityGrid]] = field(default_factory=list)

    def log_density(self, points: np.ndarray) -> np.ndarray:
        """The fitted density's log in data units at float64 points ``(n, 2)``."""
        return model_log_density(self.flow, self.standardizer, points)

    def sample(self, count: int, seed: int = 0) -> np.ndarray:
        """``count`` samples of the flow in data units (seeded, leaving torch's RNG alone)."""
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            return self.standardizer.inverse(self.flow.sample(count, batch_size=65536).double().numpy())


def model_log_density(flow: Flow, standardizer: Standardizer, points: np.ndarray) -> np.ndarray:
    """``log q(x)`` in data units: the flow's density of standardised values plus the scaling's log-det."""
    dtype = next(flow.parameters()).dtype
    with torch.no_grad():
        inputs = torch.as_tensor(standardizer.transform(points), dtype=dtype)
        return flow.log_prob(inputs, batch_size=65536).double().numpy() + standardizer.log_det


def _build(preset: str, transforms: int, hidden_features: int | list[int], seed: int,
           trainable_base: bool) -> Flow:
    if preset not in PRESETS:
        raise ValueError(f"unknown flow {preset!r}; choose from {', '.join(sorted(PRESETS))}")
    torch.manual_seed(seed)
    return build(preset, features=2, transforms=transforms, hidden_features=hidden_features, seed=seed,
                 **({"trainable_base": True} if trainable_base else {}))


class _Recorder(nn.Module):
    """Wraps a flow for ``fit_density``: every ``every`` training calls it records the density on a
    coarse grid (without gradients), so an animation's frames come from the training loop itself."""

    def __init__(self, flow: Flow, every: int, record: Callable[[int], None]) -> None:
        super().__init__()
        self.flow, self.every, self.record, self.calls = flow, every, record, 0

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.training and torch.is_grad_enabled():
            if self.calls % self.every == 0:
                self.record(self.calls)
            self.calls += 1
        return self.flow(x, context)


def _frame_recorder(flow: Flow, standardizer: Standardizer, box: Box,
                    frames: list[tuple[int, DensityGrid]]) -> Callable[[int], None]:
    def record(step: int) -> None:
        with torch.no_grad():
            grid = evaluate_grid(lambda points: model_log_density(flow, standardizer, points), box, FRAME_RESOLUTION)
        frames.append((step, grid))

    return record


def gaussian_nll(train: np.ndarray, test: np.ndarray) -> float:
    """Held-out NLL (nats per row) of the full-covariance Gaussian fitted to ``train``."""
    mean, covariance = train.mean(0), np.cov(train, rowvar=False)
    centred = test - mean
    _, log_det = np.linalg.slogdet(covariance)
    mahalanobis = np.einsum("ni,ij,nj->n", centred, np.linalg.inv(covariance), centred)
    return float(0.5 * (mahalanobis.mean() + log_det + train.shape[1] * math.log(2 * math.pi)))


def fit_toy(name: str, *, preset: str = "nsf_coupling", transforms: int = 4, hidden_features: int | list[int] = 64,
            num_samples: int = 10000, test_samples: int = 10000, steps: int = 1500, epochs: int | None = None,
            batch_size: int = 256, learning_rate: float = 3e-3, seed: int = 0, time_limit: float | None = None,
            frames: int = 0, progress: bool | str | None = False) -> ToyFit:
    """Fit a flow to ``num_samples`` rows of toy ``name`` by maximum likelihood and score it on
    ``test_samples`` fresh rows (another seed) against the truth where it is known.

    ``steps`` optimiser steps (or ``epochs`` passes when given), a tenth of the rows held out for
    validation (the best epoch's weights are kept), ``frames`` density grids recorded for an animation.

    Example:
        >>> fit = fit_toy("eight_gaussians", transforms=1, hidden_features=8, num_samples=500, test_samples=500,
        ...               steps=20)
        >>> sorted(key for key in fit.metrics if key.endswith("_nll"))
        ['gaussian_nll', 'test_nll', 'truth_nll']
    """
    data = make_toy(name, num_samples, seed)
    test = make_toy(name, test_samples, seed + 1_000_003)  # fresh rows, never seen in training
    standardizer = Standardizer.fit(Table(data, ["x", "y"]))
    box = Box.around(np.concatenate([data, test]))
    flow = _build(preset, transforms, hidden_features, seed, trainable_base=False)
    recorded: list[tuple[int, DensityGrid]] = []
    rows_per_epoch = max(1, int(0.9 * num_samples) // batch_size)
    total = steps if epochs is None else epochs * rows_per_epoch
    model = flow if frames <= 0 else _Recorder(flow, max(1, total // frames),
                                               _frame_recorder(flow, standardizer, box, recorded))
    result = fit_density(model, standardizer.transform(data).astype(np.float32), epochs=epochs or 10**6,
                         max_steps=None if epochs is not None else steps, batch_size=batch_size,
                         learning_rate=learning_rate, patience=None, time_limit=time_limit, seed=seed,
                         device="cpu", progress=progress)
    flow = flow.cpu().eval()
    fit = ToyFit(name, "toy", flow, standardizer, box, result, {}, data=data, frames=recorded)
    model_log_q = fit.log_density(test)
    truth = toy_log_density(name, test)
    fit.true_log_density = None if truth is None else (lambda points: toy_log_density(name, points))
    difference = None if truth is None else truth - model_log_q
    fit.metrics = {
        "toy": name, "flow": preset, "transforms": transforms, "hidden": hidden_features, "seed": seed,
        "train_rows": int(0.9 * num_samples), "test_rows": test_samples, "steps": result.steps,
        "stopped": result.stopped, "seconds": round(result.seconds, 2),
        "test_nll": float(-model_log_q.mean()),
        "truth_nll": None if truth is None else float(-truth.mean()),
        "kl_from_truth": None if difference is None else float(difference.mean()),
        "kl_standard_error": None if difference is None else float(difference.std() / math.sqrt(len(test))),
        "gaussian_nll": gaussian_nll(data, test),
        "grid_mass": evaluate_grid(fit.log_density, box, 200).integral,
    }
    return fit


def fit_target(name: str, *, preset: str = "nsf_coupling", transforms: int = 4,
               hidden_features: int | list[int] = 64, steps: int = 1500, num_samples: int = 256,
               learning_rate: float = 3e-3, seed: int = 0, time_limit: float | None = None,
               diagnostic_samples: int = 20000, frames: int = 0, progress: bool | str | None = False) -> ToyFit:
    """Fit a flow to 2-D energy target ``name`` by reverse KL (pathwise gradients), then measure it
    against the target's ``log Z`` (exact, or on a 1000 x 1000 grid).

    Example:
        >>> fit = fit_target("banana", transforms=1, hidden_features=8, steps=20, diagnostic_samples=500)
        >>> fit.metrics["log_z"], fit.metrics["log_z_source"]
        (0.0, 'exact')
    """
    target, box = planar_target(name)
    centre, half_width = np.array(box.centre), np.array(box.half_width)
    standardizer = Standardizer(centre, half_width / 3, ["x", "y"])
    shift, scale = torch.as_tensor(centre), torch.as_tensor(half_width / 3)
    log_scale = float(np.log(half_width / 3).sum())
    flow = _build(preset, transforms, hidden_features, seed, trainable_base=True)
    recorded: list[tuple[int, DensityGrid]] = []
    record = _frame_recorder(flow, standardizer, box, recorded) if frames > 0 else None
    every, calls = max(1, steps // max(frames, 1)), [0]

    def log_target(u: Tensor) -> Tensor:  # the target in the flow's standardised coordinates
        if record is not None and torch.is_grad_enabled():
            if calls[0] % every == 0:
                record(calls[0])
            calls[0] += 1
        return target(shift.to(u) + scale.to(u) * u) + log_scale

    result = fit_variational(flow, log_target, steps=steps, num_samples=num_samples, learning_rate=learning_rate,
                             seed=seed, time_limit=time_limit, device="cpu", progress=progress,
                             diagnostic_samples=diagnostic_samples)
    flow = flow.cpu().eval()
    log_z, source = target_log_z(target, box)
    diagnostics = {key: value for key, value in result.diagnostics.items() if isinstance(value, float)}
    try:
        data = target.sample(5000, generator=torch.Generator().manual_seed(seed)).numpy()
    except NotImplementedError:
        data = None
    fit = ToyFit(name, "target", flow, standardizer, box, result, {}, data=data,
                 true_log_density=lambda points: target_log_density(target)(points) - log_z, frames=recorded)
    elbo = diagnostics.get("elbo")
    fit.metrics = {
        "target": name, "flow": preset, "transforms": transforms, "hidden": hidden_features, "seed": seed,
        "steps": result.steps, "stopped": result.stopped, "seconds": round(result.seconds, 2),
        "log_z": log_z, "log_z_source": source,
        "elbo": elbo, "elbo_gap": None if elbo is None else log_z - elbo,
        "log_z_estimate": diagnostics.get("log_z"),
        "log_z_error": None if diagnostics.get("log_z") is None else diagnostics["log_z"] - log_z,
        "ess_fraction": diagnostics.get("ess_fraction"), "khat": diagnostics.get("khat"),
        "diagnostic_samples": diagnostic_samples,
        "grid_mass": evaluate_grid(fit.log_density, box, 200).integral,
        "target_grid_mass": evaluate_grid(fit.true_log_density, box, 400).integral,
    }
    return fit
