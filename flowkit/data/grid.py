"""2-D densities on a grid: the box a toy or target is drawn in, the density at the cell centres,
and the log normalising constant as the midpoint rule's sum.

The midpoint rule over a box is what a picture shows, so ``DensityGrid.integral`` is also the mass
the picture holds. For the smooth, fast-decaying 2-D targets it is also an accurate ``log Z``
(within 1e-3 of the known values at the default 1000 x 1000 cells; see tests/test_toy_grid.py),
which is how the energies without a closed form (U1-U4, two moons) get theirs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from flowkit.data.targets import Target, make_target


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle ``[low[0], high[0]] x [low[1], high[1]]``.

    Example:
        >>> Box((-1.0, 0.0), (1.0, 4.0)).centre, Box((-1.0, 0.0), (1.0, 4.0)).half_width
        ((0.0, 2.0), (1.0, 2.0))
    """

    low: tuple[float, float]
    high: tuple[float, float]

    @property
    def centre(self) -> tuple[float, float]:
        return tuple(0.5 * (a + b) for a, b in zip(self.low, self.high))

    @property
    def half_width(self) -> tuple[float, float]:
        return tuple(0.5 * (b - a) for a, b in zip(self.low, self.high))

    @property
    def extent(self) -> list[float]:
        """``[x0, x1, y0, y1]`` as matplotlib's ``imshow`` wants it."""
        return [self.low[0], self.high[0], self.low[1], self.high[1]]

    def cells(self, resolution: int) -> tuple[np.ndarray, np.ndarray]:
        """Cell centres along x and along y, ``resolution`` of each."""
        return tuple(low + (np.arange(resolution) + 0.5) * (high - low) / resolution
                     for low, high in zip(self.low, self.high))

    @classmethod
    def around(cls, points: np.ndarray, margin: float = 0.1, quantile: float = 0.001) -> Box:
        """The box holding all but ``quantile`` of the points on each side, widened by ``margin``."""
        low, high = np.quantile(points, quantile, axis=0), np.quantile(points, 1 - quantile, axis=0)
        pad = (high - low) * margin + 1e-9
        return cls(tuple(float(v) for v in low - pad), tuple(float(v) for v in high + pad))


@dataclass
class DensityGrid:
    """A log-density at the cell centres of a box: ``log_density[i, j]`` is at ``(xs[j], ys[i])``.

    Attributes:
        box: the box.
        xs, ys: cell centres.
        log_density: ``(len(ys), len(xs))`` log-density as evaluated (normalised or not).
    """

    box: Box
    xs: np.ndarray
    ys: np.ndarray
    log_density: np.ndarray

    @property
    def cell_area(self) -> float:
        return float((self.xs[1] - self.xs[0]) * (self.ys[1] - self.ys[0]))

    @property
    def density(self) -> np.ndarray:
        return np.exp(self.log_density)

    @property
    def log_integral(self) -> float:
        """Log of the midpoint-rule integral of ``exp(log_density)`` over the box."""
        finite = self.log_density[np.isfinite(self.log_density)]
        if finite.size == 0:
            return -math.inf
        peak = finite.max()
        return float(peak + np.log(np.exp(finite - peak).sum() * self.cell_area))

    @property
    def integral(self) -> float:
        return math.exp(self.log_integral)

    def normalised(self) -> DensityGrid:
        """The same grid divided by its integral, so it sums to one over the box."""
        return DensityGrid(self.box, self.xs, self.ys, self.log_density - self.log_integral)


def evaluate_grid(log_density: Callable[[np.ndarray], np.ndarray], box: Box, resolution: int = 200) -> DensityGrid:
    """``log_density`` (float64 points ``(n, 2)`` to ``(n,)``) at the cell centres of ``box``.

    Example:
        >>> import numpy as np
        >>> gaussian = lambda x: -0.5 * (x**2).sum(1) - np.log(2 * np.pi)
        >>> round(evaluate_grid(gaussian, Box((-8.0, -8.0), (8.0, 8.0)), 400).integral, 6)
        1.0
    """
    xs, ys = box.cells(resolution)
    points = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    values = np.asarray(log_density(points), dtype=np.float64).reshape(len(ys), len(xs))
    return DensityGrid(box, xs, ys, values)


def target_log_density(target: Target) -> Callable[[np.ndarray], np.ndarray]:
    """A torch target as a numpy function of float64 points (for ``evaluate_grid``)."""

    def log_density(points: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return target(torch.as_tensor(points, dtype=torch.float64)).numpy()

    return log_density


# The 2-D targets `flowkit toy --target` and the gallery draw, with the box each is drawn in. The
# boxes hold nearly all the mass (the funnel's ~97%: its mouth widens without bound) and U2-U4's
# include a noise-scale margin of their confining wall, so the grid's log Z is the whole one.
TARGET_BOXES: dict[str, Box] = {
    "gaussian": Box((-12.0, -9.0), (10.0, 6.5)),  # mean (-1.1, -1.4), standard deviations (2.6, 1.8)
    "banana": Box((-34.0, -7.0), (34.0, 30.0)),
    "funnel": Box((-9.0, -15.0), (9.0, 15.0)),
    "mixture": Box((-6.0, -6.0), (6.0, 6.0)),
    "u1": Box((-4.5, -4.5), (4.5, 4.5)),
    "u2": Box((-4.5, -4.5), (4.5, 4.5)),
    "u3": Box((-4.5, -4.5), (4.5, 4.5)),
    "u4": Box((-4.5, -4.5), (4.5, 4.5)),
    "two_moons": Box((-3.5, -3.5), (3.5, 3.5)),
}


def planar_target(name: str) -> tuple[Target, Box]:
    """A registered 2-D target and its box.

    Example:
        >>> target, box = planar_target("banana")
        >>> target.features, box.low
        (2, (-34.0, -7.0))
    """
    if name not in TARGET_BOXES:
        raise ValueError(f"unknown 2-D target {name!r}; choose from {', '.join(TARGET_BOXES)}")
    target = make_target(name)
    if target.features != 2:  # the gaussian's default dimension could change; pictures need 2
        target = make_target(name, features=2)
    return target, TARGET_BOXES[name]


def grid_log_z(target: Target, box: Box, resolution: int = 1000) -> float:
    """``log Z`` of a 2-D target by the midpoint rule on ``box`` (``resolution`` cells a side).

    Example:
        >>> target, box = planar_target("mixture")
        >>> abs(grid_log_z(target, box, resolution=400) - target.log_z) < 1e-4  # the box holds all but 2e-5
        True
    """
    return evaluate_grid(target_log_density(target), box, resolution).log_integral


def target_log_z(target: Target, box: Box, resolution: int = 1000) -> tuple[float, str]:
    """The target's ``log Z`` and where it came from: ``"exact"`` when known, else ``"grid"``."""
    if target.log_z is not None:
        return float(target.log_z), "exact"
    return grid_log_z(target, box, resolution), "grid"
