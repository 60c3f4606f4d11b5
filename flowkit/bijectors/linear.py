"""Linear volume-preserving maps: feature permutations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowkit.bijectors.base import Bijector, zero_log_det


class Permutation(Bijector):
    """Reorder features: ``z[:, i] = x[:, permutation[i]]``. Log-det is zero.

    Example:
        >>> import torch
        >>> layer = Permutation.reverse(3)
        >>> layer(torch.tensor([[1.0, 2.0, 3.0]]))[0].tolist()
        [[3.0, 2.0, 1.0]]
    """

    def __init__(self, permutation: Sequence[int] | Tensor) -> None:
        super().__init__()
        permutation = torch.as_tensor(permutation, dtype=torch.long)
        features = len(permutation)
        if not torch.equal(torch.sort(permutation).values, torch.arange(features)):
            raise ValueError(f"not a permutation of 0..{features - 1}: {permutation.tolist()}")
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    @classmethod
    def reverse(cls, features: int) -> Permutation:
        """The permutation that reverses the feature order."""
        return cls(torch.arange(features - 1, -1, -1))

    @classmethod
    def random(cls, features: int, seed: int = 0) -> Permutation:
        """A random permutation drawn from its own generator, so ``seed`` fixes it."""
        generator = torch.Generator().manual_seed(seed)
        return cls(torch.randperm(features, generator=generator))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x[:, self.permutation], zero_log_det(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z[:, self.inverse_permutation], zero_log_det(z)
