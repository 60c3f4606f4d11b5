"""AdamW (Loshchilov & Hutter, 2019) as the trainers need it, without ``torch.optim``.

``torch.optim``'s optimisers import the compiler (``torch._dynamo``) on their first call, which
adds about 70 MiB to the resident memory of every fit: as much as a tenth of a million-row
table. This class runs the same kernels as ``torch.optim.AdamW(fused=True)`` (``_fused_adamw_`` on
CPU and CUDA, the same update in ``_foreach`` ops elsewhere), so its steps are the same numbers,
and reads and writes ``torch.optim``'s state-dict layout, so checkpoints written by either load in
the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

FUSED_DEVICES = ("cpu", "cuda")
# The settings torch.optim.AdamW keeps in each group, as this class's update has them: written
# into state dicts so that torch's optimiser, given one, runs the same (fused) update.
TORCH_GROUP_SETTINGS = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                        "differentiable": False, "fused": True, "decoupled_weight_decay": True}


class AdamW:
    """AdamW over ``params`` (tensors, or groups as dicts with a ``"params"`` list and their own
    settings), with the fields the schedule and checkpoints use: ``param_groups``, ``state``,
    ``zero_grad``, ``step``, ``state_dict``, ``load_state_dict``.

    Example:
        >>> import torch
        >>> weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> optimizer = AdamW([weight], lr=0.1, weight_decay=0.0)
        >>> weight.grad = torch.tensor([0.5, -0.5])
        >>> optimizer.step()
        >>> weight.detach()  # a first Adam step moves each weight by lr against its gradient's sign
        tensor([ 0.9000, -1.9000])
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        self.param_groups: list[dict[str, Any]] = [{**defaults, **group, "params": list(group["params"])}
                                                   for group in groups]
        self.state: dict[Tensor, dict[str, Tensor]] = {}

    def _parameters(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._parameters():
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    def _state_of(self, p: Tensor) -> dict[str, Tensor]:
        if p not in self.state:  # as torch.optim does: a float32 step count on the parameter's device
            self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                             "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                             "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return self.state[p]

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError("AdamW does not support sparse gradients")
                    by_kind.setdefault((p.device, p.dtype), []).append(p)
            for (device, _), params in by_kind.items():
                states = [self._state_of(p) for p in params]
                update = _fused_update if device.type in FUSED_DEVICES else _foreach_update
                update(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                       [s["exp_avg_sq"] for s in states], [s["step"] for s in states], group)

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim``'s layout: parameters by their position over all groups. The tensors are
        the live state (copy them to keep a snapshot)."""
        index = {p: i for i, p in enumerate(self._parameters())}
        return {"state": {index[p]: dict(state) for p, state in self.state.items()},
                "param_groups": [{**TORCH_GROUP_SETTINGS, **{k: v for k, v in group.items() if k != "params"},
                                  "params": [index[p] for p in group["params"]]} for group in self.param_groups]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state (ours or ``torch.optim.Adam``/``AdamW``'s) into copies: nothing loaded is
        shared with ``state_dict``, so a kept snapshot stays as it was."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(saved["params"]) != len(group["params"]) for saved, group in zip(groups, self.param_groups)):
            raise ValueError("the loaded optimiser state has groups of other sizes than this optimiser's")
        parameters = self._parameters()
        by_index = dict(zip((i for saved in groups for i in saved["params"]), parameters))
        self.state = {}
        for i, saved in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[p] = {"step": torch.as_tensor(saved["step"], dtype=torch.float32).to(p.device).clone(),
                             "exp_avg": saved["exp_avg"].to(p.device, p.dtype, copy=True),
                             "exp_avg_sq": saved["exp_avg_sq"].to(p.device, p.dtype, copy=True)}
        for saved, group in zip(groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params" and k not in TORCH_GROUP_SETTINGS})
            group["betas"] = tuple(group["betas"])


def _fused_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                  steps: list[Tensor], group: dict[str, Any]) -> None:
    beta1, beta2 = group["betas"]
    torch._foreach_add_(steps, 1)
    torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                        beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                        maximize=False, grad_scale=None, found_inf=None)


def _foreach_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                    steps: list[Tensor], group: dict[str, Any]) -> None:
    """The fused kernel's update in ``_foreach`` ops, for devices it does not cover (MPS, XPU)."""
    lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    torch._foreach_add_(steps, 1)
    if decay:
        torch._foreach_mul_(params, 1 - lr * decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    counts = torch.stack(steps).tolist()  # one device sync for the whole group
    for p, exp_avg, exp_avg_sq, count in zip(params, exp_avgs, exp_avg_sqs, counts):
        bias1, bias2 = 1 - beta1 ** count, 1 - beta2 ** count
        denominator = (exp_avg_sq.sqrt() / bias2 ** 0.5).add_(eps)
        p.addcdiv_(exp_avg, denominator, value=-lr / bias1)
