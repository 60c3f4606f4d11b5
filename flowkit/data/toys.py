"""2-D toy data sets for looking at what a flow learns. Each generator takes ``(num_samples, seed)``
and returns a float64 numpy array of shape ``(num_samples, 2)``, reproducible from the seed.

Where the true density is known, ``toy_log_density(name, points)`` gives it (``TOY_DENSITIES`` in
``flowkit.data.toy_densities`` says which), so a fit can be scored against the truth.

The six original generators are unchanged (``datasets/make_toys.py`` regenerates the bundled CSV
files from them); the newer ones follow the shapes of FFJORD's and scikit-learn's toys, with
Gaussian noise added to the curves so that each has a density.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def two_moons(num_samples: int, seed: int = 0) -> np.ndarray:
    """Two interleaved half circles with a little noise."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, np.pi, num_samples)
    upper = rng.random(num_samples) < 0.5
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x - 0.5, y - 0.25], axis=1) * 2
    return points + 0.1 * rng.standard_normal((num_samples, 2))


def eight_gaussians(num_samples: int, seed: int = 0) -> np.ndarray:
    """Eight small Gaussians evenly spaced on a circle of radius 2."""
    rng = np.random.default_rng(seed)
    angles = rng.integers(0, 8, num_samples) * (np.pi / 4)
    centres = 2 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return centres + 0.2 * rng.standard_normal((num_samples, 2))


def checkerboard(num_samples: int, seed: int = 0) -> np.ndarray:
    """Uniform on the dark squares of a 4x4 checkerboard on [-2, 2]^2."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, num_samples)
    y = rng.uniform(0, 1, num_samples) + rng.integers(0, 2, num_samples) * 2 - 2
    y = y + (np.floor(x) % 2)
    return np.stack([x, y], axis=1)


def pinwheel(num_samples: int, seed: int = 0, arms: int = 5) -> np.ndarray:
    """Spiralling arms of stretched Gaussians."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, arms, num_samples)
    features = rng.standard_normal((num_samples, 2)) * np.array([0.3, 0.05]) + np.array([1.0, 0.0])
    angles = 2 * np.pi * labels / arms + 0.25 * np.exp(features[:, 0])
    rotation = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)], axis=1)
    rotation = rotation.reshape(-1, 2, 2)
    return 2 * np.einsum("ni,nij->nj", features, rotation)


def rings(num_samples: int, seed: int = 0) -> np.ndarray:
    """Three concentric noisy circles."""
    rng = np.random.default_rng(seed)
    radius = rng.integers(1, 4, num_samples) * (2 / 3)
    angle = rng.uniform(0, 2 * np.pi, num_samples)
    points = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return points + 0.06 * rng.standard_normal((num_samples, 2))


def two_spirals(num_samples: int, seed: int = 0) -> np.ndarray:
    """Two interleaved spirals."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0, 1, num_samples)) * 3 * np.pi
    sign = np.where(rng.random(num_samples) < 0.5, 1.0, -1.0)
    points = sign[:, None] * np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 3
    return points + 0.1 * rng.standard_normal((num_samples, 2))


def circles(num_samples: int, seed: int = 0) -> np.ndarray:
    """Two concentric noisy circles of radius 1 and 2 (scikit-learn's ``make_circles``, scaled)."""
    rng = np.random.default_rng(seed)
    radius = np.where(rng.random(num_samples) < 0.5, 1.0, 2.0)
    angle = rng.uniform(0, 2 * np.pi, num_samples)
    points = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return points + 0.1 * rng.standard_normal((num_samples, 2))


def swiss_roll(num_samples: int, seed: int = 0) -> np.ndarray:
    """A 2-D swiss roll: ``t (cos t, sin t) / 5`` for ``t`` uniform on ``[1.5 pi, 4.5 pi]``, plus noise."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(1.5 * np.pi, 4.5 * np.pi, num_samples)
    points = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 5
    return points + 0.1 * rng.standard_normal((num_samples, 2))


def line(num_samples: int, seed: int = 0) -> np.ndarray:
    """A thin diagonal segment from ``(-2, -2)`` to ``(2, 2)`` with Gaussian noise of scale 0.1."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(-2, 2, num_samples)
    return np.stack([t, t], axis=1) + 0.1 * rng.standard_normal((num_samples, 2))


def cos(num_samples: int, seed: int = 0) -> np.ndarray:
    """A noisy cosine wave: ``(t, 1.5 cos 2t)`` for ``t`` uniform on ``[-3, 3]``."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(-3, 3, num_samples)
    return np.stack([t, 1.5 * np.cos(2 * t)], axis=1) + 0.1 * rng.standard_normal((num_samples, 2))


def gaussian_grid(num_samples: int, seed: int = 0) -> np.ndarray:
    """A 5 x 5 grid of equal Gaussians (scale 0.1) at unit spacing, centred on the origin."""
    rng = np.random.default_rng(seed)
    centres = GRID_CENTRES[rng.integers(0, len(GRID_CENTRES), num_samples)]
    return centres + GRID_SCALE * rng.standard_normal((num_samples, 2))


def diamond(num_samples: int, seed: int = 0) -> np.ndarray:
    """A 4 x 4 grid of wider Gaussians (scale 0.2) turned 45 degrees into a diamond."""
    rng = np.random.default_rng(seed)
    centres = DIAMOND_CENTRES[rng.integers(0, len(DIAMOND_CENTRES), num_samples)]
    return centres + DIAMOND_SCALE * rng.standard_normal((num_samples, 2))


def _grid(side: int, spacing: float, angle: float = 0.0) -> np.ndarray:
    offsets = (np.arange(side) - (side - 1) / 2) * spacing
    centres = np.stack(np.meshgrid(offsets, offsets), axis=-1).reshape(-1, 2)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return centres @ rotation.T


GRID_CENTRES, GRID_SCALE = _grid(5, 1.0), 0.1
DIAMOND_CENTRES, DIAMOND_SCALE = _grid(4, 1.2, np.pi / 4), 0.2


TOYS: dict[str, Callable[..., np.ndarray]] = {
    "two_moons": two_moons,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "rings": rings,
    "two_spirals": two_spirals,
    "circles": circles,
    "swiss_roll": swiss_roll,
    "line": line,
    "cos": cos,
    "gaussian_grid": gaussian_grid,
    "diamond": diamond,
}


def make_toy(name: str, num_samples: int, seed: int = 0) -> np.ndarray:
    """Draw from a named toy data set.

    Example:
        >>> make_toy("two_moons", 5).shape
        (5, 2)
    """
    if name not in TOYS:
        raise ValueError(f"unknown toy data set {name!r}; choose from {', '.join(TOYS)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    return TOYS[name](num_samples, seed)
