"""Normalisation layers: ActNorm (data-dependent initialisation)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowkit.bijectors.base import Bijector


class ActNorm(Bijector):
    """Per-feature affine map ``z = (x - loc) * exp(-log_scale)`` (Kingma and Dhariwal, 2018).

    It is the identity until the first ``forward`` call in training mode, which sets ``loc`` and
    ``log_scale`` so that this batch leaves the layer with zero mean and unit variance per
    feature. The ``initialized`` buffer travels in the state dict, so a loaded model keeps its
    statistics.

    Example:
        >>> import torch
        >>> layer = ActNorm(2)
        >>> z, _ = layer(3 + 5 * torch.randn(1000, 2))
        >>> bool(z.mean(0).abs().max() < 1e-5)
        True
    """

    def __init__(self, features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.loc = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        std = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(x[0])
        self.loc.copy_(x.mean(0))
        self.log_scale.copy_(torch.log(std + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self._initialize(x)
        z = (x - self.loc) * torch.exp(-self.log_scale)
        return z, (-self.log_scale).sum().expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = z * torch.exp(self.log_scale) + self.loc
        return x, self.log_scale.sum().expand(z.shape[0])
