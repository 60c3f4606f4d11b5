"""Base distributions. Samples are reparameterised: ``z = loc + scale * eps``, ``eps ~ N(0, I)``.

Drawing ``eps`` from a fixed standard normal and moving it by ``loc`` and ``scale`` makes the
sample a differentiable function of the parameters, so gradients of ``E[f(z)]`` pass through the
samples (the pathwise or reparameterization-trick estimator). This is what reverse-KL training
relies on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class DiagGaussian(nn.Module):
    """Gaussian with diagonal covariance, optionally with trainable ``loc`` and ``log_scale``.

    Args:
        features: dimension of the event.
        loc: initial mean (default zeros).
        scale: initial standard deviations, positive (default ones).
        trainable: learn ``loc`` and ``log_scale`` as parameters; otherwise they are buffers.

    Example:
        >>> import torch
        >>> base = DiagGaussian(2, loc=torch.tensor([1.0, -1.0]), trainable=True)
        >>> z = base.rsample(4)
        >>> z.sum().backward()
        >>> base.loc.grad.tolist()
        [4.0, 4.0]
    """

    def __init__(
        self,
        features: int,
        loc: Tensor | None = None,
        scale: Tensor | None = None,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        if features < 1:
            raise ValueError(f"features must be positive, got {features}")
        self.features = features
        loc = torch.zeros(features) if loc is None else torch.as_tensor(loc, dtype=torch.float32)
        scale = torch.ones(features) if scale is None else torch.as_tensor(scale, dtype=torch.float32)
        if loc.shape != (features,) or scale.shape != (features,):
            raise ValueError(f"loc and scale must have shape ({features},)")
        if not bool((scale > 0).all()):
            raise ValueError("scale must be positive")
        if trainable:
            self.loc = nn.Parameter(loc.clone())
            self.log_scale = nn.Parameter(scale.log())
        else:
            self.register_buffer("loc", loc.clone())
            self.register_buffer("log_scale", scale.log())

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp()

    def log_prob(self, z: Tensor) -> Tensor:
        """Log-density of each row of ``z``, shape ``(batch,)``."""
        eps = (z - self.loc) * torch.exp(-self.log_scale)
        return -0.5 * (eps.square().sum(-1) + self.features * math.log(2 * math.pi)) - self.log_scale.sum()

    def rsample(self, num_samples: int) -> Tensor:
        """Reparameterised samples ``loc + scale * eps``; gradients reach ``loc`` and ``scale``."""
        return self.rsample_and_log_prob(num_samples)[0]

    def rsample_and_log_prob(self, num_samples: int) -> tuple[Tensor, Tensor]:
        """Samples and their log-density, computed from ``eps`` without inverting the map."""
        eps = torch.randn(num_samples, self.features, dtype=self.loc.dtype, device=self.loc.device)
        z = self.loc + self.scale * eps
        log_prob = -0.5 * (eps.square().sum(-1) + self.features * math.log(2 * math.pi)) - self.log_scale.sum()
        return z, log_prob

    def sample(self, num_samples: int) -> Tensor:
        """Samples without a gradient path."""
        with torch.no_grad():
            return self.rsample(num_samples)
