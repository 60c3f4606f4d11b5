"""Preprocessing layers (Dequantize, Bounds), their place in presets and fit_tabular, and the cell
probabilities of flowkit.scoring, each against a density known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from flowkit.bijectors.preprocessing import Bounds, Dequantize, preprocessing_layers
from flowkit.presets import build
from flowkit.scoring import log_density, mean_and_standard_error
from flowkit.train.gaussian_start import gaussian_flow
from flowkit.train.tabular import fit_tabular


def test_dequantize_adds_noise_in_training_and_the_centre_in_eval() -> None:
    layer = Dequantize(2, columns=[1])
    x = torch.tensor([[0.25, 3.0]]).repeat(2000, 1)
    noisy, log_det = layer.train()(x)
    assert torch.equal(noisy[:, 0], x[:, 0]) and torch.equal(log_det, torch.zeros(2000))
    assert bool(((noisy[:, 1] >= 3) & (noisy[:, 1] < 4)).all()) and abs(noisy[:, 1].mean().item() - 3.5) < 0.03
    assert layer.eval()(x)[0][0].tolist() == [0.25, 3.5]
    assert layer.inverse(torch.tensor([[0.25, 3.999], [-1.0, -0.5]]))[0].tolist() == [[0.25, 3.0], [-1.0, -1.0]]


def test_bounds_keep_samples_inside_even_when_saturated() -> None:
    layer = Bounds([0.0, None, 2.0], [1.0, 5.0, None], [1.0, 1.0, 0.5]).to(torch.float32)
    z = torch.tensor([[-1e4, 1e4, -1e4], [1e4, -1e4, 1e4], [0.0, 0.0, 0.0]])
    x, log_det = layer.inverse(z)
    assert bool(((x[:, 0] >= 0) & (x[:, 0] <= 1)).all() and (x[:, 1] <= 5).all() and (x[:, 2] >= 2).all())
    assert torch.isfinite(layer(x)[0]).all() and torch.isfinite(layer(x)[1]).all()


def test_bounds_log_det_is_the_change_of_variables() -> None:
    """A standard normal pushed through the inverse of a lower bound is the density the forward's
    log-det says it is: compare with the closed form of softplus(z) * scale + lo."""
    layer = Bounds([1.0], [None], [2.0]).double()
    x = torch.tensor([[1.001], [1.5], [4.0], [30.0]], dtype=torch.float64)
    z, log_det = layer(x)
    u = (x - 1.0) / 2.0
    expected = -math.log(2.0) - torch.log(-torch.expm1(-u))  # d/dx softplus^-1(u) = 1 / (1 - e^-u) / 2
    assert torch.allclose(log_det, expected[:, 0], rtol=1e-12)
    assert torch.allclose(z, torch.log(torch.expm1(u)), rtol=1e-10)


def test_presets_put_preprocessing_in_front_and_record_it() -> None:
    spec = [{"layer": "dequantize", "columns": [0]},
            {"layer": "bounds", "lower": [0.0, None], "upper": [None, None], "scale": [1.0, 1.0]}]
    flow = build("nsf", features=2, transforms=1, hidden_features=8, whiten=True, preprocessing=spec)
    assert [type(layer).__name__ for layer in preprocessing_layers(flow)] == ["Dequantize", "Bounds"]
    assert type(flow.bijector[-1]).__name__ == "Whitening" and flow.config["preprocessing"] == spec
    rebuilt = build(**flow.config)
    assert len(rebuilt.bijector) == len(flow.bijector)


def test_cell_probabilities_of_the_gaussian_start_are_box_integrals() -> None:
    """At initialisation a whitened flow is a Gaussian, so the probability of an integer cell is
    the Gaussian's mass over the box [k, k + 1): importance sampling must find it."""
    torch.manual_seed(0)
    data = torch.distributions.MultivariateNormal(torch.zeros(2), torch.tensor([[4.0, 1.0], [1.0, 2.0]])).sample(
        (5000,)).round().double()
    flow = gaussian_flow(data, preprocessing=[{"layer": "dequantize", "columns": [0, 1]}])
    whitening = flow.bijector[1]
    weight = whitening.weight().detach()
    covariance = torch.linalg.inv(weight.T @ weight).numpy()
    gaussian = stats.multivariate_normal(whitening.loc.detach().numpy(), covariance)
    cells = torch.tensor([[0.0, 0.0], [2.0, -1.0], [-3.0, 1.0]], dtype=torch.float64)
    corners = lambda k0, k1: gaussian.cdf([k0, k1])  # noqa: E731
    exact = [corners(a + 1, b + 1) - corners(a, b + 1) - corners(a + 1, b) + corners(a, b) for a, b in cells.tolist()]
    estimated = log_density(flow, cells, draws=20000).exp().numpy()
    np.testing.assert_allclose(estimated, exact, rtol=0.02)
    centre = log_density(flow, cells, cells="density").numpy()
    np.testing.assert_allclose(centre, gaussian.logpdf((cells + 0.5).numpy()), rtol=1e-6)


def test_fit_tabular_whitens_behind_the_preprocessing() -> None:
    """The Gaussian start is the Gaussian of the rows after the bounds: with a log-normal column
    under a positive bound the whitened values are centred."""
    rng = np.random.default_rng(0)
    x = np.column_stack([np.exp(rng.normal(size=600)), rng.normal(size=600)])
    spec = [{"layer": "bounds", "lower": [0.0, None], "upper": [None, None], "scale": [float(x[:, 0].std()), 1.0]}]
    fit = fit_tabular(x, preprocessing=spec, overrides={"epochs": 1, "transforms": 1, "hidden_features": 8},
                      progress=False)
    assert fit.flow.config["preprocessing"] == spec and fit.gaussian.config["preprocessing"] == spec
    with torch.no_grad():
        z, _ = fit.gaussian.bijector(torch.as_tensor(x[fit.train_rows], dtype=torch.float32))
    assert [type(layer).__name__ for layer in fit.gaussian.bijector] == ["Bounds", "Whitening"]
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-3)
    assert fit.validation_nll <= fit.gaussian_validation_nll + 1e-6


def test_mean_and_standard_error_skip_infinite_rows() -> None:
    mean, error = mean_and_standard_error(np.array([0.0, 2.0, -np.inf]))
    assert mean == 1.0 and error == pytest.approx(1.0)
