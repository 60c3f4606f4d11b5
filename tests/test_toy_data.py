"""2-D toys and energy targets: seeded, the true densities integrate to one and describe the
samples, the original toys are unchanged, and grid log Z agrees with the known values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from flowkit.data.grid import TARGET_BOXES, Box, evaluate_grid, grid_log_z, planar_target, target_log_z
from flowkit.data.tabular import read_table
from flowkit.data.targets import TARGETS, TwoMoonsEnergy
from flowkit.data.toy_densities import TOY_DENSITIES, mixture_log_density, toy_log_density
from flowkit.data.toys import TOYS, make_toy

DATASETS = Path(__file__).resolve().parents[1] / "datasets"


def test_at_least_ten_toys_seeded_and_shaped() -> None:
    assert len(TOYS) >= 10 and len(TOY_DENSITIES) >= 10
    for name in TOYS:
        first, again, other = make_toy(name, 300, seed=4), make_toy(name, 300, seed=4), make_toy(name, 300, seed=5)
        assert first.shape == (300, 2) and first.dtype == np.float64, name
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other), name


def test_original_toys_still_make_the_bundled_files() -> None:
    # datasets/make_toys.py draws these with seed 2026; new toys must not change the old generators
    for name in ("two_moons", "pinwheel"):
        table = read_table(DATASETS / f"{name}.csv")
        np.testing.assert_allclose(make_toy(name, len(table.values), seed=2026), table.values, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(TOY_DENSITIES))
def test_true_density_integrates_to_one_and_scores_its_samples(name: str) -> None:
    samples = make_toy(name, 4000, seed=1)
    box = Box.around(samples, margin=0.25, quantile=0.0)
    # checkerboard: the box cuts cells at its edges; its integral is exact only on cell-aligned grids
    grid = evaluate_grid(lambda points: toy_log_density(name, points), Box((-2.0, -2.0), (2.0, 2.0))
                         if name == "checkerboard" else box, 160)
    assert grid.integral == pytest.approx(1.0, abs=5e-3), name
    log_density = toy_log_density(name, samples)
    assert np.isfinite(log_density).all(), name
    # The samples' mean log-density beats any other density's on average (Gibbs): here, beats
    # the density shifted sideways by a tenth of the spread, a discriminating alternative.
    shifted = toy_log_density(name, samples + [0.1 * samples[:, 0].std(), 0.0])
    assert log_density.mean() > np.where(np.isfinite(shifted), shifted, -50).mean() + 0.05, name


def test_pinwheel_has_no_density_and_names_are_checked() -> None:
    assert toy_log_density("pinwheel", np.zeros((2, 2))) is None
    with pytest.raises(ValueError, match="unknown toy data set 'nope'"):
        toy_log_density("nope", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"expected points of shape \(n, 2\)"):
        toy_log_density("line", np.zeros((2, 3)))


def test_mixture_pruning_matches_the_full_sum() -> None:
    rng = np.random.default_rng(0)
    centres, points = rng.normal(size=(300, 2)) * 3, rng.normal(size=(2000, 2)) * 4
    weights = np.log(rng.random(300))
    weights -= np.log(np.exp(weights).sum())
    squared = ((points[:, None] - centres[None]) ** 2).sum(-1)
    full = np.log((np.exp(weights - 0.5 * squared / 0.2**2) / (2 * math.pi * 0.2**2)).sum(1))
    pruned = mixture_log_density(points, centres, 0.2, weights)
    # Exact wherever the density is within exp(-40) of a peak's; further out it is a cheaper lower bound
    kept = np.isfinite(full) & (full > full.max() - 40)
    assert kept.mean() > 0.9
    np.testing.assert_allclose(pruned[kept], full[kept], rtol=1e-10, atol=1e-10)


def test_two_dimensional_targets_and_their_grid_log_z() -> None:
    for name in ("u1", "u2", "u3", "u4", "banana", "funnel", "mixture", "two_moons"):
        assert name in TARGETS and name in TARGET_BOXES
    for name in TARGET_BOXES:
        target, box = planar_target(name)
        log_z, source = target_log_z(target, box, resolution=400)
        assert math.isfinite(log_z) and source == ("exact" if target.log_z is not None else "grid"), name
    # Where log Z is known, the midpoint rule on the box finds it (the funnel's box misses ~3% of its mouth)
    for name, tolerance in (("gaussian", 1e-3), ("banana", 2e-3), ("mixture", 1e-4), ("funnel", 0.04)):
        target, box = planar_target(name)
        assert grid_log_z(target, box, 600) == pytest.approx(target.log_z, abs=tolerance), name
    # and for the others the grid has converged: halving the cells changes nothing visible
    for name in ("u1", "u3", "two_moons"):
        target, box = planar_target(name)
        assert grid_log_z(target, box, 500) == pytest.approx(grid_log_z(target, box, 1000), abs=1e-4), name


def test_two_moons_energy_shape() -> None:
    target = TwoMoonsEnergy()
    points = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    values = target(points)
    assert values[0] == pytest.approx(values[1].item())  # symmetric crescents
    assert values[0] > values[2] + 10 and values[0] > values[3] + 10  # cut at z_1 = 0 and away from the ring
