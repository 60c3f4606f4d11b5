"""The inverse of a masked autoregressive transform in one forward pass's worth of arithmetic.

Peers invert ``x_i = tau^{-1}(z_i; MADE(x_{<i})_i)`` with ``features`` full MADE passes, each
fixing one more feature. Here every hidden unit is computed exactly once. MADE's hidden units are
sorted by degree, so the units of degree ``d`` are a contiguous slice of each layer
(``made.bounds``). Step ``k`` produces the feature of degree ``k + 1``: it needs the hidden units
of degree ``<= k``, of which only those of degree ``k`` are new. So step ``k`` computes that slice
in every layer, then the ``num_params`` outputs of the feature, then inverts it. Activations are
kept transposed, ``(units, batch)``, so that a slice of units is a block of contiguous rows.

Two implementations share this plan:

* :func:`solve` is differentiable (``rsample`` through an IAF); its activations grow by
  concatenation, since writing into a buffer that earlier steps read would invalidate the tensors
  autograd saved.
* :class:`Workspace` serves sampling (no gradient) from preallocated buffers, and blocks the
  matrix products. Computed step by step, unit ``u`` reads all earlier activations in one skinny
  product (a handful of rows against up to ``width`` inputs): memory-bound, a few times slower per
  flop than a full-width product. Instead, the steps are grouped into blocks; within a block each
  step reads only the inputs produced in that block, and at the end of a block one wide product
  adds the block's contribution to every later unit's pre-activation. The arithmetic is the same,
  but most of it runs as large, efficient matrix products.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit.nn import MADE

Step = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def solve(made: MADE, target: Tensor, step: Step, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Solve ``x[:, i] = step(target[:, i], made(x, context)[:, i])[0]`` for every feature.

    Differentiable, every unit computed once (see the module docstring).

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
    features = made.features
    index = made.order_index
    first = made.layers[0]
    # Sorted copies of the weights: first-layer columns and output rows in the order.
    weights = [first.weight[:, :features][:, index]] + [layer.weight for layer in made.layers[1:]]
    biases = [layer.bias[:, None] for layer in made.layers]
    if context is not None:
        biases[0] = F.linear(context, first.weight[:, features:], first.bias).t()
    weight_out = made.by_feature(made.output.weight)[index]
    bias_out = made.by_feature(made.output.bias[:, None])[index]
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
        x_k, log_det = step(target_rows[k], params.t().to(target.dtype))  # float32 under bf16 autocast
        x_rows = torch.cat([x_rows, x_k[None]])
        total = total + log_det
    return x_rows[torch.argsort(index)].t().contiguous(), total


def block_steps(made: MADE, units: int = 32) -> int:
    """Steps per block: enough that a block's new units in the widest layer are about ``units``.

    Wider blocks make the in-block products wider (each step reads more inputs); narrower ones
    make the block updates more frequent (each rewrites every later pre-activation). Measured on
    one CPU thread (43 features, 256 units, 5 MAF layers): 32 units sampled 512 rows in 26 ms
    against 31 ms unblocked and 1024 rows in 42 against 59 ms; at 4096 rows the two were even.
    """
    per_step = max(layer.out_features for layer in made.layers) / max(made.features - 1, 1)
    return max(1, round(units / per_step))


class Workspace:
    """Buffers and a precomputed plan of views for gradient-free inversion at one shape.

    Each layer's activation buffer doubles as its pre-activation accumulator: it starts as the
    bias (and the context's contribution), block updates add the finished blocks' contributions
    to the rows of later units, and step ``k`` adds the in-block part to its own rows and applies
    the activation in place. The output accumulator works the same way, one ``num_params`` row
    group per step. The plan holds views into these buffers and into the parameters (the first
    layer's input columns and the output rows are re-gathered in step order on every call, so
    in-place parameter updates are seen); the workspace is rebuilt only when the key changes.

    Args:
        made: the network to invert.
        like: a ``(batch, features)`` tensor with the batch size, dtype and device to serve.
        with_context: whether calls pass a context.
        block: steps per block (default :func:`block_steps`).
    """

    def __init__(self, made: MADE, like: Tensor, with_context: bool, block: int | None = None) -> None:
        self.key_ = self.key(made, like, like if with_context else None)
        self.made = made
        self.block = block or block_steps(made)
        batch, features, num_params = like.shape[0], made.features, made.num_params
        new = like.new_empty
        self.x_rows = new(features, batch)  # in step order
        self.activations = [new(layer.out_features, batch) for layer in made.layers]
        self.output = new(features * num_params, batch)  # (step, parameter) rows
        self.first_weight = new(made.layers[0].out_features, features)  # input columns in step order
        self.output_weight = new(features * num_params, made.output.in_features)
        self.output_bias = new(features * num_params, 1)
        self.in_place_relu = isinstance(made.activation, nn.ReLU)
        with torch.no_grad():
            self.plan = [self._plan_step(k) for k in range(features)]

    @staticmethod
    def key(made: MADE, like: Tensor, context: Tensor | None) -> tuple:
        storage = tuple(parameter.data_ptr() for parameter in made.parameters())
        # Tensors made under inference_mode may not be written outside it: rebuild on a switch.
        mode = torch.is_inference_mode_enabled()
        return like.shape[0], like.dtype, like.device, context is not None, mode, storage

    def _layer_inputs(self, number: int, first_step: int, last_step: int) -> tuple[Tensor, Tensor, int, int]:
        """Weight columns and input rows of layer ``number`` for the inputs produced in steps
        ``first_step..last_step`` (the x rows before step ``last_step``, or the units of those
        degrees in the layer below); the weight is then sliced by output rows."""
        if number == 0:
            low, high = first_step, last_step  # x row r is produced by step r, read from step r + 1
            return self.first_weight, self.x_rows, low, high
        bounds = self.made.bounds[number - 1]
        low, high = bounds[first_step][0], bounds[last_step][1]
        return self.made.layers[number].weight, self.activations[number - 1], low, high

    def _plan_step(self, k: int) -> tuple:
        made, num_params = self.made, self.made.num_params
        first_step = k - k % self.block
        layers = []
        for number, bounds in enumerate(made.bounds):
            start, end = bounds[k]
            if start == end:
                continue
            weight, inputs, low, high = self._layer_inputs(number, first_step, k)
            product = (weight[start:end, low:high], inputs[low:high]) if low < high else None
            residual = self.activations[number - 1][start:end] if made.residual and number > 0 else None
            layers.append((self.activations[number][start:end], product, residual))
        low, high = made.bounds[-1][first_step][0], made.bounds[-1][k][1]
        rows = slice(k * num_params, (k + 1) * num_params)
        output = (self.output[rows], self.output[rows].t(), self.output_weight[rows, low:high],
                  self.activations[-1][low:high])
        updates = []
        last_in_block = k % self.block == self.block - 1
        if last_in_block and k + 1 < made.features:
            # Add this block's inputs to every later unit: units of degree > k, output rows of later steps.
            for number, bounds in enumerate(made.bounds):
                weight, inputs, low, high = self._layer_inputs(number, first_step, k + 1 if number == 0 else k)
                later = bounds[k + 1][0]
                if low < high and later < len(self.activations[number]):
                    updates.append((self.activations[number][later:], weight[later:, low:high], inputs[low:high]))
            later = (k + 1) * num_params
            low, high = made.bounds[-1][first_step][0], made.bounds[-1][k][1]
            if low < high:
                updates.append((self.output[later:], self.output_weight[later:, low:high],
                                self.activations[-1][low:high]))
        return self.x_rows[k], layers, output, updates

    def _reset(self, context: Tensor | None) -> None:
        """Accumulators to their biases; weights re-gathered in step order."""
        made, index = self.made, self.made.order_index
        first = made.layers[0]
        torch.index_select(first.weight[:, : made.features], 1, index, out=self.first_weight)
        for rows, out in ((made.output.weight, self.output_weight), (made.output.bias[:, None], self.output_bias)):
            by_feature = made.by_feature(rows)
            torch.index_select(by_feature, 0, index, out=out.view(by_feature.shape))
        if context is None:
            self.activations[0].copy_(first.bias[:, None])
        else:
            torch.addmm(first.bias[:, None], first.weight[:, made.features :], context.t(), out=self.activations[0])
        for layer, buffer in zip(made.layers[1:], self.activations[1:]):
            buffer.copy_(layer.bias[:, None])
        self.output.copy_(self.output_bias)

    def solve(self, target: Tensor, step: Step, context: Tensor | None,
              into: Callable[[Tensor, Tensor, Tensor], None] | None = None,
              log_det: bool = True) -> tuple[Tensor, Tensor | None]:
        """``x`` and the summed log-det of ``step``, as :func:`solve`.

        With ``into(y, params, out)`` (a transformer's ``inverse_writer``), each step writes its
        feature straight into place and takes no log-det; the log-dets of every feature come
        from one call of ``step`` on all of them at the end, whose parameters the output buffer
        still holds, or not at all with ``log_det=False`` (the second result is then None). At
        batch 512 a step is dispatch-bound, so every op a step saves counts.
        """
        self._reset(context)
        index = self.made.order_index
        target_rows = target.t()[index]  # contiguous, in step order
        activation = self.made.activation
        total = None if into is not None else target.new_zeros(target.shape[0])
        y_rows = target_rows.unbind(0)  # one op for every row's view, not one indexing op per step
        for y_row, (x_row, layers, (params, params_t, weight, inputs), updates) in zip(y_rows, self.plan):
            for out, product, residual in layers:
                if product is not None:
                    out.addmm_(*product)
                if self.in_place_relu:
                    out.relu_()  # cheaper to dispatch than clamp_(min=0)
                else:
                    out.copy_(activation(out))
                if residual is not None:
                    out += residual
            if weight.shape[1]:
                params.addmm_(weight, inputs)
            if into is not None:
                into(y_row, params_t, x_row)
            else:
                x_k, log_det = step(y_row, params_t)
                x_row.copy_(x_k)
                total += log_det
            for accumulator, weight, inputs in updates:
                accumulator.addmm_(weight, inputs)
        if total is None and log_det:
            features, num_params = self.made.features, self.made.num_params
            every = self.output.view(features, num_params, -1).permute(0, 2, 1)  # (step, batch, parameter)
            total = step(target_rows, every)[1].sum(0)
        x = self.x_rows if self.made.natural_order else self.x_rows[torch.argsort(index)]
        return x.t().clone(memory_format=torch.contiguous_format), total
