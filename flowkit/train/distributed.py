"""Data-parallel training under ``torchrun``: detection, process group, DDP wrapping, sharding.

``fit_density`` runs unchanged on one process or many. Under ``torchrun`` (``WORLD_SIZE > 1``)
each process takes an equal slice of every global batch, gradients are averaged by
``DistributedDataParallel``, and the run is numerically the one-process run on the global batch.
Only rank 0 writes checkpoints, metrics and progress.

Example:
    >>> context = detect()
    >>> context.world_size, context.is_main   # a plain process is a world of one
    (1, True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job.

    Attributes:
        world_size: number of processes.
        rank: this process's index, 0 for the main one.
        local_rank: its index on this machine (which GPU it uses).
        owns_group: True when flowkit created the process group and so must destroy it.
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistributedContext:
    """Read ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` as set by ``torchrun``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    return DistributedContext(world_size, rank, local_rank)


def setup(device: torch.device) -> DistributedContext:
    """Join the process group when running distributed (gloo on CPU, nccl on CUDA)."""
    context = detect()
    if not context.enabled or dist.is_initialized():
        return context
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl binds each process to the current device
    dist.init_process_group(backend=backend, world_size=context.world_size, rank=context.rank)
    return DistributedContext(context.world_size, context.rank, context.local_rank, owns_group=True)


def teardown(context: DistributedContext) -> None:
    """Leave the process group if ``setup`` created it (a caller's own group is left alone)."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(device: str | torch.device, context: DistributedContext | None = None) -> torch.device:
    """``"auto"`` is CUDA when available (this process's local GPU under torchrun), else CPU."""
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            local_rank = (context or detect()).local_rank
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        context = context or detect()
        # under torchrun each process takes its own GPU; alone, the current one
        index = context.local_rank % torch.cuda.device_count() if context.enabled else torch.cuda.current_device()
        device = torch.device("cuda", index)
    return device


def wrap(model: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed, the model itself otherwise.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts equal.
    """
    if not context.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def shard(indices: Tensor, context: DistributedContext) -> Tensor:
    """This rank's contiguous slice of a global batch's row indices (the last ranks may get one less)."""
    if not context.enabled:
        return indices
    return torch.tensor_split(indices, context.world_size)[context.rank]


def all_reduce_sum(values: Tensor, context: DistributedContext) -> Tensor:
    """Sum ``values`` over ranks in place (a no-op for one process)."""
    if context.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
