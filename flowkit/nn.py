"""Conditioner networks: a plain MLP (coupling layers) and MADE (autoregressive layers).

Every conditioner's output layer starts at zero, so the transformer it feeds starts at its
identity parameters and every layer starts as the identity map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def hidden_sizes(hidden_features: int | Sequence[int]) -> list[int]:
    """An int means two hidden layers of that width; a sequence gives each width."""
    if isinstance(hidden_features, int):
        return [hidden_features, hidden_features]
    sizes = [int(h) for h in hidden_features]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"hidden_features must be positive widths, got {hidden_features}")
    return sizes


class MLP(nn.Module):
    """Fully connected network with a zero-initialised output layer.

    Args:
        in_features: input width.
        out_features: output width.
        hidden_features: an int (two layers of that width) or a sequence of widths.
        activation: activation module class placed after each hidden layer.

    Example:
        >>> import torch
        >>> net = MLP(3, 4, hidden_features=8)
        >>> net(torch.randn(2, 3)).abs().sum().item()
        0.0
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int | Sequence[int] = 64,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden_sizes(hidden_features):
            layers += [nn.Linear(width, size), activation()]
            width = size
        output = nn.Linear(width, out_features)
        nn.init.zeros_(output.weight)
        nn.init.zeros_(output.bias)
        layers.append(output)
        self.network = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask built from degrees.

    Output unit ``k`` sees input ``j`` when ``out_degrees[k] >= in_degrees[j]`` (hidden layers)
    or ``out_degrees[k] > in_degrees[j]`` (output layer, ``strict=True``).

    Example:
        >>> import torch
        >>> layer = MaskedLinear(torch.tensor([1, 2]), torch.tensor([1, 2]), strict=True)
        >>> layer.mask.tolist()
        [[0.0, 0.0], [1.0, 0.0]]
    """

    def __init__(self, in_degrees: Tensor, out_degrees: Tensor, strict: bool = False) -> None:
        super().__init__(len(in_degrees), len(out_degrees))
        allowed = out_degrees[:, None] > in_degrees if strict else out_degrees[:, None] >= in_degrees
        self.register_buffer("mask", allowed.to(self.weight.dtype))
        self.register_buffer("degrees", out_degrees.clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def input_degrees(features: int, order: str | Sequence[int] | None, seed: int) -> Tensor:
    """Degrees ``1..features`` of the inputs: natural (None), ``'random'`` (seeded) or given."""
    if order is None:
        return torch.arange(1, features + 1)
    if isinstance(order, str):
        if order != "random":
            raise ValueError(f"order must be None, 'random' or a sequence, got {order!r}")
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(features, generator=generator) + 1
    degrees = torch.as_tensor(order, dtype=torch.long)
    if not torch.equal(torch.sort(degrees).values, torch.arange(1, features + 1)):
        raise ValueError(f"order must be a permutation of 1..{features}, got {degrees.tolist()}")
    return degrees


def hidden_degrees(width: int, features: int, context_features: int) -> Tensor:
    """Sorted (non-decreasing) degrees of a hidden layer, spread evenly like nflows' ``arange % D``.

    Degrees run over ``1..D-1``, or ``0..D-1`` with a context: degree-0 units see only the
    context, so even the first feature's parameters depend on it. Every degree below ``D`` can
    reach an output (the last feature has degree ``D``). Sorting makes units of one degree a
    contiguous slice, which is what the one-pass inverse (``MADE.solve``) steps through.
    """
    low = 0 if context_features or features == 1 else 1
    return torch.sort(torch.arange(width) % (features - low) + low).values


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al., 2015).

    Output ``(batch, features, num_params)``: the parameters of feature ``i`` depend only on
    inputs earlier in the order (lower degree) and on the context. Hidden units are sorted by
    degree, so :meth:`solve` can invert an autoregressive transform computing every unit once.

    Args:
        features: number of autoregressive inputs ``D``.
        num_params: outputs per feature.
        hidden_features: an int (two layers of that width) or a sequence of widths.
        context_features: width of the context, seen by every hidden unit (degree 0).
        order: None (natural order ``1..D``), ``'random'`` (seeded by ``seed``) or the degrees
            themselves, a permutation of ``1..D`` (feature ``i`` comes ``order[i]``-th).
        seed: seeds the random order.
        residual: add each hidden layer's input to its output (layers after the first; needs
            equal widths).
        activation: activation module class.

    Example:
        >>> import torch
        >>> made = MADE(3, num_params=2, hidden_features=8)
        >>> made(torch.randn(5, 3)).shape
        torch.Size([5, 3, 2])
    """

    def __init__(
        self,
        features: int,
        num_params: int,
        hidden_features: int | Sequence[int] = 64,
        context_features: int = 0,
        order: str | Sequence[int] | None = None,
        seed: int = 0,
        residual: bool = False,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        widths = hidden_sizes(hidden_features)
        if residual and len(set(widths)) != 1:
            raise ValueError(f"residual MADE needs equal hidden widths, got {widths}")
        self.features, self.num_params = features, num_params
        self.context_features, self.residual = context_features, residual
        self.activation = activation()
        degrees = input_degrees(features, order, seed)
        self.register_buffer("input_degrees", degrees)
        # Feature index of each degree: the order in which the inverse produces features.
        self.register_buffer("order_index", torch.argsort(degrees))
        self.natural_order = bool(torch.equal(degrees, torch.arange(1, features + 1)))
        previous = torch.cat([degrees, torch.zeros(context_features, dtype=torch.long)])
        layers = []
        for width in widths:
            layers.append(MaskedLinear(previous, hidden_degrees(width, features, context_features)))
            previous = layers[-1].degrees
        self.layers = nn.ModuleList(layers)
        self.output = MaskedLinear(previous, degrees.repeat_interleave(num_params), strict=True)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        # Per layer, per degree d: the slice [start, end) of the units of degree d. Static, so
        # the inverse does no index arithmetic per step.
        self._bounds = [[_degree_slice(layer.degrees, d) for d in range(features)] for layer in layers]

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = x if context is None else torch.cat([x, context], dim=-1)
        for index, layer in enumerate(self.layers):
            a = self.activation(layer(h))
            h = h + a if self.residual and index > 0 else a
        return self.output(h).view(-1, self.features, self.num_params)

    def solve(
        self,
        target: Tensor,
        step: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
        context: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Solve ``x[:, i] = step(target[:, i], MADE(x)[:, i])[0]`` for every feature, in order.

        This is the inverse of a masked autoregressive transform in about one forward pass of
        arithmetic: feature ``k`` (in the order) needs the hidden units of degree ``< k``, and the
        only units not yet computed are those of degree ``k - 1``, a contiguous slice of each
        (degree-sorted) layer. Each of the ``D`` steps computes that slice in every layer from
        the cached earlier activations, then the ``num_params`` outputs of feature ``k``. The
        context's share of the first layer is computed once up front. Without gradients the
        activations are written into preallocated buffers; with gradients they are grown by
        concatenation (in-place writes would break autograd).

        Args:
            target: ``(batch, features)`` values to invert.
            step: maps ``(target column (batch,), params (batch, num_params))`` to
                ``(x column, log-det column)``, e.g. a transformer's ``inverse``.
            context: ``(batch, context_features)`` or None.

        Returns:
            ``x`` of shape ``(batch, features)`` and the summed log-det of ``step``, ``(batch,)``.
        """
        batch, features, num_params = target.shape[0], self.features, self.num_params
        index = self.order_index
        first = self.layers[0]
        weight_first = first.weight[:, :features]
        target_sorted = target
        if not self.natural_order:
            weight_first, target_sorted = weight_first[:, index], target[:, index]
        bias_first = first.bias.expand(batch, -1)
        if context is not None:
            bias_first = torch.addmm(first.bias, context, first.weight[:, features:].t())
        # Output rows regrouped by degree: row k holds the num_params outputs of the k-th feature.
        weight_out = self.output.weight.view(features, num_params, -1)[index]
        bias_out = self.output.bias.view(features, num_params)[index]
        in_place = not torch.is_grad_enabled()
        x = _Columns(target, features, in_place)
        activations = [_Columns(target, layer.out_features, in_place) for layer in self.layers]
        total = target.new_zeros(batch)
        for k in range(features):
            below = x
            for number, (layer, acts) in enumerate(zip(self.layers, activations)):
                start, end = self._bounds[number][k]
                if start < end:
                    if number == 0:
                        pre = bias_first[:, start:end]
                        if k > 0:
                            pre = torch.addmm(pre, x.all(), weight_first[start:end, :k].t())
                    else:
                        pre = torch.addmm(layer.bias[start:end], below.all(),
                                          layer.weight[start:end, :below.filled].t())
                    unit = self.activation(pre)
                    if self.residual and number > 0:
                        unit = unit + below.all()[:, start:end]
                    acts.append(unit)
                below = acts
            if below.filled:
                params = torch.addmm(bias_out[k], below.all(), weight_out[k, :, :below.filled].t())
            else:
                params = bias_out[k].expand(batch, -1)
            x_k, log_det = step(target_sorted[:, k], params)
            x.append(x_k[:, None])
            total = total + log_det
        result = x.all()
        if not self.natural_order:
            result = result[:, torch.argsort(index)]
        return result, total


def _degree_slice(degrees: Tensor, degree: int) -> tuple[int, int]:
    """``[start, end)`` of the units of ``degree`` in a sorted degree vector."""
    return int(torch.searchsorted(degrees, degree)), int(torch.searchsorted(degrees, degree, right=True))


class _Columns:
    """A ``(batch, width)`` tensor filled left to right, block by block.

    In place (no autograd) it is a preallocated buffer; otherwise blocks are concatenated, since
    writing into a buffer that earlier steps read would invalidate their saved tensors.
    """

    def __init__(self, like: Tensor, width: int, in_place: bool) -> None:
        self.filled = 0
        self.in_place = in_place
        self.data = like.new_empty(like.shape[0], width) if in_place else like.new_empty(like.shape[0], 0)

    def append(self, block: Tensor) -> None:
        end = self.filled + block.shape[1]
        if self.in_place:
            self.data[:, self.filled:end] = block
        else:
            self.data = torch.cat([self.data, block], dim=1)
        self.filled = end

    def all(self) -> Tensor:
        return self.data[:, :self.filled] if self.in_place else self.data
