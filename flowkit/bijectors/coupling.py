"""Coupling structure: half the features condition an elementwise transform of the other half.

The structure is independent of the transformer: ``Coupling(Affine())`` is RealNVP,
``Coupling(Additive())`` is NICE, ``Coupling(RationalQuadraticSpline(...))`` is NSF-C.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowkit.bijectors.base import Bijector
from flowkit.bijectors.transformers import Transformer
from flowkit.nn import MLP


class Coupling(Bijector):
    """Transform the features where ``mask`` is False, conditioned on those where it is True.

    The conditioner is an MLP fed the identity features and, if any, the context; its output
    layer starts at zero so the layer starts as the identity.

    Args:
        transformer: the elementwise transformer (``Affine()``, ``Additive()``, a spline).
        features: number of input features.
        mask: boolean ``(features,)``; True marks features passed through unchanged. Defaults
            to the first ``features // 2`` (the permutations between layers alternate halves).
        context_features: width of the context vector, 0 for none.
        hidden_features: conditioner widths (an int means two layers of that width).

    Example:
        >>> import torch
        >>> from flowkit.bijectors import Affine, Coupling
        >>> layer = Coupling(Affine(), features=4, context_features=2)
        >>> z, log_det = layer(torch.randn(8, 4), context=torch.randn(8, 2))
        >>> z.shape, log_det.shape
        (torch.Size([8, 4]), torch.Size([8]))
    """

    def __init__(
        self,
        transformer: Transformer,
        features: int,
        mask: Tensor | None = None,
        context_features: int = 0,
        hidden_features: int | Sequence[int] = 64,
    ) -> None:
        super().__init__()
        if features < 2:
            raise ValueError(f"coupling needs at least 2 features, got {features} "
                             "(an autoregressive flow such as maf or nsf works with one)")
        if mask is None:
            mask = torch.arange(features) < features // 2
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.shape != (features,) or mask.all() or not mask.any():
            raise ValueError("mask must be a (features,) boolean with both True and False entries")
        self.transformer = transformer
        self.features = features
        self.context_features = context_features
        self.register_buffer("identity_index", torch.nonzero(mask).flatten())
        self.register_buffer("transform_index", torch.nonzero(~mask).flatten())
        num_identity = len(self.identity_index)
        self.num_transformed = features - num_identity
        self.conditioner = MLP(
            num_identity + context_features,
            self.num_transformed * transformer.num_params,
            hidden_features,
        )

    def _params(self, x_identity: Tensor, context: Tensor | None) -> Tensor:
        inputs = x_identity if context is None else torch.cat([x_identity, context], dim=-1)
        # Parameter-major output units, viewed as (batch, transformed, num_params): each parameter
        # is then a contiguous block, the layout the spline functions reduce over fastest.
        params = self.conditioner(inputs).to(x_identity.dtype)  # float32 under bf16 autocast
        return params.view(-1, self.transformer.num_params, self.num_transformed).transpose(1, 2)

    def _couple(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        x_identity = x.index_select(-1, self.identity_index)
        params = self._params(x_identity, context)
        x_transform = x.index_select(-1, self.transform_index)
        method = self.transformer.inverse if inverse else self.transformer.forward
        y_transform, log_det = method(x_transform, params)
        y = torch.empty_like(x)
        y[:, self.identity_index] = x_identity
        y[:, self.transform_index] = y_transform
        return y, log_det.sum(-1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, context, inverse=True)
