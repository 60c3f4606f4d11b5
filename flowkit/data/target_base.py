"""The contract of a variational target: ``Target``, an ``nn.Module`` log-density over
``R^features`` computed in torch, with what is known about it (``log_z``, moments, an exact
sampler) and ``None`` or ``NotImplementedError`` where it is not."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


def _normal_log_prob(x: Tensor, scale: Tensor | float) -> Tensor:
    """Elementwise log N(x; 0, scale^2)."""
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    return -0.5 * (x / scale).square() - torch.log(scale) - HALF_LOG_TWO_PI


class Target(nn.Module):
    """Base class: a log-density over ``R^features``; ``None`` where a quantity is unknown.

    Attributes:
        features: dimension of the support.
        log_z: log normalising constant of ``exp(log_prob)``, or None when unknown.
    """

    features: int
    log_z: float | None = None

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density of each point of ``x``: shape ``(..., features)`` to ``(...)``.

        Any batch shape works (a single ``(features,)`` point gives a scalar). The result has the
        input's dtype and device; half precision is computed in float32, integers are read in the
        default float dtype.
        """
        x = torch.as_tensor(x)
        if x.dim() == 0 or x.shape[-1] != self.features:
            raise ValueError(f"expected x of shape (..., {self.features}), got {tuple(x.shape)}")
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        work = x.to(torch.promote_types(dtype, torch.float32))
        return self._log_prob(work.reshape(-1, self.features)).reshape(x.shape[:-1]).to(dtype)

    def _log_prob(self, x: Tensor) -> Tensor:
        """The log-density of the rows of a ``(n, features)`` tensor, shape ``(n,)``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.log_prob(x)

    # Moments and samples are float64 CPU tensors wherever the target's constants live.
    @property
    def mean(self) -> Tensor | None:
        return None

    @property
    def covariance(self) -> Tensor | None:
        return None

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples, float64 ``(num_samples, features)`` on the CPU, where there is a sampler."""
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler")

    def _randn(self, num_samples: int, generator: torch.Generator | None) -> Tensor:
        return torch.randn(num_samples, self.features, generator=generator, dtype=torch.float64)
