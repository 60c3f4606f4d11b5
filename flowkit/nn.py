"""Conditioner networks: a plain MLP (coupling layers) and MADE (autoregressive layers).

Every conditioner's output layer starts at zero, so the transformer it feeds starts at its
identity parameters and every layer starts as the identity map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit.masked_products import BlockedMADE, Groups, chunk_groups


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
        # Derived from the degrees, so not part of the state: copies of the state (checkpoints,
        # best and roll-back weights) would otherwise hold a second matrix of the weight's size.
        self.register_buffer("mask", allowed.to(self.weight.dtype), persistent=False)
        self.register_buffer("degrees", out_degrees.clone())
        self._register_load_state_dict_pre_hook(_take_saved_mask, with_module=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def _take_saved_mask(layer: MaskedLinear, state_dict: dict, prefix: str, *args: object) -> None:
    """States written before the mask was derived hold it: it is used, and leaves the state."""
    saved = state_dict.pop(prefix + "mask", None)
    if saved is not None:
        with torch.no_grad():
            layer.mask.copy_(saved)


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
    contiguous slice, which is what the one-pass autoregressive inverse steps through.
    """
    low = 0 if context_features or features == 1 else 1
    return torch.sort(torch.arange(width) % (features - low) + low).values


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al., 2015).

    Output ``(batch, features, num_params)``: the parameters of feature ``i`` depend only on
    inputs earlier in the order (lower degree) and on the context. Output units are laid out
    parameter-major (unit ``p * features + i`` is parameter ``p`` of feature ``i``), so the output
    is a transposed view whose parameters are each one contiguous block, the layout that the
    spline functions reduce over fastest. Hidden units are sorted by
    degree (``bounds[layer][d]`` is the slice of units of degree ``d``), so that
    ``flowkit.bijectors.autoregressive_solve`` can invert an autoregressive transform computing
    every unit once.

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

    # Groups of units per layer in the block-triangular products (flowkit.masked_products): 4 do
    # 62% of the dense work in 4 products a layer. They pay where the groups stay large: measured
    # on one CPU thread (CPU time, MADE forward + backward, batch 512, hidden 256, 256) a 43-feature
    # spline MADE (989 outputs) took 17.8 ms against 21.4 dense, while any 6-feature MADE came out
    # even (7.3 vs 7.0 ms): small products run below the matmul rate and each group adds Python
    # dispatch. So ``plan`` is built only with 8 or more features.
    blocks = 4
    # A narrow output layer (an affine MADE, 2 outputs a feature) pays with 2 groups (75% of the
    # work) and on one CPU thread only. Measured (AMD EPYC, MAF of 43 features, 5 x [256, 256],
    # batch 512, medians of 10 steps in 3 rounds): one thread trains in 56.5-57.5 ms against
    # 62.4-65.2 dense and scores in 18.1-18.6 against 19.5-20.4 ms; on two threads the smaller
    # products split worse between the threads and it lost (42.7-43.6 against 40.6-43.4 ms,
    # 13.3-14.0 against 11.7-12.8). It also lost with hidden layers of 128 (27.9 against 25.2 ms;
    # even at batch 2048) and at batches under 512 (128: 24.3 against 22.2 ms; 256: even), and
    # gained 1.14-1.18x at batches of 1024 and 4096. Hence: hidden widths of 256 or more, batches
    # of 512 or more, one CPU thread.
    narrow_blocks = 2

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
        self.output = MaskedLinear(previous, degrees.repeat(num_params), strict=True)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        # Per layer, per degree d: the slice [start, end) of the units of degree d. Static, so
        # the autoregressive inverse does no index arithmetic per step.
        self.bounds = [[_degree_slice(layer.degrees, d) for d in range(features)] for layer in layers]
        # A wide output layer: at least twice the widest hidden layer (a spline MADE's).
        self.wide_output = features * num_params >= 2 * max(widths)
        blockable = (features >= 8 and self.natural_order and isinstance(self.activation, nn.ReLU)
                     and (self.wide_output or min(widths) >= 256))
        self.plan = _block_plan(self, degrees, self.blocks if self.wide_output else self.narrow_blocks) \
            if blockable else None

    def blocked(self, x: Tensor) -> bool:
        """Whether ``forward`` runs the block-triangular products of ``flowkit.masked_products``:
        in the natural order with ReLU, outside ``torch.compile`` (which fuses the dense masked
        graph itself) and outside autocast (whose casts the hand-written backward does not make);
        for a narrow output layer, only on one CPU thread and batches of 512 or more (see
        ``narrow_blocks``)."""
        return (self.plan is not None and not torch.compiler.is_compiling()
                and not torch.is_autocast_enabled(x.device.type)
                and (self.wide_output or (x.device.type == "cpu" and torch.get_num_threads() == 1
                                          and x.shape[0] >= 512)))

    def forward_transposed(self, xT: Tensor, context: Tensor | None = None) -> Tensor:
        """The outputs as ``(num_params, features, batch)`` (contiguous) from ``xT``
        ``(features, batch)``, through the block-triangular products (needs ``blocked``)."""
        first = self.layers[0]
        if context is None:
            tensors = [first.weight, first.bias[:, None], first.mask]
        else:  # context inputs have degree 0: every hidden unit sees them, unmasked
            bias = F.linear(context, first.weight[:, self.features:], first.bias).t()
            tensors = [first.weight[:, :self.features], bias, first.mask[:, :self.features]]
        for layer in self.layers[1:]:
            tensors += [layer.weight, layer.bias[:, None], layer.mask]
        output = self.output
        tensors += [output.weight, output.bias.view(self.num_params, self.features, 1), output.mask]
        return BlockedMADE.apply(xT, self.plan, self.residual, *tensors)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.blocked(x):
            return self.forward_transposed(x.t().contiguous(), context).permute(2, 1, 0)
        h = x if context is None else torch.cat([x, context], dim=-1)
        for index, layer in enumerate(self.layers):
            a = self.activation(layer(h))
            h = h + a if self.residual and index > 0 else a
        return self.output(h).view(-1, self.num_params, self.features).transpose(1, 2)

    def by_feature(self, rows: Tensor) -> Tensor:
        """A view of a tensor indexed by output unit, ``(features * num_params, ...)`` (the output
        layer's weight, bias or mask), as ``(features, num_params, ...)``: the one place that
        knows the parameter-major order of the output units."""
        return rows.view(self.num_params, self.features, *rows.shape[1:]).transpose(0, 1)


def _block_plan(made: MADE, input_degrees: Tensor, groups: int | None = None) -> list[Groups]:
    """Per hidden layer, then the output layer (rows = features), the groups of output units and
    the prefix of (degree-sorted) inputs each group sees (``groups`` of them, ``made.blocks`` by
    default); see ``flowkit.masked_products``."""
    groups = groups or made.blocks
    plan = []
    previous = torch.sort(input_degrees).values
    for layer in made.layers:
        degrees = layer.degrees
        plan.append(chunk_groups(len(degrees), groups, lambda row, d=degrees, p=previous:
                                 int(torch.searchsorted(p, d[row], right=True))))
        previous = degrees
    # Output feature ``i`` (natural order: degree ``i + 1``) sees hidden degrees ``<= i``.
    plan.append(chunk_groups(made.features, groups,
                             lambda row, p=previous: int(torch.searchsorted(p, row, right=True))))
    return plan


def _degree_slice(degrees: Tensor, degree: int) -> tuple[int, int]:
    """``[start, end)`` of the units of ``degree`` in a sorted degree vector."""
    return int(torch.searchsorted(degrees, degree)), int(torch.searchsorted(degrees, degree, right=True))
