"""Fixed elementwise maps between constrained domains and the real line: ``Sigmoid``, ``Logit``
and ``Softplus``. They have no parameters; flows use them to model bounded or positive data.

Each is written with the stable forms of its functions (``log1p``, ``expm1``, ``logsigmoid``) so
that large and tiny inputs keep full precision, and clamps keep saturated values inside the open
domain where the next map would otherwise return an infinity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkit.bijectors.base import Bijector


def _into_unit_interval(y: Tensor) -> Tensor:
    """Clamp onto the floats strictly inside (0, 1). A sigmoid saturates to exactly 0 or 1 in
    finite precision (beyond about +/-37 in float64, +/-17 in float32), and the logit of either is
    infinite; the nearest interior float maps to the largest finite logit instead."""
    finfo = torch.finfo(y.dtype)
    return y.clamp(finfo.tiny, 1 - finfo.eps / 2)


def _logit(y: Tensor) -> Tensor:
    return torch.log(y) - torch.log1p(-y)


def _log_sigmoid_derivative(x: Tensor) -> Tensor:
    """``log(sigmoid(x) * sigmoid(-x))``, the log-derivative of the sigmoid, without cancellation."""
    return F.logsigmoid(x) + F.logsigmoid(-x)


def _softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x))`` exactly. ``F.softplus`` returns ``x`` itself above ``threshold=20``, an
    error of ``exp(-20) ~ 2e-9`` that would break float64 invertibility."""
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


class Sigmoid(Bijector):
    """``z = sigmoid(x)``: maps the real line onto ``(0, 1)``.

    Example:
        >>> import torch
        >>> z, log_det = Sigmoid()(torch.zeros(2, 3))
        >>> z[0].tolist(), round(log_det[0].item(), 4)  # 3 * log(1/4)
        ([0.5, 0.5, 0.5], -4.1589)
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return torch.sigmoid(x), _log_sigmoid_derivative(x).sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = _into_unit_interval(z)
        return _logit(z), -(torch.log(z) + torch.log1p(-z)).sum(-1)


class Logit(Bijector):
    """``z = logit(alpha + (1 - 2 alpha) x)``: maps ``(0, 1)`` onto the real line.

    The squeeze by ``alpha`` (RealNVP's and MAF's preprocessing of data in ``[0, 1]``) keeps
    inputs at exactly 0 or 1 finite. With ``alpha = 0`` it is the inverse of ``Sigmoid``.

    Args:
        alpha: squeeze, in ``[0, 0.5)``.

    Example:
        >>> import torch
        >>> layer = Logit(alpha=0.05)
        >>> z, log_det = layer(torch.tensor([[0.0, 0.5, 1.0]]))
        >>> [round(v, 4) for v in z[0].tolist()]
        [-2.9444, 0.0, 2.9444]
    """

    def __init__(self, alpha: float = 0.0) -> None:
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha
        self._log_squeeze = math.log1p(-2 * alpha)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        squeezed = _into_unit_interval(self.alpha + (1 - 2 * self.alpha) * x)
        log_det = self._log_squeeze - torch.log(squeezed) - torch.log1p(-squeezed)
        return _logit(squeezed), log_det.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)
        return x, (_log_sigmoid_derivative(z) - self._log_squeeze).sum(-1)


class Softplus(Bijector):
    """Positive data to the real line: ``z = log(exp(x) - 1)`` (the inverse softplus); the
    inverse is ``x = softplus(z) = log(1 + exp(z))``.

    The forward is computed as ``x + log(-expm1(-x))``, exact for tiny ``x`` (where it is about
    ``log x``) and for large ``x`` (where ``exp(x)`` would overflow and ``z`` is about ``x``).

    Example:
        >>> import torch
        >>> layer = Softplus()
        >>> x = torch.tensor([[1e-30, 1.0, 1e6]], dtype=torch.float64)
        >>> z, log_det = layer(x)
        >>> torch.allclose(layer.inverse(z)[0], x, rtol=1e-12, atol=0)
        True
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # The domain is x > 0; the clamp turns x = 0 (or underflowed data) into the smallest
        # normal float, whose image is finite (about -708 in float64, -87 in float32).
        x = x.clamp(min=torch.finfo(x.dtype).tiny)
        log_one_minus_exp = torch.log(-torch.expm1(-x))  # log(1 - exp(-x)) <= 0
        return x + log_one_minus_exp, -log_one_minus_exp.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # softplus(z) underflows to 0 below about -745 (float64); the clamp keeps the output
        # inside the domain, so that a forward pass on it stays finite.
        x = _softplus(z).clamp(min=torch.finfo(z.dtype).tiny)
        return x, F.logsigmoid(z).sum(-1)
