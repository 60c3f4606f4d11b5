"""``Unconditional``: an elementwise transformer whose parameters are free, not predicted.

The structures (``Coupling``, ``MaskedAutoregressive``) feed a transformer parameters computed
from other features; this one holds a ``(features, num_params)`` parameter of its own, so the
same affine or spline acts on every row. It reshapes marginals (a spline bends a symmetric
coordinate into a skewed one) at the cost of one transformer call, and is what the posterior head
uses to let even an affine preset fit a log-normal coordinate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowkit.bijectors.base import Bijector
from flowkit.bijectors.transformers import Transformer


class Unconditional(Bijector):
    """``z_i = t(x_i; theta_i)`` with ``theta`` a learned ``(features, num_params)`` parameter.

    The parameters start at zero, the identity for flowkit's transformers; ``context`` is
    accepted and ignored, as by every bijector.

    Args:
        transformer: the elementwise map, e.g. ``RationalQuadraticSpline()``.
        features: event size.

    Example:
        >>> import torch
        >>> from flowkit.bijectors import RationalQuadraticSpline
        >>> layer = Unconditional(RationalQuadraticSpline(num_bins=4), features=2)
        >>> x = torch.randn(5, 2)
        >>> z, log_det = layer(x)
        >>> torch.allclose(z, x, atol=1e-6), tuple(log_det.shape)
        (True, (5,))
    """

    def __init__(self, transformer: Transformer, features: int) -> None:
        super().__init__()
        if features < 1:
            raise ValueError(f"features must be positive, got {features}")
        self.transformer = transformer
        self.features = features
        self.params = nn.Parameter(torch.zeros(features, transformer.num_params))

    def _params(self, rows: Tensor) -> Tensor:
        return self.params.to(rows.dtype).expand(rows.shape[0], -1, -1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, log_det = self.transformer.forward(x, self._params(x))
        return z, log_det.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, log_det = self.transformer.inverse(z, self._params(z))
        return x, log_det.sum(-1)
