"""2-D toy data sets for looking at what a flow learns. Each generator takes ``(num_samples, seed)``
and returns a float64 numpy array of shape ``(num_samples, 2)``, reproducible from the seed."""

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


TOYS: dict[str, Callable[..., np.ndarray]] = {
    "two_moons": two_moons,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "rings": rings,
    "two_spirals": two_spirals,
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
