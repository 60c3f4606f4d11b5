"""The machine's own limit for a flow's work: the measured matmul rate at each conditioner layer shape.

A training step of a flow whose conditioners have layers ``(in, out)`` at batch ``B`` does, per
layer, the forward product ``(B, in) x (in, out)`` and the two backward products (the input
gradient ``(B, out) x (out, in)`` and the weight gradient ``(out, B) x (B, in)``), each
``2 * B * in * out`` flops. Timing exactly those three products at each shape, alone, gives the
step's matmul time on this machine; a flow's step can only be slower. ``log_prob`` does the forward
products only. Masks, splines, reshapes and Python come on top: the fraction
``ceiling time / measured time`` says how much of a step is the hardware's necessary work.

bfloat16 is timed only where the CPU has native bf16 matrix instructions (AMX or AVX512-BF16):
elsewhere oneDNN emulates it and the figure would be no ceiling at all.
"""

from __future__ import annotations

import statistics

import torch
from common import timed


def bf16_support(device: str) -> tuple[bool, str]:
    """Whether ``device`` multiplies bfloat16 natively, and why (a one-line reason)."""
    if device.startswith("cuda"):
        ok = torch.cuda.is_bf16_supported()
        return ok, "CUDA bf16" if ok else "this GPU lacks bf16"
    from flowkit.train.precision import cpu_bf16_support

    return cpu_bf16_support()


def _time(function, device: str, repeats: int) -> float:
    """Median seconds of ``function`` over ``repeats`` calls after two warm-ups."""
    for _ in range(2):
        function()
    return statistics.median(timed(function, device) for _ in range(repeats))


def shape_rates(batch: int, shapes: set[tuple[int, int]], device: str, dtype: torch.dtype,
                repeats: int = 7) -> dict[tuple[int, int], dict[str, float]]:
    """Per layer shape: seconds of the forward and of the two backward products, and GFLOP/s."""
    out: dict[tuple[int, int], dict[str, float]] = {}
    for fan_in, fan_out in sorted(shapes):
        x = torch.randn(batch, fan_in, device=device, dtype=dtype)
        w = torch.randn(fan_out, fan_in, device=device, dtype=dtype)
        b = torch.randn(fan_out, device=device, dtype=dtype)
        g = torch.randn(batch, fan_out, device=device, dtype=dtype)
        forward = _time(lambda x=x, w=w, b=b: torch.nn.functional.linear(x, w, b), device, repeats)
        grad_input = _time(lambda g=g, w=w: g @ w, device, repeats)
        grad_weight = _time(lambda g=g, x=x: g.t() @ x, device, repeats)
        flops = 2 * batch * fan_in * fan_out
        out[fan_in, fan_out] = {"forward_s": forward, "backward_s": grad_input + grad_weight,
                                "gflops": 3 * flops / (forward + grad_input + grad_weight) / 1e9}
    return out


def step_ceiling(shapes: list[tuple[int, int]], transforms: int, rates: dict) -> dict[str, float]:
    """The matmul-only seconds of a training step and of a ``log_prob`` call, and their flops."""
    forward = transforms * sum(rates[s]["forward_s"] for s in shapes)
    backward = transforms * sum(rates[s]["backward_s"] for s in shapes)
    return {"train_s": forward + backward, "log_prob_s": forward}


def step_flops(shapes: list[tuple[int, int]], transforms: int, batch: int) -> dict[str, float]:
    """Matmul flops counted from the layer shapes: forward ``2 B in out``, a training step 3 times that."""
    forward = transforms * sum(2 * batch * i * o for i, o in shapes)
    return {"train": 3 * forward, "log_prob": forward}


def bare_products(shapes: list[tuple[int, int]], transforms: int, batch: int, device: str,
                  dtype: torch.dtype = torch.float32) -> dict:
    """``{"train": fn, "log_prob": fn}`` running exactly the matrix products of a flow's training step
    (forward and both backward products of every layer of every transform) or of its ``log_prob``
    (the forward products), on preallocated operands: timed in the same rounds as the libraries,
    so the ceiling sees the same machine load as the flows it bounds."""
    operands = []
    for _ in range(transforms):
        for fan_in, fan_out in shapes:
            operands.append((torch.randn(batch, fan_in, device=device, dtype=dtype),
                             torch.randn(fan_out, fan_in, device=device, dtype=dtype),
                             torch.randn(fan_out, device=device, dtype=dtype),
                             torch.randn(batch, fan_out, device=device, dtype=dtype)))

    def forward() -> None:
        for x, w, b, _ in operands:
            torch.nn.functional.linear(x, w, b)

    def train() -> None:
        for x, w, b, g in operands:
            torch.nn.functional.linear(x, w, b)
            torch.mm(g, w)
            torch.mm(g.t(), x)

    return {"train": train, "log_prob": forward}

