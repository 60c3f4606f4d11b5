"""Short toy and target fits: what they learn, what the pictures hold, and `flowkit toy` end to end.

Margins (measured on these exact settings, seeds fixed): 150 steps of a 2-transform NSF-C on two
moons reach a held-out NLL of about 1.92 nats against the Gaussian's 3.25 (the truth: 1.68), so
the test asks for a full nat better than the Gaussian; 150 reverse-KL steps on the banana
estimate log Z = 0 to about 0.002, so the test allows 0.05.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from flowkit_cli.main import main

from flowkit.data.grid import evaluate_grid
from flowkit.io import load_model
from flowkit.plotting.gallery import GalleryItem, gallery_table, plot_gallery
from flowkit.plotting.toys import density_grids, plot_toy_fit, plot_toy_history
from flowkit.train.toy import fit_target, fit_toy

SMALL = dict(preset="nsf_coupling", transforms=2, hidden_features=32, steps=150)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    header = Path(path).read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR", path
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def moons():
    return fit_toy("two_moons", num_samples=2000, test_samples=2000, frames=5, **SMALL)


@pytest.fixture(scope="module")
def banana():
    return fit_target("banana", diagnostic_samples=4000, **SMALL)


def test_short_fit_on_two_moons_beats_the_gaussian(moons) -> None:
    m = moons.metrics
    assert m["test_nll"] < m["gaussian_nll"] - 1.0, m
    assert m["truth_nll"] < m["test_nll"]  # the truth's NLL is the floor (Gibbs), up to noise
    assert m["kl_from_truth"] == pytest.approx(m["test_nll"] - m["truth_nll"])


def test_short_reverse_kl_fit_to_the_banana_finds_log_z(banana) -> None:
    m = banana.metrics
    assert m["log_z"] == 0.0 and m["log_z_source"] == "exact"
    assert abs(m["log_z_estimate"]) < 0.05, m
    assert m["elbo"] < m["log_z"] + 0.01 and m["elbo_gap"] < 0.5, m  # ELBO is a lower bound
    assert 0.5 < m["ess_fraction"] <= 1.0 and np.isfinite(m["khat"]), m


def test_plotted_densities_integrate_to_one_on_the_grid(moons, banana) -> None:
    for fit in (moons, banana):
        truth, model = density_grids(fit, 200)
        assert truth.integral == pytest.approx(1.0, abs=0.01), fit.name
        assert model.integral == pytest.approx(1.0, abs=0.03), fit.name
        assert fit.metrics["grid_mass"] == pytest.approx(model.integral, abs=1e-3)
        # the grid is what the picture shows: the same box and values the flow gives directly
        direct = evaluate_grid(fit.log_density, fit.box, 50)
        assert direct.box == model.box


def test_pictures_are_pngs_of_the_stated_size(moons, banana, tmp_path: Path) -> None:
    plot_toy_fit(moons, tmp_path / "moons.png", resolution=60, num_samples=500)
    plot_toy_fit(banana, tmp_path / "banana.png", scale="linear", resolution=60, num_samples=500)
    plot_toy_history(banana, tmp_path / "history.png")
    assert png_size(tmp_path / "moons.png") == (1804, 429)  # 4 panels of 4.1 x 3.9 in at 110 dpi
    assert png_size(tmp_path / "banana.png") == (1353, 429)  # 3 panels
    assert png_size(tmp_path / "history.png") == (704, 440)
    assert len(moons.frames) == 5 and moons.frames[0][0] == 0  # frames from the training loop (CLI: --animate)
    items = [GalleryItem(fit.name, fit.kind, *density_grids(fit, 40), fit.sample(300), fit.data, fit.metrics)
             for fit in (moons, banana)]
    plot_gallery(items, tmp_path / "gallery.png", per_row=1)
    width, height = png_size(tmp_path / "gallery.png")  # figsize * dpi, to the pixel
    assert abs(width - (3 * 1.55 + 0.4) * 72) < 1 and abs(height - (2 * (1.55 + 0.32) + 0.9) * 72) < 1
    table = gallery_table(items)
    assert "| two_moons |" in table and "| banana | 0.000 (exact)" in table


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


TINY = ["--transforms", "1", "--hidden", "8", "--steps", "15", "-q"]


def test_cli_toy_and_target_write_every_output(tmp_path: Path) -> None:
    result = run("toy", "line", "-o", str(tmp_path), "--samples", "400", *TINY)
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "line.json").read_text())
    assert figures["toy"] == "line" and figures["truth_nll"] is not None and figures["steps"] == 15
    assert png_size(tmp_path / "line.png") == (1804, 429)
    for name in ("line_layers.png", "line_training.png"):
        assert png_size(tmp_path / name)[0] > 300
    flow, standardizer, metadata = load_model(tmp_path / "line.flowkit")
    assert flow.features == 2 and metadata["data"] == "toy:line"
    result = run("toy", "--target", "u1", "-o", str(tmp_path), "--animate", *TINY)
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "u1.json").read_text())
    assert figures["log_z_source"] == "grid" and 0 < figures["ess_fraction"] <= 1
    assert png_size(tmp_path / "u1.png") == (1353, 429)
    assert (tmp_path / "u1.gif").read_bytes()[:6] == b"GIF89a"
    assert "log Z estimate" in result.output
    listing = run("toy", "--list")
    assert "pinwheel (no closed-form density)" in listing.output and "two_moons" in listing.output


def test_cli_toy_errors_are_one_line_and_lose_nothing(tmp_path: Path) -> None:
    keep = tmp_path / "out" / "two_moons.png"
    keep.parent.mkdir()
    keep.write_bytes(b"earlier picture")
    for args, status, message in [
        (["toy", "nope", "-o", str(tmp_path / "out")], 1, "unknown toy 'nope'"),
        (["toy", "--target", "logistic", "-o", str(tmp_path / "out")], 1, "unknown target 'logistic'"),
        (["toy", "two_moons", "--target", "u1", "-o", str(tmp_path / "out")], 2, "one of them"),
        (["toy", "two_moons"], 2, "-o DIR"),
        (["toy", "--target", "u1", "--epochs", "2", "-o", str(tmp_path / "out")], 2, "--epochs is for toys"),
        (["toy", "two_moons", "-o", str(keep)], 2, "is a file"),  # a file where the folder should be
    ]:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == status, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (args, result.output)
    assert keep.read_bytes() == b"earlier picture"
