"""MADE's forward and backward as block-triangular matrix products: about 60% of the dense work.

A masked layer multiplies by ``weight * mask``, and with the units sorted by degree (``MADE``
sorts its hidden units; the natural order sorts the inputs and outputs) that masked matrix is
block lower triangular: the units of degree ``d`` see only the inputs of degree ``<= d`` (``< d``
for the output layer), a *prefix* of the inputs. Split each layer's output units into a few
contiguous groups; group ``g`` needs only the first ``prefix[g]`` inputs, so its product is a
smaller dense rectangle. The mask still zeroes the part of each rectangle above the diagonal
(a group spans several degrees), so the result is exactly the masked product, with the
summation order of a shorter dot product. Dense libraries (nflows, zuko, normflows) multiply the
full matrix and zero half of it: with 4 groups these products do ``(1 + 2 + 3 + 4) / 16`` = 62%
of that work, forward and in both backward products.

The whole MADE runs as one autograd ``Function`` in a transposed layout, activations
``(units, batch)`` so that a group of units is a block of contiguous rows and an input prefix is
one too; the backward pass is written out (the same products per group, ReLU's mask, the
residual path), which also removes the per-op autograd bookkeeping of the eager graph.
``MADE`` uses it in the natural order outside autocast and ``torch.compile`` and keeps the dense
masked path otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

# (row start, row end, input prefix) of each group of one layer.
Groups = list[tuple[int, int, int]]


def chunk_groups(rows: int, groups: int, prefix_of_last_row) -> Groups:
    """Split ``rows`` sorted units into ``groups`` contiguous chunks and give each its input prefix."""
    groups = max(1, min(groups, rows))
    bounds = [round(index * rows / groups) for index in range(groups + 1)]
    return [(start, end, prefix_of_last_row(end - 1)) for start, end in zip(bounds[:-1], bounds[1:]) if end > start]


class BlockedMADE(torch.autograd.Function):
    """``params (num_params, features, batch) = MADE(xT)`` with block-triangular products.

    Inputs: ``xT`` ``(features, batch)``; ``plan`` (per hidden layer, then the output layer, its
    ``Groups``; the output layer's rows are features, each standing for its ``num_params`` rows);
    ``residual``; then per layer ``weight, bias, mask``, where a hidden bias is ``(units, 1)`` or
    ``(units, batch)`` (the first layer's, with a context's contribution folded in) and the output
    bias is ``(num_params, features, 1)``.
    """

    @staticmethod
    def forward(ctx, xT: Tensor, plan: list[Groups], residual: bool, *tensors: Tensor) -> Tensor:
        # ``narrow`` rather than indexing throughout: at these sizes each op's Python dispatch
        # is a measurable share of the work, and ``narrow`` is the cheapest view.
        *hidden, (weight_out, bias_out, mask_out) = (tensors[i:i + 3] for i in range(0, len(tensors), 3))
        batch = xT.shape[1]
        inputs = xT
        saved_inputs, saved_activations, masked = [], [], []
        for number, ((weight, bias, mask), groups) in enumerate(zip(hidden, plan)):
            w = weight * mask
            z = xT.new_empty(weight.shape[0], batch)
            for start, end, prefix in groups:
                torch.addmm(bias.narrow(0, start, end - start), w[start:end].narrow(1, 0, prefix),
                            inputs.narrow(0, 0, prefix), out=z.narrow(0, start, end - start))
            a = z.relu_()
            saved_inputs.append(inputs)
            saved_activations.append(a)
            masked.append(w)
            inputs = a + inputs if residual and number > 0 else a
        num_params, features = bias_out.shape[0], bias_out.shape[1]
        w_out = (weight_out * mask_out).view(num_params, features, -1)
        out = xT.new_empty(num_params, features, batch)
        for start, end, prefix in plan[-1]:
            rows = num_params * (end - start)
            block = w_out.narrow(1, start, end - start).narrow(2, 0, prefix).reshape(rows, prefix)
            product = torch.mm(block, inputs.narrow(0, 0, prefix)).view(num_params, end - start, batch)
            torch.add(product, bias_out.narrow(1, start, end - start), out=out.narrow(1, start, end - start))
        ctx.plan, ctx.residual = plan, residual
        ctx.num_hidden = len(hidden)
        ctx.bias_shapes = [bias.shape for _, bias, _ in hidden]
        ctx.save_for_backward(inputs, w_out, mask_out, *saved_inputs, *saved_activations, *masked,
                              *(mask for _, _, mask in hidden))
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        count = ctx.num_hidden
        last, w_out, mask_out, *rest = ctx.saved_tensors
        inputs, activations, masked, masks = (rest[i * count:(i + 1) * count] for i in range(4))
        plan = ctx.plan
        g = grad_out.contiguous()
        num_params, features, batch = g.shape
        grad_w_out = torch.zeros_like(w_out)
        grad_h = torch.zeros_like(last)
        for start, end, prefix in plan[-1]:
            rows = num_params * (end - start)
            block = w_out.narrow(1, start, end - start).narrow(2, 0, prefix).reshape(rows, prefix)
            grad_rows = g.narrow(1, start, end - start).reshape(rows, batch)
            grad_w_out.narrow(1, start, end - start).narrow(2, 0, prefix).copy_(
                torch.mm(grad_rows, last.narrow(0, 0, prefix).t()).view(num_params, end - start, prefix))
            grad_h.narrow(0, 0, prefix).addmm_(block.t(), grad_rows)
        grads_hidden: list[Tensor | None] = []
        for number in reversed(range(count)):
            a, x, w = activations[number], inputs[number], masked[number]
            grad_z = torch.ops.aten.threshold_backward(grad_h, a, 0)
            grad_w = torch.empty_like(w)
            columns = w.shape[1]
            for start, end, prefix in plan[number]:
                rows = grad_w[start:end]
                torch.mm(grad_z[start:end], x.narrow(0, 0, prefix).t(), out=rows.narrow(1, 0, prefix))
                if prefix < columns:
                    rows.narrow(1, prefix, columns - prefix).zero_()
            grad_w.mul_(masks[number])
            grad_x = None
            if number > 0 or ctx.needs_input_grad[0]:
                # By blocks of inputs: inputs [previous, prefix) feed the rows from this group's
                # start to the end, so each block of the input gradient is one product, no sums.
                grad_x = torch.empty_like(x)
                previous = 0
                for start, _, prefix in plan[number]:
                    if prefix > previous:
                        torch.mm(w[start:].narrow(1, previous, prefix - previous).t(), grad_z[start:],
                                 out=grad_x.narrow(0, previous, prefix - previous))
                        previous = prefix
                if previous < x.shape[0]:
                    grad_x.narrow(0, previous, x.shape[0] - previous).zero_()
            shape = ctx.bias_shapes[number]
            grad_b = grad_z.sum(1, keepdim=True) if shape[1] == 1 else grad_z
            grads_hidden = [grad_w, grad_b.view(shape), None, *grads_hidden]
            if ctx.residual and number > 0:
                grad_x = grad_x + grad_h
            grad_h = grad_x
        grad_weight_out = grad_w_out.mul_(mask_out.view_as(grad_w_out)).view(num_params * features, -1)
        grad_bias_out = g.sum(2, keepdim=True)
        return (grad_h, None, None, *grads_hidden, grad_weight_out, grad_bias_out, None)
