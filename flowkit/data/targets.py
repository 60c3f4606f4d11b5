"""Unnormalised log-densities to fit a variational flow to, by reverse KL.

Each target is a small ``nn.Module`` whose call (or ``log_prob``) maps ``(..., features)`` to
``(...)`` log-densities in torch (so pathwise gradients pass through it), with its ``features`` and, where known, its
``log_z`` (the log of ``integral exp(log_prob)``), ``mean``, ``covariance`` and an exact
``sample``. Constants are float64 buffers, cast to the input's dtype and device at each call, so a
target works with float32 and float64 flows alike and moves with ``.to(device)``.

``make_target(name, **kwargs)`` builds one by name from ``TARGETS`` (what a command line needs).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkit.data.energies import RezendeEnergy, TwoMoonsEnergy
from flowkit.data.target_base import HALF_LOG_TWO_PI, Target, _normal_log_prob

__all__ = [
    "HALF_LOG_TWO_PI", "TARGETS", "Banana", "BayesianLogisticRegression", "CorrelatedGaussian", "GaussianMixture",
    "NealsFunnel", "RezendeEnergy", "Target", "TwoMoonsEnergy", "logistic_regression_data", "make_target",
]


class CorrelatedGaussian(Target):
    """A normalised Gaussian with a full covariance: the target with a known answer.

    Without a ``covariance``, one is drawn from ``seed``: a random rotation of variances spread
    log-uniformly over ``[0.1, 10]`` (condition number 100), with a standard-normal mean.

    Args:
        features: dimension (inferred from ``covariance`` or ``mean`` when given; default 2).
        mean: ``(features,)`` mean.
        covariance: ``(features, features)`` symmetric positive-definite matrix.
        seed: seeds the mean and covariance that are not given.

    Example:
        >>> import torch
        >>> target = CorrelatedGaussian(features=3, seed=1)
        >>> target(target.sample(5)).shape, target.log_z
        (torch.Size([5]), 0.0)
    """

    log_z = 0.0

    def __init__(self, features: int | None = None, mean: Tensor | None = None,
                 covariance: Tensor | None = None, seed: int = 0) -> None:
        super().__init__()
        mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float64)
        covariance = None if covariance is None else torch.as_tensor(covariance, dtype=torch.float64)
        given = covariance if covariance is not None else mean
        self.features = int(given.shape[0]) if given is not None else (2 if features is None else features)
        if self.features < 1:
            raise ValueError(f"features must be positive, got {self.features}")
        if features is not None and features != self.features:
            raise ValueError(f"features={features} but the mean/covariance have {self.features}")
        generator = torch.Generator().manual_seed(seed)
        if covariance is None:
            rotation, _ = torch.linalg.qr(torch.randn(self.features, self.features, generator=generator,
                                                      dtype=torch.float64))
            variances = torch.logspace(-1, 1, self.features, dtype=torch.float64)
            covariance = rotation @ torch.diag(variances) @ rotation.T
        if covariance.shape != (self.features, self.features) or not torch.allclose(covariance, covariance.T):
            raise ValueError(f"covariance must be a symmetric ({self.features}, {self.features}) matrix")
        # The Cholesky factor reads one triangle only: symmetrise so the stated covariance is the
        # one log_prob and the sampler use.
        covariance = 0.5 * (covariance + covariance.T)
        mean = torch.randn(self.features, generator=generator, dtype=torch.float64) if mean is None else mean
        if mean.shape != (self.features,):
            raise ValueError(f"mean must have shape ({self.features},), got {tuple(mean.shape)}")
        cholesky, info = torch.linalg.cholesky_ex(covariance)
        if int(info) != 0:
            raise ValueError("covariance must be symmetric positive definite")
        self.register_buffer("loc", mean)
        self.register_buffer("covariance_matrix", covariance)
        self.register_buffer("cholesky", cholesky)

    def _log_prob(self, x: Tensor) -> Tensor:
        cholesky = self.cholesky.to(x)
        whitened = torch.linalg.solve_triangular(cholesky, (x - self.loc.to(x)).T, upper=False)
        log_det = torch.log(torch.diagonal(cholesky)).sum()
        return -0.5 * whitened.square().sum(0) - log_det - self.features * HALF_LOG_TWO_PI

    @property
    def mean(self) -> Tensor:
        return self.loc.cpu().double()

    @property
    def covariance(self) -> Tensor:
        return self.covariance_matrix.cpu().double()

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        return self.mean + self._randn(num_samples, generator) @ self.cholesky.cpu().double().T


class NealsFunnel(Target):
    """Neal's funnel: neck ``v = x[:, 0] ~ N(0, neck_scale^2)``, then ``x_i | v ~ N(0, e^v)``.

    Normalised. The scale of the other coordinates changes by ``e^{+-3 neck_scale / 2}`` over the
    neck's range, which is what makes it hard for samplers and variational families alike.

    Example:
        >>> import torch
        >>> target = NealsFunnel(features=3)
        >>> round(target(torch.zeros(1, 3)).item(), 4)  # log N(0; 0, 9) + 2 log N(0; 0, 1)
        -3.8554
    """

    log_z = 0.0

    def __init__(self, features: int = 2, neck_scale: float = 3.0) -> None:
        super().__init__()
        if features < 2:
            raise ValueError(f"a funnel needs at least 2 features, got {features}")
        self.features, self.neck_scale = features, neck_scale

    def _log_prob(self, x: Tensor) -> Tensor:
        neck, rest = x[:, 0], x[:, 1:]
        # log N(x; 0, e^v) = -x^2 e^{-v} / 2 - v / 2 - log sqrt(2 pi), written without exp(v / 2)
        rest_log_prob = -0.5 * (rest.square() * torch.exp(-neck)[:, None] + neck[:, None]) - HALF_LOG_TWO_PI
        return _normal_log_prob(neck, self.neck_scale) + rest_log_prob.sum(-1)

    @property
    def mean(self) -> Tensor:
        return torch.zeros(self.features, dtype=torch.float64)

    @property
    def covariance(self) -> Tensor:
        # Var(x_i) = E[e^v] = e^{neck_scale^2 / 2}; the coordinates are uncorrelated.
        variances = torch.full((self.features,), math.exp(self.neck_scale**2 / 2), dtype=torch.float64)
        variances[0] = self.neck_scale**2
        return torch.diag(variances)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        noise = self._randn(num_samples, generator)
        neck = self.neck_scale * noise[:, :1]
        return torch.cat([neck, torch.exp(0.5 * neck) * noise[:, 1:]], dim=1)


class Banana(Target):
    """Haario's twisted Gaussian: ``N(0, diag(first_scale^2, 1, ...))`` with ``x_2`` bent by
    ``x_2 + curvature * (x_1^2 - first_scale^2)``. The twist has unit Jacobian, so it stays
    normalised with mean zero.

    Example:
        >>> import torch
        >>> target = Banana()
        >>> target.covariance.diagonal().tolist()  # first_scale^2, 1 + 2 b^2 first_scale^4
        [100.0, 19.0]
    """

    log_z = 0.0

    def __init__(self, features: int = 2, curvature: float = 0.03, first_scale: float = 10.0) -> None:
        super().__init__()
        if features < 2:
            raise ValueError(f"a banana needs at least 2 features, got {features}")
        self.features, self.curvature, self.first_scale = features, curvature, first_scale

    def _untwist(self, x: Tensor) -> Tensor:
        second = x[:, 1] - self.curvature * (x[:, 0].square() - self.first_scale**2)
        return torch.cat([x[:, :1], second[:, None], x[:, 2:]], dim=1)

    def _log_prob(self, x: Tensor) -> Tensor:
        straight = self._untwist(x)
        first = _normal_log_prob(straight[:, 0], self.first_scale)
        return first + _normal_log_prob(straight[:, 1:], 1.0).sum(-1)

    @property
    def mean(self) -> Tensor:
        return torch.zeros(self.features, dtype=torch.float64)

    @property
    def covariance(self) -> Tensor:
        # Var(b (x_1^2 - s^2)) = 2 b^2 s^4; Cov(x_1, x_1^2) = E[x_1^3] = 0.
        variances = torch.ones(self.features, dtype=torch.float64)
        variances[0] = self.first_scale**2
        variances[1] = 1 + 2 * self.curvature**2 * self.first_scale**4
        return torch.diag(variances)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        x = self._randn(num_samples, generator)
        x[:, 0] *= self.first_scale
        x[:, 1] += self.curvature * (x[:, 0].square() - self.first_scale**2)
        return x


class GaussianMixture(Target):
    """``sum_k weights_k N(x; means_k, diag(scales_k^2))``; ``log_z = log(sum(weights))``.

    Args:
        means: ``(components, features)``.
        scales: ``(components, features)``, ``(components,)`` or a scalar; positive.
        weights: ``(components,)`` positive, default equal weights summing to one.

    Example:
        >>> import torch
        >>> target = GaussianMixture.ring(components=4, radius=3.0)
        >>> target.mean.abs().max().item() < 1e-12, target.log_z
        (True, 0.0)
    """

    def __init__(self, means: Tensor, scales: Tensor | float = 1.0, weights: Tensor | None = None) -> None:
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"means must be (components, features), got {tuple(means.shape)}")
        components, self.features = means.shape
        scales = torch.as_tensor(scales, dtype=torch.float64)
        scales = scales[:, None] if scales.dim() == 1 else scales
        scales = scales.expand(components, self.features).clone()
        weights = torch.full((components,), 1 / components, dtype=torch.float64) if weights is None \
            else torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (components,) or not bool((weights > 0).all()) or not bool((scales > 0).all()):
            raise ValueError("weights must be (components,) and positive, and scales positive")
        self.log_z = math.log(weights.sum().item())
        self.register_buffer("means", means)
        self.register_buffer("scales", scales)
        self.register_buffer("weights", weights)

    @classmethod
    def ring(cls, components: int = 8, radius: float = 4.0, scale: float = 0.5) -> GaussianMixture:
        """Equal, well separated 2-D components on a circle: a mode-seeking test for reverse KL."""
        angles = torch.arange(components, dtype=torch.float64) * (2 * math.pi / components)
        return cls(radius * torch.stack([angles.cos(), angles.sin()], dim=1), scale)

    def _log_prob(self, x: Tensor) -> Tensor:
        means, scales = self.means.to(x), self.scales.to(x)
        per_component = _normal_log_prob(x[:, None, :] - means, scales).sum(-1)
        return torch.logsumexp(per_component + torch.log(self.weights.to(x)), dim=1)

    @property
    def mean(self) -> Tensor:
        weights, means, _ = self._cpu()
        return (weights / weights.sum()) @ means

    @property
    def covariance(self) -> Tensor:
        weights, means, scales = self._cpu()
        probabilities = weights / weights.sum()
        second_moment = torch.einsum("k,ki,kj->ij", probabilities, means, means) \
            + torch.diag(probabilities @ scales.square())
        return second_moment - torch.outer(self.mean, self.mean)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        weights, means, scales = self._cpu()
        index = torch.multinomial(weights, num_samples, replacement=True, generator=generator)
        return means[index] + scales[index] * self._randn(num_samples, generator)

    def _cpu(self) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(tensor.cpu().double() for tensor in (self.weights, self.means, self.scales))


def logistic_regression_data(num_observations: int = 100, num_covariates: int = 5, seed: int = 0,
                             intercept: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """A reproducible synthetic data set: ``(covariates, labels, true_weights)``, all float64.

    Covariates are standard normal (with a leading column of ones when ``intercept``), the true
    weights standard normal, and each label Bernoulli(sigmoid(covariates @ true_weights)).
    """
    generator = torch.Generator().manual_seed(seed)
    covariates = torch.randn(num_observations, num_covariates, generator=generator, dtype=torch.float64)
    if intercept:
        covariates = torch.cat([torch.ones(num_observations, 1, dtype=torch.float64), covariates], dim=1)
    true_weights = torch.randn(covariates.shape[1], generator=generator, dtype=torch.float64)
    labels = torch.bernoulli(torch.sigmoid(covariates @ true_weights), generator=generator)
    return covariates, labels, true_weights


class BayesianLogisticRegression(Target):
    """Posterior over logistic-regression weights with a ``N(0, prior_scale^2 I)`` prior.

    ``log p(w | data) + const = sum_i [y_i s_i - softplus(s_i)] + log N(w; 0, prior_scale^2 I)``
    with ``s_i = covariates_i . w``. Without ``covariates`` and ``labels`` the data come from
    ``logistic_regression_data(num_observations, num_covariates, seed)``.

    Example:
        >>> target = BayesianLogisticRegression(num_observations=50, num_covariates=2)
        >>> target.features, tuple(target.covariates.shape)
        (3, (50, 3))
    """

    def __init__(self, covariates: Tensor | None = None, labels: Tensor | None = None,
                 num_observations: int = 100, num_covariates: int = 5, prior_scale: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__()
        true_weights = None
        if covariates is None and labels is None:
            data = logistic_regression_data(num_observations, num_covariates, seed)
            covariates, labels, true_weights = data
        elif covariates is None or labels is None:
            raise ValueError("give both covariates and labels, or neither")
        covariates = torch.as_tensor(covariates, dtype=torch.float64)
        labels = torch.as_tensor(labels, dtype=torch.float64)
        if covariates.dim() != 2 or labels.shape != (covariates.shape[0],):
            raise ValueError(f"covariates must be (n, d) and labels (n,), got {tuple(covariates.shape)} "
                             f"and {tuple(labels.shape)}")
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError("labels must be 0 or 1")
        self.features, self.prior_scale = covariates.shape[1], prior_scale
        self.register_buffer("covariates", covariates)
        self.register_buffer("labels", labels)
        self.true_weights = true_weights

    def _log_prob(self, x: Tensor) -> Tensor:
        logits = x @ self.covariates.to(x).T  # (n, observations)
        log_likelihood = (self.labels.to(x) * logits - F.softplus(logits)).sum(-1)
        return log_likelihood + _normal_log_prob(x, self.prior_scale).sum(-1)


TARGETS: dict[str, Callable[..., Target]] = {
    "gaussian": CorrelatedGaussian,
    "funnel": NealsFunnel,
    "banana": Banana,
    "mixture": GaussianMixture.ring,
    "u1": functools.partial(RezendeEnergy, 1),
    "u2": functools.partial(RezendeEnergy, 2),
    "u3": functools.partial(RezendeEnergy, 3),
    "u4": functools.partial(RezendeEnergy, 4),
    "two_moons": TwoMoonsEnergy,
    "logistic": BayesianLogisticRegression,
}


def make_target(name: str, **kwargs) -> Target:
    """Build a registered target by name, passing ``kwargs`` to its constructor.

    Example:
        >>> make_target("funnel", features=5).features
        5
    """
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    return TARGETS[name](**kwargs)
