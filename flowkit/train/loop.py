"""The one training loop behind ``fit_density`` and ``fit_variational``.

The loop knows nothing about flows or data: it is given a ``compute_loss(step)`` that returns
the loss of optimiser step ``step`` (drawing its own batch or samples), and optionally a
``validate()`` run after every record (an epoch of data, an interval of steps). It owns the rest:
AdamW with a warm-up and cosine or constant schedule, gradient clipping, skipping and roll-back
after non-finite steps, validation with early stopping and best-weight restore, time limit,
graceful SIGINT/SIGTERM, atomic checkpoints and exact resume, progress and metric logs, and the
agreement of all ranks in a distributed run.

Per step it makes one host sync, to read the loss and gradient norm together: that decides
whether the step is applied (a non-finite loss or gradient never reaches the weights) and feeds
the logs, so logging costs no extra sync.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowkit.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from flowkit.train.distributed import DistributedContext, all_reduce_sum
from flowkit.train.interrupt import StopRequest
from flowkit.train.progress import Progress
from flowkit.train.result import FitResult
from flowkit.train.schedule import Schedule, make_optimizer

ComputeLoss = Callable[[int], tuple[Tensor, int]]


@dataclass
class LoopConfig:
    """Settings of one run of ``train_loop``.

    Attributes:
        total_steps: optimiser steps of the whole run (the schedule spans them).
        steps_per_record: steps between records (validation, history row, checkpoint).
        end_reason: ``stopped`` when all steps ran (``"completed"``, or ``"max_steps"``).
        patience: records without a better validation loss before stopping; None: never.
        max_bad_steps: consecutive non-finite steps that trigger a roll-back.
        rollback_factor: the learning rate is multiplied by this at each roll-back.
        max_rollbacks: after this many roll-backs the run stops as ``"diverged"``.
        checkpoint_interval: seconds between checkpoints at record boundaries (the first record,
            a stop and the end are always saved), so runs of many short epochs are not slowed.
        resume_hint: how to resume, quoted in the message after an interruption.
        fingerprint: plain values describing the run; a resume warns when they differ.
        Other attributes are the ``fit_*`` keywords of the same name.
    """

    total_steps: int
    steps_per_record: int
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    clip_grad_norm: float | None = 5.0
    patience: int | None = None
    time_limit: float | None = None
    seed: int = 0
    checkpoint: str | os.PathLike[str] | None = None
    resume: bool = False
    progress: bool | str | None = "auto"
    metrics_csv: str | os.PathLike[str] | None = None
    tensorboard_dir: str | os.PathLike[str] | None = None
    end_reason: str = "completed"
    max_bad_steps: int = 5
    rollback_factor: float = 0.5
    max_rollbacks: int = 5
    checkpoint_interval: float = 60.0
    resume_hint: str = "call the fit again with resume=True"
    fingerprint: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Run:
    """The loop's counters: plain values, so they go into a checkpoint as they are."""

    step: int = 0
    best_loss: float = math.inf
    best_step: int | None = None
    bad_records: int = 0
    skipped_steps: int = 0
    consecutive_bad: int = 0
    rollbacks: int = 0
    seconds: float = 0.0
    loss_sum: float = 0.0  # finite step losses since the last record
    loss_count: int = 0
    samples: int = 0
    stopped: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _copy_model(model: nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _total_norm(parameters: list[nn.Parameter], max_norm: float | None) -> Tensor:
    """Gradient norm, clipping to ``max_norm`` when given (non-finite norms are left to the caller)."""
    if max_norm:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    gradients = [p.grad for p in parameters if p.grad is not None]
    return torch.nn.utils.get_total_norm(gradients)


def train_loop(
    model: nn.Module,
    compute_loss: ComputeLoss,
    config: LoopConfig,
    *,
    validate: Callable[[], float] | None = None,
    initialize: Callable[[], None] | None = None,
    device: torch.device | None = None,
    distributed: DistributedContext | None = None,
    stream: Any = None,
) -> FitResult:
    """Minimise ``compute_loss`` over ``model``'s parameters; see the module docstring.

    Args:
        model: the module whose parameters are trained (the unwrapped one under DDP).
        compute_loss: ``step -> (loss, samples)``; ``samples`` counts the rows of the global batch.
        config: the run's settings.
        validate: returns the validation loss after each record; enables early stopping and the
            restore of the best weights at the end.
        initialize: called once before a fresh (not resumed) run, e.g. data-dependent init.
        device: where the model lives (default CPU).
        distributed: the process's place in a distributed run (default: a single process).
        stream: where progress goes (default stderr).

    Returns:
        A ``FitResult``; ``model`` holds the best weights (or the last, without validation).

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(1, 1)
        >>> x = torch.randn(64, 1)
        >>> loss = lambda step: (((model(x) - 3 * x) ** 2).mean(), 64)
        >>> config = LoopConfig(total_steps=300, steps_per_record=100, learning_rate=0.05,
        ...                     progress=False)
        >>> result = train_loop(model, loss, config)
        >>> result.stopped, len(result.history), round(model.weight.item(), 1)
        ('completed', 3, 3.0)
    """
    distributed = distributed or DistributedContext()
    device = device or torch.device("cpu")
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(parameters, config.learning_rate, config.weight_decay)
    schedule = Schedule(optimizer, config.learning_rate, config.total_steps, config.schedule, config.warmup_steps)
    run = _Run()
    checkpoint_path = None if config.checkpoint is None else Path(config.checkpoint)
    loaded = None
    if config.resume and checkpoint_path is not None and checkpoint_path.exists():
        loaded = load_checkpoint(checkpoint_path, map_location=device)
    stat_dtype = torch.float64 if device.type in ("cpu", "cuda") else torch.float32
    writes = distributed.is_main

    def state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "rng": rng_state(device), "run": asdict(run),
                "best_state": best_state, "last_good": last_good, "fingerprint": config.fingerprint}

    last_saved = -math.inf

    def save(force: bool = True) -> None:
        nonlocal last_saved
        if writes and checkpoint_path is not None and (force or time.monotonic() - last_saved
                                                       >= config.checkpoint_interval):
            save_checkpoint(checkpoint_path, state())
            last_saved = time.monotonic()

    fork_devices = [device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices, device_type="cuda"):
        torch.manual_seed(config.seed)
        model.train()
        if loaded is not None:
            _warn_if_changed(loaded.get("fingerprint", {}), config.fingerprint, checkpoint_path, writes)
            try:
                model.load_state_dict(loaded["model"])
            except RuntimeError as error:
                raise ValueError(f"checkpoint {checkpoint_path} was written for another model: {error}") from None
            optimizer.load_state_dict(loaded["optimizer"])
            schedule.load_state_dict(loaded["schedule"])
            set_rng_state(loaded["rng"], device)
            run = _Run(**loaded["run"])
            best_state, last_good = loaded["best_state"], loaded["last_good"]
        else:
            if initialize is not None:
                initialize()
            best_state = None
            last_good = {"model": _copy_model(model), "optimizer": copy.deepcopy(optimizer.state_dict()),
                         "step": 0}
        if run.stopped in ("early_stopping", "diverged"):
            pass  # a finished run stays finished; it is reported again below
        else:
            run.stopped = None

        progress = Progress(config.total_steps, config.progress, config.metrics_csv, config.tensorboard_dir,
                            initial_step=run.step, history=run.history, enabled=writes, stream=stream)
        started = time.monotonic() - run.seconds  # for the history: seconds summed over resumes
        call_started = time.monotonic()  # for the time limit, which applies to this call
        record_started, record_seconds = time.monotonic(), 0.0
        with StopRequest() as stop, progress:
            while run.stopped is None and run.step < config.total_steps:
                step = run.step
                rate = schedule.apply(step)
                loss, samples = compute_loss(step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = _total_norm(parameters, config.clip_grad_norm)
                time_up = config.time_limit is not None and time.monotonic() - call_started >= config.time_limit
                if distributed.enabled:  # every rank must take the same decisions
                    flags = torch.tensor([float(stop.requested), float(time_up)], dtype=stat_dtype, device=device)
                    stats = torch.cat([loss.detach().to(stat_dtype)[None], grad_norm.detach().to(stat_dtype)[None],
                                       flags])
                    values = all_reduce_sum(stats, distributed).tolist()
                elif device.type == "cpu":  # no device to wait for: skip building a tensor
                    values = [float(loss.detach()), float(grad_norm)]
                else:
                    stats = torch.stack([loss.detach().to(stat_dtype), grad_norm.detach().to(stat_dtype)])
                    values = stats.tolist()  # the step's one host sync
                loss_value, norm_value = values[0] / distributed.world_size, values[1] / distributed.world_size
                stop_requested = values[2] > 0 if distributed.enabled else stop.requested
                time_up = values[3] > 0 if distributed.enabled else time_up
                if math.isfinite(loss_value) and math.isfinite(norm_value):
                    optimizer.step()
                    run.loss_sum += loss_value
                    run.loss_count += 1
                    run.consecutive_bad = 0
                else:
                    optimizer.zero_grad(set_to_none=True)
                    run.skipped_steps += 1
                    run.consecutive_bad += 1
                    if run.skipped_steps == 1:
                        progress.message(f"step {step + 1}: non-finite loss or gradient; step skipped, "
                                         "weights unchanged (further skips are counted in skipped_steps)")
                    if run.consecutive_bad >= config.max_bad_steps:
                        _roll_back(model, optimizer, schedule, last_good, run, config, progress)
                run.samples += samples
                run.step += 1
                progress.update(run.step, loss_value)

                boundary = run.step % config.steps_per_record == 0 or run.step == config.total_steps
                if boundary or time_up:
                    record_seconds = time.monotonic() - record_started
                    run.seconds = time.monotonic() - started
                    record, improved = _close_record(run, validate, rate, norm_value, record_seconds, config)
                    if improved:
                        best_state = _copy_model(model)
                    if _is_good(record):
                        last_good = {"model": _copy_model(model),
                                     "optimizer": copy.deepcopy(optimizer.state_dict()), "step": run.step}
                    progress.record(record)
                    record_started = time.monotonic()
                    if config.patience is not None and validate is not None and run.bad_records >= config.patience:
                        run.stopped = "early_stopping"
                if stop_requested:
                    run.stopped = "interrupted"
                elif time_up and run.stopped is None:
                    run.stopped = "time_limit"
                elif run.rollbacks > config.max_rollbacks:
                    run.stopped = "diverged"
                if boundary or run.stopped is not None:
                    run.seconds = time.monotonic() - started
                    save(force=run.stopped is not None)
            if run.stopped is None:
                run.stopped = config.end_reason
                save()  # a resumed, already finished run rewrites its checkpoint unchanged
            if run.stopped == "interrupted" and writes:
                _report_interrupt(stop.signal_name, run.step, checkpoint_path, config.resume_hint, progress)
            if run.skipped_steps:
                progress.message(f"{run.skipped_steps} non-finite steps were skipped, {run.rollbacks} roll-backs")
            if run.stopped == "diverged":
                progress.message(f"stopped at step {run.step}: the loss stayed non-finite after "
                                 f"{run.rollbacks} roll-backs")
        if best_state is not None and validate is not None:
            model.load_state_dict(best_state)
    return FitResult(
        history=run.history,
        best_validation_loss=None if run.best_step is None else run.best_loss,
        best_step=run.best_step,
        steps=run.step,
        stopped=run.stopped,
        skipped_steps=run.skipped_steps,
        rollbacks=run.rollbacks,
        seconds=run.seconds,
        checkpoint=None if checkpoint_path is None else str(checkpoint_path),
        device=str(device),
    )


def _close_record(
    run: _Run,
    validate: Callable[[], float] | None,
    rate: float,
    grad_norm: float,
    seconds: float,
    config: LoopConfig,
) -> tuple[dict[str, Any], bool]:
    """End a record: validate, update the best and patience counters, append to the history.

    Returns the record and whether the validation loss improved on the best so far.
    """
    validation = float(validate()) if validate is not None else None
    improved = validation is not None and math.isfinite(validation) and validation < run.best_loss
    if improved:
        run.best_loss, run.best_step, run.bad_records = validation, run.step, 0
    elif validation is not None:
        run.bad_records += 1
    record = {
        "step": run.step,
        "epoch": math.ceil(run.step / config.steps_per_record),
        "train_loss": run.loss_sum / run.loss_count if run.loss_count else None,
        "validation_loss": validation,
        "learning_rate": rate,
        "grad_norm": grad_norm,
        "seconds": run.seconds,
        "samples_per_second": run.samples / seconds if seconds > 0 else None,
        "skipped_steps": run.skipped_steps,
    }
    run.history.append(record)
    run.loss_sum, run.loss_count, run.samples = 0.0, 0, 0
    return record, improved


def _is_good(record: dict[str, Any]) -> bool:
    """Whether the weights after this record are a safe place to roll back to."""
    losses = [record["train_loss"], record["validation_loss"]]
    return record["train_loss"] is not None and all(v is None or math.isfinite(v) for v in losses)


def _roll_back(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    last_good: dict[str, Any],
    run: _Run,
    config: LoopConfig,
    progress: Progress,
) -> None:
    """Return to the last good weights and optimiser state with a lower learning rate."""
    model.load_state_dict(last_good["model"])
    # load_state_dict may keep the given tensors as live state: hand it a copy
    optimizer.load_state_dict(copy.deepcopy(last_good["optimizer"]))
    schedule.scale *= config.rollback_factor
    run.rollbacks += 1
    progress.message(
        f"{run.consecutive_bad} consecutive non-finite steps at step {run.step}: rolled back to the "
        f"weights of step {last_good['step']}, learning rate now x{schedule.scale:g}"
    )
    run.consecutive_bad = 0


def _report_interrupt(
    signal_name: str | None, step: int, checkpoint: Path | None, resume_hint: str, progress: Progress
) -> None:
    reason = f"interrupted by {signal_name}" if signal_name else "interrupted"
    if checkpoint is None:
        text = f"{reason} at step {step}; no checkpoint was requested, so this run cannot be resumed"
    else:
        text = f"{reason} at step {step}; checkpoint saved to {checkpoint}; resume with {resume_hint}"
    progress.message(text)


def _warn_if_changed(saved: dict[str, Any], current: dict[str, Any], path: Path | None, writes: bool) -> None:
    changed = sorted(key for key in current if key in saved and saved[key] != current[key])
    if changed and writes:
        details = ", ".join(f"{key}: {saved[key]!r} -> {current[key]!r}" for key in changed)
        print(f"warning: resuming {path} with different settings ({details}); the run will not "
              "match an uninterrupted one", file=sys.stderr, flush=True)
