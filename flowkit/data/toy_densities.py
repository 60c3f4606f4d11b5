"""The true log-densities of the 2-D toys, where they are known, to score a fit against the truth.

Mixtures (``eight_gaussians``, ``gaussian_grid``, ``diamond``) and the ``checkerboard`` are exact
in closed form, and so is ``line`` (a uniform segment blurred by a Gaussian: a difference of normal
CDFs). The noisy curves (``two_moons``, ``rings``, ``circles``, ``two_spirals``, ``swiss_roll``,
``cos``) are a curve's parameter distribution blurred by isotropic Gaussian noise: their density is
a 1-D integral along the curve, computed here by the midpoint rule with nodes a quarter of the noise scale
apart (``curve_nodes``), far more accurate than any fit can resolve.
``pinwheel`` has no such form and is absent from ``TOY_DENSITIES``.

Each function maps float64 points ``(n, 2)`` to log-densities ``(n,)`` (``-inf`` off the support).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from flowkit.data import toys


def mixture_log_density(points: np.ndarray, centres: np.ndarray, scale: float,
                        log_weights: np.ndarray | None = None, chunk: int = 512) -> np.ndarray:
    """``log sum_k w_k N(x; centres_k, scale^2 I)`` for points ``(n, 2)``; equal weights by default.

    Points are taken in blocks of neighbours (sorted by strips of ``x``, then ``y``), and each
    block sums only the centres within ``10 scale`` of its bounding box, whose terms are below
    ``exp(-50)`` of a centre at the point. So the value is exact to rounding wherever the density
    is within ``exp(-40)`` or so of a peak's (tested), and a lower bound further out; a block with
    no centre that near uses every centre.

    Example:
        >>> import numpy as np
        >>> value = mixture_log_density(np.zeros((1, 2)), np.zeros((1, 2)), 1.0)[0]
        >>> bool(abs(value + np.log(2 * np.pi)) < 1e-12)
        True
    """
    points = torch.as_tensor(np.asarray(points, dtype=np.float64))
    centres = torch.as_tensor(np.asarray(centres, dtype=np.float64))
    weights = torch.full((len(centres),), -math.log(len(centres)), dtype=torch.float64) if log_weights is None \
        else torch.as_tensor(np.asarray(log_weights, dtype=np.float64))
    constant = weights - math.log(2 * math.pi * scale**2)
    strip = torch.floor(points[:, 0] / (5 * scale))  # neighbours: strips of x, then y within a strip
    order = torch.as_tensor(np.lexsort((points[:, 1].numpy(), strip.numpy())))
    out = torch.empty(len(points), dtype=torch.float64)
    for start in range(0, len(points), chunk):
        rows = order[start:start + chunk]
        block = points[rows]
        low, high = block.min(0).values - 10 * scale, block.max(0).values + 10 * scale
        near = ((centres >= low) & (centres <= high)).all(1)
        chosen = near if bool(near.any()) else torch.ones_like(near)
        squared = (block[:, None, :] - centres[chosen][None]).square().sum(-1)
        out[rows] = torch.logsumexp(constant[chosen] - 0.5 * squared / scale**2, dim=1)
    return out.numpy()


def curve_nodes(curve: Callable[[np.ndarray], np.ndarray], low: float, high: float, scale: float,
                parameter_density: Callable[[np.ndarray], np.ndarray] | None = None,
                mass: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint-rule nodes ``(centres, log_weights)`` for ``curve(t) + scale * N(0, I)`` with ``t``
    on ``[low, high]`` (uniform, or with ``parameter_density``), the weights summing to ``mass``.

    Nodes are placed so that neighbours on the curve are at most ``scale / 4`` apart: the rule then
    integrates the Gaussian kernel to about ``exp(-2 pi^2 16)`` relative error away from the curve's
    ends (a few parts in a thousand within a noise scale of an end, where the midpoint rule is O(h^2)).
    """
    fine = np.linspace(low, high, 20001)
    speed = np.linalg.norm(np.diff(curve(fine), axis=0), axis=1).max() / (fine[1] - fine[0])
    count = int(math.ceil(speed * (high - low) / (scale / 4)))
    t = _midpoints(low, high, count)
    weights = np.ones(count) if parameter_density is None else parameter_density(t)
    return curve(t), np.log(mass * weights / weights.sum())


def curves_log_density(points: np.ndarray, nodes: list[tuple[np.ndarray, np.ndarray]], scale: float) -> np.ndarray:
    """The log-density of the union of curves given by ``curve_nodes``, all with noise ``scale``."""
    centres, log_weights = (np.concatenate(part) for part in zip(*nodes))
    return mixture_log_density(points, centres, scale, log_weights)


def _midpoints(low: float, high: float, count: int) -> np.ndarray:
    return low + (np.arange(count) + 0.5) * (high - low) / count


def _circle(radius: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda t: radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def two_moons(points: np.ndarray) -> np.ndarray:
    upper = lambda t: (np.stack([np.cos(t), np.sin(t)], axis=1) - [0.5, 0.25]) * 2
    lower = lambda t: (np.stack([1 - np.cos(t), 0.5 - np.sin(t)], axis=1) - [0.5, 0.25]) * 2
    return curves_log_density(points, [curve_nodes(arc, 0, math.pi, 0.1, mass=0.5) for arc in (upper, lower)], 0.1)


def eight_gaussians(points: np.ndarray) -> np.ndarray:
    angles = np.arange(8) * (np.pi / 4)
    return mixture_log_density(points, 2 * np.stack([np.cos(angles), np.sin(angles)], axis=1), 0.2)


def checkerboard(points: np.ndarray) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    inside = (x >= -2) & (x < 2) & (y >= -2) & (y < 2)
    row = np.floor(y) - (np.floor(x) % 2)  # the generator's y before its shift on odd columns
    dark = inside & ((row == -2) | (row == 0))
    return np.where(dark, -math.log(8.0), -np.inf)  # eight unit squares of equal mass


def rings(points: np.ndarray) -> np.ndarray:
    nodes = [curve_nodes(_circle(radius), 0, 2 * math.pi, 0.06, mass=1 / 3) for radius in (2 / 3, 4 / 3, 2.0)]
    return curves_log_density(points, nodes, 0.06)


def circles(points: np.ndarray) -> np.ndarray:
    nodes = [curve_nodes(_circle(radius), 0, 2 * math.pi, 0.1, mass=0.5) for radius in (1.0, 2.0)]
    return curves_log_density(points, nodes, 0.1)


def two_spirals(points: np.ndarray) -> np.ndarray:
    arm = lambda t: np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 3
    # t = 3 pi sqrt(u) has density proportional to t
    nodes = [curve_nodes(lambda t, sign=sign: sign * arm(t), 0, 3 * math.pi, 0.1, lambda t: t, mass=0.5)
             for sign in (1.0, -1.0)]
    return curves_log_density(points, nodes, 0.1)


def swiss_roll(points: np.ndarray) -> np.ndarray:
    roll = lambda t: np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 5
    return curves_log_density(points, [curve_nodes(roll, 1.5 * math.pi, 4.5 * math.pi, 0.1)], 0.1)


def cos(points: np.ndarray) -> np.ndarray:
    wave = lambda t: np.stack([t, 1.5 * np.cos(2 * t)], axis=1)
    return curves_log_density(points, [curve_nodes(wave, -3, 3, 0.1)], 0.1)


def line(points: np.ndarray) -> np.ndarray:
    scale, half_length = 0.1, 2 * math.sqrt(2)  # the segment from (-2, -2) to (2, 2)
    along = torch.as_tensor(np.abs(points[:, 0] + points[:, 1]) / math.sqrt(2))  # symmetric: fold to >= 0
    across = (points[:, 0] - points[:, 1]) / math.sqrt(2)
    upper = torch.special.log_ndtr((half_length - along) / scale)
    lower = torch.special.log_ndtr((-half_length - along) / scale)  # far below upper: no cancellation
    log_mass = (upper + torch.log1p(-torch.exp(lower - upper))).numpy()
    return log_mass - math.log(2 * half_length) - 0.5 * (across / scale) ** 2 - 0.5 * math.log(2 * math.pi * scale**2)


def gaussian_grid(points: np.ndarray) -> np.ndarray:
    return mixture_log_density(points, toys.GRID_CENTRES, toys.GRID_SCALE)


def diamond(points: np.ndarray) -> np.ndarray:
    return mixture_log_density(points, toys.DIAMOND_CENTRES, toys.DIAMOND_SCALE)


TOY_DENSITIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "two_moons": two_moons, "eight_gaussians": eight_gaussians, "checkerboard": checkerboard, "rings": rings,
    "two_spirals": two_spirals, "circles": circles, "swiss_roll": swiss_roll, "line": line, "cos": cos,
    "gaussian_grid": gaussian_grid, "diamond": diamond,
}


def toy_log_density(name: str, points: np.ndarray) -> np.ndarray | None:
    """The true log-density of toy ``name`` at ``points`` ``(n, 2)``, or None where it is not known.

    Example:
        >>> import numpy as np
        >>> from flowkit.data.toys import make_toy
        >>> round(float(np.exp(toy_log_density("checkerboard", make_toy("checkerboard", 3))).max()), 12)  # 1/8
        0.125
        >>> toy_log_density("pinwheel", np.zeros((1, 2))) is None
        True
    """
    if name not in toys.TOYS:
        raise ValueError(f"unknown toy data set {name!r}; choose from {', '.join(toys.TOYS)}")
    if name not in TOY_DENSITIES:
        return None
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"expected points of shape (n, 2), got {points.shape}")
    return TOY_DENSITIES[name](points)
