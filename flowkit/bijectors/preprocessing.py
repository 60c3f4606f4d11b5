"""Preprocessing layers of tabular models, at the data end of the chain: ``Dequantize`` (integer
columns) and ``Bounds`` (columns with a lower and/or upper bound), and ``make_preprocessing``,
which builds them from the JSON-able spec stored in a model's config.

Both are bijectors of the usual contract, so a model's ``log_prob`` is already in the units of
the data: the log-Jacobian of every preprocessing step is part of it, with no second path.

``Dequantize`` is the one stochastic layer. In training mode it adds fresh uniform noise in
``[0, 1)`` cell widths to its columns, so the flow fits the density of the dequantised variable
``v = k + u`` (Uria et al., 2013; Theis et al., 2016); ``E_u log p(k + u)`` is a lower bound on
``log P(k)``. In eval mode it adds half a cell, so ``log_prob`` is the density at the cell's
centre: deterministic, what validation and ``score --cells density`` use. Its inverse maps any
value to the start of its cell, so samples are whole numbers. The probability of a cell,
``P(k) = E_u p(k + u)``, is estimated by importance sampling over the noise
(``flowkit.scoring.log_density`` with ``cells="probability"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from flowkit.bijectors.base import Bijector, Chain, zero_log_det
from flowkit.bijectors.elementwise import _into_unit_interval, _log_sigmoid_derivative, _logit, _softplus


class Dequantize(Bijector):
    """Integer columns to continuous ones: ``v = k + u`` with ``u ~ U[0, 1)`` (training mode) or
    ``u = 1/2`` (eval mode), in cells of width 1 starting at the integers. The map is a shift, so
    its log-det is zero; the inverse is ``floor``, which sends a whole cell back to its integer.

    Args:
        features: width of the rows.
        columns: indices of the integer columns (the others pass through unchanged).

    Example:
        >>> import torch
        >>> layer = Dequantize(2, columns=[1]).eval()
        >>> layer(torch.tensor([[0.3, 4.0]]))[0].tolist()
        [[0.30000001192092896, 4.5]]
        >>> layer.inverse(torch.tensor([[0.3, 4.99]]))[0].tolist()
        [[0.30000001192092896, 4.0]]
    """

    def __init__(self, features: int, columns: Sequence[int]) -> None:
        super().__init__()
        columns = sorted(set(int(column) for column in columns))
        if not columns or columns[0] < 0 or columns[-1] >= features:
            raise ValueError(f"dequantised columns must be distinct indices in 0..{features - 1}, got {columns}")
        self.features = features
        self.columns = columns
        mask = torch.zeros(features)
        mask[columns] = 1.0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        noise = torch.rand_like(x) if self.training else torch.full_like(x, 0.5)
        return x + noise * self.mask, zero_log_det(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return torch.where(self.mask.bool(), torch.floor(z), z), zero_log_det(z)


class Bounds(Bijector):
    """Bounded columns to the real line, column by column:

    - two-sided ``[lo, hi]``: ``z = logit((x - lo) / (hi - lo))``;
    - lower only: ``z = softplus^-1((x - lo) / scale)``;
    - upper only: ``z = softplus^-1((hi - x) / scale)``;
    - neither: ``z = x``.

    ``scale`` (a column's spread, in its units) makes the softplus act where the data are: on
    ``(x - lo) / scale`` it is about a log near the bound and about the identity far from it,
    whatever the column's units. The inverse never leaves the bounds (saturated values land on
    them, not beyond); values on a bound are moved to the nearest interior float, so they score
    finitely.

    Args:
        lower, upper: per column, the bound or None.
        scale: per column, the softplus scale (ignored for two-sided and unbounded columns).

    Example:
        >>> import torch
        >>> layer = Bounds(lower=[0.0, 0.0, None], upper=[1.0, None, None], scale=[1.0, 2.0, 1.0])
        >>> x = torch.tensor([[0.25, 3.0, -7.0]], dtype=torch.float64)
        >>> z, log_det = layer(x)
        >>> torch.allclose(layer.inverse(z)[0], x)
        True
    """

    def __init__(self, lower: Sequence[float | None], upper: Sequence[float | None],
                 scale: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(lower) != len(upper) or (scale is not None and len(scale) != len(lower)):
            raise ValueError("lower, upper and scale need one entry per column")
        scale = [1.0] * len(lower) if scale is None else [float(s) for s in scale]
        for index, (lo, hi, s) in enumerate(zip(lower, upper, scale)):
            if lo is not None and hi is not None and not lo < hi:
                raise ValueError(f"column {index}: lower bound {lo} is not below upper bound {hi}")
            if not (s > 0 and math.isfinite(s)):
                raise ValueError(f"column {index}: scale must be positive, got {s}")
        self.features = len(lower)
        self.lower_bounds = [None if lo is None else float(lo) for lo in lower]
        self.upper_bounds = [None if hi is None else float(hi) for hi in upper]
        kinds = [(lo is not None) + 2 * (hi is not None) for lo, hi in zip(lower, upper)]  # 0 none 1 lo 2 hi 3 both
        self.register_buffer("both", torch.tensor([k == 3 for k in kinds]), persistent=False)
        self.register_buffer("lower_only", torch.tensor([k == 1 for k in kinds]), persistent=False)
        self.register_buffer("upper_only", torch.tensor([k == 2 for k in kinds]), persistent=False)
        # Placeholders where a column has no such bound keep the arithmetic finite; torch.where
        # discards those lanes.
        self.register_buffer("lo", torch.tensor([0.0 if lo is None else lo for lo in lower], dtype=torch.float64),
                             persistent=False)
        self.register_buffer("hi", torch.tensor([1.0 if hi is None else hi for hi in upper], dtype=torch.float64),
                             persistent=False)
        width = [hi - lo if lo is not None and hi is not None else s for lo, hi, s in zip(lower, upper, scale)]
        self.register_buffer("width", torch.tensor(width, dtype=torch.float64), persistent=False)

    def _constants(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return (self.lo.to(like.dtype), self.hi.to(like.dtype), self.width.to(like.dtype))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lo, hi, width = self._constants(x)
        # Distance from the bound in units of width (the interval for two-sided columns).
        distance = torch.where(self.upper_only, hi - x, x - lo) / width
        unit = _into_unit_interval(distance)
        logit = _logit(unit)
        positive = distance.clamp(min=torch.finfo(x.dtype).tiny)
        log_one_minus_exp = torch.log(-torch.expm1(-positive))
        inverse_softplus = positive + log_one_minus_exp
        z = torch.where(self.both, logit, torch.where(self.lower_only | self.upper_only, inverse_softplus, x))
        log_det = torch.where(self.both, -torch.log(unit) - torch.log1p(-unit) - torch.log(width),
                              torch.where(self.lower_only | self.upper_only, -log_one_minus_exp - torch.log(width),
                                          torch.zeros_like(x)))
        return z, log_det.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lo, hi, width = self._constants(z)
        sigmoid = torch.sigmoid(z)
        softplus = _softplus(z).clamp(min=torch.finfo(z.dtype).tiny)
        two_sided = (lo + width * sigmoid).clamp(min=lo, max=hi)  # rounding must not step past a bound
        from_lower = torch.maximum(lo + width * softplus, lo)
        from_upper = torch.minimum(hi - width * softplus, hi)
        x = torch.where(self.both, two_sided,
                        torch.where(self.lower_only, from_lower, torch.where(self.upper_only, from_upper, z)))
        log_det = torch.where(self.both, _log_sigmoid_derivative(z) + torch.log(width),
                              torch.where(self.lower_only | self.upper_only,
                                          torch.nn.functional.logsigmoid(z) + torch.log(width), torch.zeros_like(z)))
        return x, log_det.sum(-1)


def make_preprocessing(spec: Sequence[dict[str, Any]], features: int) -> list[Bijector]:
    """The layers a JSON-able ``spec`` describes, in data-to-latent order.

    Each entry is ``{"layer": "dequantize", "columns": [...]}`` or
    ``{"layer": "bounds", "lower": [...], "upper": [...], "scale": [...]}`` (one entry per
    column, None where a column has no such bound).

    Example:
        >>> layers = make_preprocessing([{"layer": "dequantize", "columns": [0]},
        ...                              {"layer": "bounds", "lower": [0.0, None], "upper": [None, None],
        ...                               "scale": [1.0, 1.0]}], features=2)
        >>> [type(layer).__name__ for layer in layers]
        ['Dequantize', 'Bounds']
    """
    layers: list[Bijector] = []
    for entry in spec:
        kind = entry.get("layer") if isinstance(entry, dict) else None
        if kind == "dequantize":
            layers.append(Dequantize(features, entry["columns"]))
        elif kind == "bounds":
            layer = Bounds(entry["lower"], entry["upper"], entry.get("scale"))
            if layer.features != features:
                raise ValueError(f"bounds describe {layer.features} columns, the flow has {features}")
            layers.append(layer)
        else:
            raise ValueError(f"unknown preprocessing layer {entry!r}")
    return layers


def preprocessing_layers(flow: torch.nn.Module) -> list[Bijector]:
    """The preprocessing layers at the data end of a flow's chain (empty when it has none)."""
    chain = getattr(flow, "bijector", None)
    if not isinstance(chain, Chain):
        return []
    layers = []
    for layer in chain.bijectors:
        if not isinstance(layer, (Dequantize, Bounds)):
            break
        layers.append(layer)
    return layers


def dequantizers(flow: torch.nn.Module) -> list[Dequantize]:
    """The flow's ``Dequantize`` layers (to switch their noise on for cell probabilities)."""
    return [module for module in flow.modules() if isinstance(module, Dequantize)]
