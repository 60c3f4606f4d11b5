"""Maximum-likelihood training of a flow on data: ``fit_density``."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowkit.memory import scoring_rows
from flowkit.train import distributed as dist_tools
from flowkit.train import losses, precision
from flowkit.train.loop import LoopConfig, train_loop
from flowkit.train.result import FitResult


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first parameter or buffer (float32 if it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def as_rows(values: Any, dtype: torch.dtype, name: str, columns: int | None = None) -> Tensor:
    """A 2-D CPU tensor of ``dtype`` from a tensor or array, with a clear error when it cannot be."""
    tensor = torch.from_numpy(np.ascontiguousarray(values)) if isinstance(values, np.ndarray) \
        else torch.as_tensor(values)
    tensor = tensor.detach().to("cpu", dtype)
    if tensor.dim() == 1 and columns == 1:
        tensor = tensor[:, None]
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, columns), got shape {tuple(tensor.shape)}")
    if columns is not None and tensor.shape[1] != columns:
        raise ValueError(f"{name} must have {columns} columns, got {tensor.shape[1]}")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    # A row with a NaN or an infinity has a non-finite sum; only rows whose sum is not finite
    # (that, or finite values too large to add up) are checked cell by cell. isfinite on a whole
    # large table would make temporaries of nearly twice its size.
    suspects = torch.nonzero(~torch.isfinite(tensor.sum(1))).flatten()
    bad = suspects[~torch.isfinite(tensor[suspects]).all(1)] if len(suspects) else suspects
    if len(bad):
        raise ValueError(f"{name} has {len(bad)} rows with NaN or Inf (first: row {int(bad[0])})")
    return tensor.contiguous()


def _epoch_order(rows: int, seed: int, epoch: int) -> Tensor:
    """The shuffle of one epoch: a function of (seed, epoch) only, so a resume replays it exactly."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))
    return torch.randperm(rows, generator=generator)


class _Batches:
    """Gathers the rows of each step into pinned memory and moves them without blocking (CUDA)."""

    def __init__(self, tensors: list[Tensor | None], device: torch.device) -> None:
        self.tensors = tensors
        self.device = device
        self.pinned = device.type == "cuda"
        self._buffers: dict[tuple[int, int, int], Tensor] = {}
        self._turn = 0

    def take(self, indices: Tensor) -> list[Tensor | None]:
        if not self.pinned:
            return [None if t is None else t.index_select(0, indices).to(self.device) for t in self.tensors]
        self._turn ^= 1  # two buffers: the next gather never overwrites a copy still in flight
        out = []
        for position, tensor in enumerate(self.tensors):
            if tensor is None:
                out.append(None)
                continue
            key = (position, self._turn, len(indices))
            if key not in self._buffers:
                self._buffers[key] = torch.empty((len(indices), tensor.shape[1]), dtype=tensor.dtype).pin_memory()
            buffer = torch.index_select(tensor, 0, indices, out=self._buffers[key])
            out.append(buffer.to(self.device, non_blocking=True))
        return out


def fit_density(
    flow: nn.Module,
    data: Tensor | np.ndarray,
    *,
    context: Tensor | np.ndarray | None = None,
    validation_data: Tensor | np.ndarray | None = None,
    validation_context: Tensor | np.ndarray | None = None,
    validation_fraction: float = 0.1,
    epochs: int = 100,
    max_steps: int | None = None,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    schedule_by_time: bool = False,
    warmup_steps: int = 0,
    clip_grad_norm: float | None = 5.0,
    patience: int | None = 20,
    time_limit: float | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    bf16: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | str | None = "auto",
    metrics_csv: str | os.PathLike[str] | None = None,
    tensorboard_dir: str | os.PathLike[str] | None = None,
    validation_batch_size: int | None = None,
    checkpoint_interval: float = 60.0,
    compile: bool = False,
    resume_hint: str | None = None,
) -> FitResult:
    """Fit ``flow`` to ``data`` by maximum likelihood (minimising the mean negative log-likelihood).

    Rows are shuffled each epoch (a function of ``seed`` and the epoch), a ``validation_fraction``
    of them is held out unless ``validation_data`` is given, and the validation loss (nats per
    row) is computed after each epoch; training stops after ``patience`` epochs without
    improvement and the best weights are restored. Under ``torchrun`` it trains with DDP, each
    process taking its share of every batch. The flow is trained in place and moved to ``device``.

    Args:
        flow: a ``Flow`` (anything whose ``forward(x, context)`` returns log-densities).
        data: ``(rows, features)`` tensor or array; converted to the flow's dtype.
        context: ``(rows, context_features)`` conditioning for a conditional flow.
        validation_data: held-out rows; if None, ``validation_fraction`` of ``data`` is split off.
        validation_context: the context of ``validation_data``.
        validation_fraction: share of rows held out when ``validation_data`` is None (0: none).
        epochs: passes over the training rows.
        max_steps: stop after this many optimiser steps (the schedule then spans them).
        batch_size: rows per step (the global batch under DDP).
        learning_rate: AdamW's peak learning rate.
        weight_decay: AdamW's decoupled weight decay.
        schedule: ``"cosine"``, ``"constant"`` or ``"linear"`` decay after warm-up.
        schedule_by_time: with ``time_limit``, decay the learning rate by the share of the time
            used as well as of the steps, so the schedule ends at the deadline.
        warmup_steps: steps of linear learning-rate warm-up.
        clip_grad_norm: clip the global gradient norm to this (None: no clipping).
        patience: epochs without a better validation loss before stopping (None: never).
        time_limit: seconds after which this call stops (checked between steps). The partial
            epoch is validated for this call's result; ``resume`` continues the epoch exactly.
        seed: seeds the split, the shuffles and torch's generator; the same seed gives the same
            parameters bit for bit on CPU.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        bf16: bfloat16 autocast of the training loss (conditioner matmuls in bf16; weights,
            log-dets and the loss in float32) on a GPU or a CPU with AMX / AVX512-BF16; refused
            with a ``ValueError`` saying why where the hardware lacks native bf16.
        checkpoint: path of a checkpoint written each epoch, at the end and on SIGINT/SIGTERM.
        resume: continue from ``checkpoint`` if it exists (else start afresh).
        progress: ``"auto"``, ``"bar"``, ``"lines"``, or False.
        metrics_csv: CSV file with one row per epoch.
        tensorboard_dir: folder for TensorBoard scalars.
        validation_batch_size: rows per chunk of validation (default ``flowkit.memory.scoring_rows``:
            2,048 rows, fewer for a large flow, and at least ``batch_size``).
        checkpoint_interval: least seconds between two epoch-end checkpoints (stops always save).
        compile: train through ``torch.compile`` of the flow's ``log_prob`` (worth it on GPU for
            long runs; compiling takes tens of seconds). Validation runs uncompiled.
        resume_hint: how to resume, for the message after an interruption (the CLI passes its own).

    Returns:
        A ``FitResult``.

    Example:
        >>> import torch, flowkit
        >>> from flowkit.train import fit_density
        >>> data = torch.randn(512, 2) @ torch.tensor([[1.0, 0.8], [0.0, 0.6]])
        >>> flow = flowkit.realnvp(features=2, transforms=2, hidden_features=16)
        >>> result = fit_density(flow, data, epochs=3, batch_size=128, progress=False)
        >>> result.stopped, len(result.history)
        ('completed', 3)
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    dtype = model_dtype(flow)
    features = getattr(flow, "features", None)
    context_features = getattr(flow, "context_features", None) or None
    x = as_rows(data, dtype, "data", features)
    c = None if context is None else as_rows(context, dtype, "context", context_features)
    if context_features and c is None:
        raise ValueError(f"this flow is conditional: pass context with {context_features} columns")
    if c is not None and not context_features:
        raise ValueError("this flow takes no context, but a context was given")
    if c is not None and c.shape[0] != x.shape[0]:
        raise ValueError(f"context has {c.shape[0]} rows but data has {x.shape[0]}")

    if validation_context is not None and validation_data is None:
        raise ValueError("validation_context was given without validation_data")
    generator = torch.Generator().manual_seed(seed)
    if validation_data is not None:
        validation_x = as_rows(validation_data, dtype, "validation_data", x.shape[1])
        validation_c = None if validation_context is None else as_rows(
            validation_context, dtype, "validation_context", None if c is None else c.shape[1])
    else:
        held_out = min(int(round(x.shape[0] * validation_fraction)), x.shape[0] - 1)
        validation_x = validation_c = None
        if held_out:  # with nothing held out the rows stay where they are: no copy of a large table
            order = torch.randperm(x.shape[0], generator=generator)
            validation_x = x[order[:held_out]]
            validation_c = None if c is None else c[order[:held_out]]
            x = x[order[held_out:]]
            c = None if c is None else c[order[held_out:]]

    context_dist = dist_tools.detect()
    target = dist_tools.resolve_device(device, context_dist)
    if bf16:
        precision.check_bf16(target)
    context_dist = dist_tools.setup(target)
    try:
        flow.to(target)
        trainer = dist_tools.wrap(flow, context_dist, target)
        if compile:
            trainer = torch.compile(trainer)
        rows = x.shape[0]
        batch_size = min(batch_size, rows)
        steps_per_epoch = math.ceil(rows / batch_size)
        if rows % batch_size and rows % batch_size < context_dist.world_size:
            steps_per_epoch -= 1  # every rank needs a row of the last, partial batch: drop it
        natural = epochs * steps_per_epoch
        total_steps = natural if max_steps is None else min(natural, max_steps)
        batches = _Batches([x, c], target)
        orders: dict[int, Tensor] = {}

        def compute_loss(step: int) -> tuple[Tensor, int]:
            epoch, position = divmod(step, steps_per_epoch)
            if epoch not in orders:
                orders.clear()
                orders[epoch] = _epoch_order(rows, seed, epoch)
            indices = orders[epoch][position * batch_size:(position + 1) * batch_size]
            local = dist_tools.shard(indices, context_dist)
            xb, cb = batches.take(local)
            with precision.autocast(target, bf16):
                loss = losses.negative_log_likelihood(trainer, xb, cb)
            if context_dist.enabled:  # DDP averages over ranks: weight so the result is the global mean
                loss = loss * (len(local) * context_dist.world_size / len(indices))
            return loss.float() if bf16 else loss, len(indices)

        def initialize() -> None:
            # Data-dependent layers (ActNorm: an ``initialized`` buffer still False) initialise on
            # the first global batch, identically on every rank, exactly as a one-process run
            # does on its first step. Other buffers (BatchNorm's running statistics) are put back,
            # so this extra forward pass leaves no other trace.
            buffers = dict(flow.named_buffers())
            pending = [name for name, value in buffers.items()
                       if name.split(".")[-1] == "initialized" and not bool(value)]
            if not pending:
                return
            saved = {name: value.clone() for name, value in buffers.items() if name not in pending}
            xb, cb = batches.take(_epoch_order(rows, seed, 0)[:batch_size])
            with torch.no_grad():
                flow(xb, cb)
                for name, value in saved.items():
                    buffers[name].copy_(value)

        validate = None
        if validation_x is not None:
            chunk = validation_batch_size or scoring_rows(flow, batch_size)

            def validate() -> float:
                flow.eval()
                total = 0.0
                with torch.no_grad():
                    for start in range(0, validation_x.shape[0], chunk):
                        xb = validation_x[start:start + chunk].to(target)
                        cb = None if validation_c is None else validation_c[start:start + chunk].to(target)
                        total += float(-flow(xb, cb).sum())
                flow.train()
                return total / validation_x.shape[0]

        config = LoopConfig(
            total_steps=total_steps, steps_per_record=steps_per_epoch, learning_rate=learning_rate,
            weight_decay=weight_decay, schedule=schedule, schedule_by_time=schedule_by_time,
            warmup_steps=warmup_steps,
            clip_grad_norm=clip_grad_norm, patience=patience, time_limit=time_limit, seed=seed,
            checkpoint=checkpoint, resume=resume, progress=progress, metrics_csv=metrics_csv,
            tensorboard_dir=tensorboard_dir, checkpoint_interval=checkpoint_interval,
            end_reason="completed" if total_steps == natural else "max_steps",
            resume_hint=resume_hint or "resume=True (or `flowkit fit ... --resume`)",
            fingerprint={"rows": rows, "features": x.shape[1], "batch_size": batch_size,
                         "total_steps": total_steps, "learning_rate": learning_rate, "seed": seed},
        )
        return train_loop(flow, compute_loss, config, validate=validate, initialize=initialize,
                          device=target, distributed=context_dist)
    finally:
        dist_tools.teardown(context_dist)
