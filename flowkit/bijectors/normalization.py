"""Normalisation layers: ActNorm (data-dependent initialisation) and BatchNorm (batch statistics)."""

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


class BatchNorm(Bijector):
    """Batch normalisation as a bijector (Dinh et al., 2017; Papamakarios et al., 2017):
    ``z = (x - mean) / sqrt(var + eps) * exp(log_gamma) + beta``.

    * Training mode, ``forward``: ``mean`` and ``var`` are the batch's (biased variance), and the
      running statistics move towards them by ``momentum`` (the running variance takes the
      unbiased batch variance, as ``torch.nn.BatchNorm1d`` does). The log-det is that of the
      elementwise affine map with the batch statistics held fixed, the map applied to each
      sample, as in RealNVP and MAF; it needs a batch of at least 2.
    * Eval mode, ``forward``: the running statistics; the map is a fixed affine map.
    * ``inverse``, in either mode: the running statistics, so sampling never depends on the batch
      being sampled and inverts the eval-mode forward exactly.

    At initialisation (running mean 0, running variance 1, ``log_gamma = beta = 0``) the eval-mode
    map is ``x / sqrt(1 + eps)``: the identity up to ``eps``.

    Args:
        features: number of input features.
        momentum: weight of the current batch in the running statistics update.
        eps: added to the variance before the square root.

    Example:
        >>> import torch
        >>> layer = BatchNorm(2)
        >>> z, _ = layer(3 + 5 * torch.randn(500, 2))  # training mode: batch statistics
        >>> bool(z.mean(0).abs().max() < 1e-5), bool(layer.running_mean.abs().min() > 0.1)
        (True, True)
    """

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.momentum = momentum
        self.eps = eps
        self.log_gamma = nn.Parameter(torch.zeros(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def _batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[0] < 2:
            raise ValueError(f"BatchNorm in training mode needs a batch of at least 2, got {x.shape[0]}")
        mean, var = x.mean(0), x.var(0, unbiased=False)
        with torch.no_grad():
            batch = x.shape[0]
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * (batch / (batch - 1)), self.momentum)
        return mean, var

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.training:
            mean, var = self._batch_statistics(x)
        else:
            mean, var = self.running_mean, self.running_var
        log_scale = self.log_gamma - 0.5 * torch.log(var + self.eps)
        z = (x - mean) * torch.exp(log_scale) + self.beta
        return z, log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_scale = self.log_gamma - 0.5 * torch.log(self.running_var + self.eps)
        x = (z - self.beta) * torch.exp(-log_scale) + self.running_mean
        return x, -log_scale.sum().expand(z.shape[0])
