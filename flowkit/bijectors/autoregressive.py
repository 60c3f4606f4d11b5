"""Masked autoregressive structure: MADE conditions an elementwise transform of every feature.

``MaskedAutoregressive(Affine())`` is MAF, ``Inverse(MaskedAutoregressive(Affine()))`` is IAF and
``MaskedAutoregressive(RationalQuadraticSpline())`` is NSF-AR. ``forward`` (data to latent, the
density direction) is one MADE pass. ``inverse`` is sequential in the features, but it computes
each hidden unit of MADE exactly once (:func:`solve`), so sampling costs about one forward pass
of arithmetic in ``features`` small steps, instead of the ``features`` full passes of
:meth:`MaskedAutoregressive.inverse_reference` (what nflows and zuko do).

How the inverse works. MADE's hidden units are sorted by degree, so the units of degree ``d`` are
a contiguous slice of each layer (``made.bounds``). Feature ``k`` in the order needs the units of
degree ``< k``; when feature ``k - 1`` becomes known, the only new units are those of degree
``k - 1``. Step ``k`` computes that slice in every layer from the cached earlier activations, then
the ``num_params`` outputs of feature ``k``, then inverts feature ``k``. Activations are kept
transposed, ``(units, batch)``, so that a slice of units is a block of contiguous rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit.bijectors.base import Bijector
from flowkit.bijectors.transformers import Transformer
from flowkit.nn import MADE


class MaskedAutoregressive(Bijector):
    """``z_i = tau(x_i; MADE(x_{<i}, context)_i)`` for an elementwise transformer ``tau``.

    Args:
        transformer: the elementwise transformer (``Affine()``, a spline, ...).
        features: number of features.
        context_features: width of the context vector, 0 for none.
        hidden_features: MADE's hidden widths (an int means two layers of that width).
        order: None (natural order), ``'random'`` (seeded by ``seed``) or MADE's input degrees,
            a permutation of ``1..features``.
        seed: seeds the random order.
        residual: residual connections between MADE's hidden layers (equal widths).

    Example:
        >>> import torch
        >>> from flowkit.bijectors.transformers import Affine
        >>> layer = MaskedAutoregressive(Affine(), features=3, context_features=2, hidden_features=16)
        >>> x, context = torch.randn(4, 3), torch.randn(4, 2)
        >>> z, log_det = layer(x, context)
        >>> x_back, inverse_log_det = layer.inverse(z, context)
        >>> torch.allclose(x_back, x), torch.allclose(inverse_log_det, -log_det)
        (True, True)
    """

    def __init__(
        self,
        transformer: Transformer,
        features: int,
        context_features: int = 0,
        hidden_features: int | Sequence[int] = 64,
        order: str | Sequence[int] | None = None,
        seed: int = 0,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.features = features
        self.context_features = context_features
        self.made = MADE(features, transformer.num_params, hidden_features, context_features,
                         order=order, seed=seed, residual=residual)
        self._workspace: _Workspace | None = None

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, log_det = self.transformer.forward(x, self.made(x, context))
        return z, log_det.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Sequential inverse computing every MADE unit once (see :func:`solve`).

        When no gradient is needed (sampling, or a frozen model) it reuses a workspace of
        buffers and precomputed weight views, rebuilt only when the batch size, dtype, device or
        parameter storage changes.
        """
        if torch.is_grad_enabled() and (
            z.requires_grad
            or (context is not None and context.requires_grad)
            or any(parameter.requires_grad for parameter in self.made.parameters())
        ):
            return solve(self.made, z, self.transformer.inverse, context)
        key = _Workspace.key(self.made, z, context)
        if self._workspace is None or self._workspace.key_ != key:
            self._workspace = _Workspace(self.made, z, context is not None)
        return self._workspace.solve(z, self.transformer.inverse, context)

    def inverse_reference(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The plain inverse: ``features`` full MADE passes, each fixing one more feature.

        After pass ``k`` the first ``k`` features in the order are exact, because their
        parameters depend only on earlier ones. Slow (``features`` times the work of
        ``forward``); kept as the oracle that tests compare :meth:`inverse` against.
        """
        x = torch.zeros_like(z)
        log_det = z.new_zeros(z.shape[0])
        for _ in range(self.features):
            x, log_det = self.transformer.inverse(z, self.made(x, context))
        return x, log_det.sum(-1)


Step = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def solve(made: MADE, target: Tensor, step: Step, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Solve ``x[:, i] = step(target[:, i], made(x, context)[:, i])[0]`` for every feature.

    Differentiable, one unit computed once (see the module docstring). With gradients the
    activations grow by concatenation, since writing into a buffer that earlier steps read would
    invalidate the tensors autograd saved; ``MaskedAutoregressive.inverse`` uses an in-place
    workspace when gradients are off.

    Args:
        made: the autoregressive network.
        target: ``(batch, features)`` values to invert.
        step: maps ``(target column (batch,), params (batch, num_params))`` to
            ``(x column, log-det column)``, e.g. a transformer's ``inverse``.
        context: ``(batch, context_features)`` or None.

    Returns:
        ``x`` of shape ``(batch, features)`` and the summed log-det of ``step``, ``(batch,)``.

    Example:
        >>> import torch
        >>> from flowkit.bijectors.transformers import Affine
        >>> made = MADE(3, num_params=2, hidden_features=8)
        >>> x, log_det = solve(made, torch.ones(2, 3), Affine().inverse)
        >>> torch.allclose(x, torch.ones(2, 3))  # a fresh MADE outputs zeros: the identity
        True
    """
    features, num_params = made.features, made.num_params
    index = made.order_index
    first = made.layers[0]
    # Sorted copies of the weights: first-layer columns and output rows in the order.
    weights = [first.weight[:, :features][:, index]] + [layer.weight for layer in made.layers[1:]]
    biases = [layer.bias[:, None] for layer in made.layers]
    if context is not None:
        biases[0] = F.linear(context, first.weight[:, features:], first.bias).t()
    weight_out = made.output.weight.view(features, num_params, -1)[index]
    bias_out = made.output.bias.view(features, num_params, 1)[index]
    target_rows = target.t()[index]
    x_rows = target.new_empty(0, target.shape[0])
    activations = [target.new_empty(0, target.shape[0]) for _ in made.layers]
    total = target.new_zeros(target.shape[0])
    for k in range(features):
        below = x_rows
        for number, bounds in enumerate(made.bounds):
            start, end = bounds[k]
            if start < end:
                unit = made.activation(torch.addmm(biases[number][start:end],
                                                   weights[number][start:end, :below.shape[0]], below))
                if made.residual and number > 0:
                    unit = unit + below[start:end]
                activations[number] = torch.cat([activations[number], unit])
            below = activations[number]
        params = torch.addmm(bias_out[k], weight_out[k, :, :below.shape[0]], below)
        x_k, log_det = step(target_rows[k], params.t())
        x_rows = torch.cat([x_rows, x_k[None]])
        total = total + log_det
    return x_rows[torch.argsort(index)].t().contiguous(), total


class _Workspace:
    """Preallocated buffers and every per-step view, for gradient-free inversion at one shape.

    All weight operands are views of the parameters (no copies), so the workspace stays valid
    when the parameters are updated in place (optimiser steps, ``load_state_dict``). Views need
    contiguous slices, so the first layer reads all ``features`` inputs, kept in their own
    columns with the unknown ones at zero (a unit of degree ``d`` has zero weight only on inputs
    of degree ``> d``, which are exactly the unknown ones when it is computed): the first layer
    is the narrowest, so this costs little.
    """

    def __init__(self, made: MADE, like: Tensor, with_context: bool) -> None:
        self.key_ = self.key(made, like, like if with_context else None)
        self.made = made
        batch, features = like.shape[0], made.features
        new = like.new_empty
        self.x_rows = new(features, batch)
        self.activations = [new(layer.out_features, batch) for layer in made.layers]
        self.context_bias = new(made.layers[0].out_features, batch) if with_context else None
        self.features = [int(feature) for feature in made.order_index]
        self.in_place_relu = isinstance(made.activation, nn.ReLU)
        weight_out = made.output.weight.view(features, made.num_params, -1)
        bias_out = made.output.bias.view(features, made.num_params, 1)
        with torch.no_grad():
            self.steps = [self._step(k, weight_out, bias_out) for k in range(features)]

    @staticmethod
    def key(made: MADE, like: Tensor, context: Tensor | None) -> tuple:
        storage = tuple(parameter.data_ptr() for parameter in made.parameters())
        # Tensors made under inference_mode may not be written outside it: rebuild on a switch.
        mode = torch.is_inference_mode_enabled()
        return like.shape[0], like.dtype, like.device, context is not None, mode, storage

    def _step(self, k: int, weight_out: Tensor, bias_out: Tensor) -> tuple:
        made, operations = self.made, []
        below, width = self.x_rows, made.features  # the first layer reads every input column
        for number, (layer, bounds) in enumerate(zip(made.layers, made.bounds)):
            start, end = bounds[k]
            if start < end:
                bias = layer.bias[start:end, None]
                if number == 0 and self.context_bias is not None:
                    bias = self.context_bias[start:end]
                residual = below[start:end] if made.residual and number > 0 else None
                operations.append((self.activations[number][start:end], layer.weight[start:end, :width],
                                   bias, below[:width], residual))
            below, width = self.activations[number], end
        feature = self.features[k]
        return feature, operations, (weight_out[feature, :, :width], bias_out[feature], below[:width])

    def solve(self, target: Tensor, step: Step, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if context is not None:
            first = self.made.layers[0]
            self.context_bias.copy_(F.linear(context, first.weight[:, self.made.features:], first.bias).t())
        self.x_rows.zero_()
        total = target.new_zeros(target.shape[0])
        for feature, operations, (weight, bias, inputs) in self.steps:
            for out, layer_weight, layer_bias, layer_inputs, residual in operations:
                torch.addmm(layer_bias, layer_weight, layer_inputs, out=out)
                if self.in_place_relu:
                    out.clamp_(min=0)
                else:
                    out.copy_(self.made.activation(out))
                if residual is not None:
                    out += residual
            params = torch.addmm(bias, weight, inputs)
            x_k, log_det = step(target[:, feature], params.t())
            self.x_rows[feature] = x_k
            total += log_det
        return self.x_rows.t().clone(memory_format=torch.contiguous_format), total
