"""Keeping non-finite values out of a model's state during training.

A skipped step leaves the parameters alone (the optimiser is not called), but its forward pass
may already have written to buffers: BatchNorm's running statistics absorb the bad batch's
mean and variance, ActNorm initialises from it. Those buffers are part of the state dict, so
without an undo a single bad batch would reach the evaluation-mode density, every later
checkpoint and the restored best weights. ``BufferGuard`` is that undo.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BufferGuard:
    """Restores the buffers a skipped step changed to their values before that step.

    It keeps a shadow copy of every persistent buffer (permutations, running statistics) and
    tells which buffers a step touched from their version counters, which in-place writes bump.
    So a step copies only what it changed (running statistics) and costs no device
    synchronisation. Buffers are handled per module: torch's own batch norm
    updates its running statistics inside the kernel without bumping their version, but bumps
    ``num_batches_tracked`` beside them.

    Example:
        >>> import torch
        >>> layer = torch.nn.BatchNorm1d(2)
        >>> guard = BufferGuard(layer)
        >>> _ = layer(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))  # a bad batch
        >>> guard.revert()
        >>> layer.running_mean.tolist(), layer.running_var.tolist()
        ([0.0, 0.0], [1.0, 1.0])
    """

    def __init__(self, model: nn.Module) -> None:
        # Non-persistent buffers are derived from the configuration (masks, index tables), never
        # written by a step; shadowing them would double the memory of a MADE's masks.
        groups = [[buffer for name, buffer in module.named_buffers(recurse=False)
                   if name not in module._non_persistent_buffers_set] for module in model.modules()]
        self.groups = [group for group in groups if group]
        self.shadows = [[buffer.detach().clone() for buffer in group] for group in self.groups]
        self.versions = [self._versions(group) for group in self.groups]

    @staticmethod
    def _versions(group: list[Tensor]) -> list[int]:
        return [buffer._version for buffer in group]

    def _sync(self, restore: bool) -> None:
        with torch.no_grad():
            for index, group in enumerate(self.groups):
                if self._versions(group) == self.versions[index]:
                    continue
                for buffer, shadow in zip(group, self.shadows[index]):
                    (buffer if restore else shadow).copy_(shadow if restore else buffer)
                self.versions[index] = self._versions(group)

    def commit(self) -> None:
        """Accept the buffers as they are now (after a good step, a roll-back or a resume)."""
        self._sync(restore=False)

    def revert(self) -> None:
        """Undo every buffer write since the last ``commit``."""
        self._sync(restore=True)


def copy_state(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``model``'s state dict."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def parameters_finite(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite (one device sync).

    Buffers are not checked: a generic model may keep an infinite sentinel in one, and the
    buffers a training step writes are guarded by ``BufferGuard``.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1)
        >>> parameters_finite(model)
        True
        >>> with torch.no_grad():
        ...     _ = model.bias.fill_(float("inf"))
        >>> parameters_finite(model)
        False
    """
    flags = [torch.isfinite(parameter).all() for parameter in model.parameters() if parameter.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True
