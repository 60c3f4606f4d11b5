"""The bijector contract, and the two ways of combining bijectors: `Chain` and `Inverse`.

Every bijector maps data to latent in ``forward`` (the normalizing direction) and latent to data
in ``inverse``. Both return ``(output, log_det)`` where ``log_det`` has shape ``(batch,)``, is
summed over features, and is the log-determinant of the map that method computes, so the inverse's
is minus the forward's. There is no second way to get a log-det; ``inverse_without_log_det`` is a
way not to compute one where the caller would discard it (sampling).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


class Bijector(nn.Module):
    """Base class of every invertible map in flowkit.

    Subclasses implement ``forward`` and ``inverse``. Both accept ``context`` (shape
    ``(batch, context_features)`` or None) and ignore it when they do not use it, so conditional
    and unconditional layers share one code path.

    Example:
        >>> import torch, flowkit
        >>> layer = flowkit.bijectors.Permutation.reverse(3)
        >>> z, log_det = layer(torch.randn(4, 3))
        >>> log_det.shape
        torch.Size([4])
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map data ``x`` to latent; return ``(z, log|det dz/dx|)``."""
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map latent ``z`` to data; return ``(x, log|det dx/dz|)``."""
        raise NotImplementedError

    def inverse_without_log_det(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``inverse(z, context)[0]``, for callers that discard the log-det. Bijectors whose log-det
        is separate work (an autoregressive spline's) override it to skip that work."""
        return self.inverse(z, context)[0]


class Chain(Bijector):
    """Bijectors applied in list order in ``forward`` and in reverse order in ``inverse``.

    Example:
        >>> import torch
        >>> from flowkit.bijectors import Chain, Permutation
        >>> chain = Chain([Permutation.reverse(2), Permutation.reverse(2)])
        >>> x = torch.randn(5, 2)
        >>> torch.equal(chain(x)[0], x)
        True
    """

    def __init__(self, bijectors: Iterable[Bijector]) -> None:
        super().__init__()
        self.bijectors = nn.ModuleList(bijectors)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for bijector in self.bijectors:
            x, log_det = bijector(x, context)
            total = total + log_det
        return x, total

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        for bijector in reversed(self.bijectors):
            z, log_det = bijector.inverse(z, context)
            total = total + log_det
        return z, total

    def inverse_without_log_det(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        for bijector in reversed(self.bijectors):
            z = bijector.inverse_without_log_det(z, context)
        return z

    def __len__(self) -> int:
        return len(self.bijectors)

    def __getitem__(self, index: int) -> Bijector:
        return self.bijectors[index]


class Inverse(Bijector):
    """Swap a bijector's directions: IAF is ``Inverse(MaskedAutoregressive(...))``.

    Example:
        >>> import torch
        >>> from flowkit.bijectors import Inverse, Permutation
        >>> layer = Inverse(Permutation.random(4, seed=0))
        >>> x = torch.randn(2, 4)
        >>> torch.equal(layer.inverse(layer(x)[0])[0], x)
        True
    """

    def __init__(self, bijector: Bijector) -> None:
        super().__init__()
        self.bijector = bijector

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijector.inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijector(z, context)


def zero_log_det(x: Tensor) -> Tensor:
    """The ``(batch,)`` log-det of a volume-preserving map."""
    return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
