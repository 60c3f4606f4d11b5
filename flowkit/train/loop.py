"""The one training loop behind ``fit_density`` and ``fit_variational``.

The loop knows nothing about flows or data: it is given a ``compute_loss(step)`` that returns
the loss of optimiser step ``step`` (drawing its own batch or samples), and optionally a
``validate()`` run after every record (an epoch of data, an interval of steps). It owns the rest:
AdamW with a warm-up and cosine or constant schedule, gradient clipping, skipping and roll-back
after non-finite steps, validation with early stopping and best-weight restore, time limit,
graceful SIGINT/SIGTERM, atomic checkpoints and exact resume, progress and metric logs, and the
agreement of all ranks in a distributed run.

Per step it makes one host sync, to read the loss and gradient norm together: that decides
whether the step is applied (a non-finite loss or gradient never reaches the weights, nor the
buffers its forward pass wrote: ``guard.BufferGuard``) and feeds the logs at no extra sync.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowkit.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, warn_if_changed
from flowkit.train.distributed import DistributedContext, all_reduce_sum
from flowkit.train.guard import BufferGuard, copy_state, parameters_finite
from flowkit.train.interrupt import StopRequest
from flowkit.train.progress import Progress
from flowkit.train.records import RunState, append_record, is_good
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
        schedule_by_time: with a ``time_limit``, the learning-rate decay also follows the share
            of the time used, so the schedule ends at the deadline (see ``Schedule.rate``).
        Other attributes are the ``fit_*`` keywords of the same name.
    """

    total_steps: int
    steps_per_record: int
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    schedule_by_time: bool = False
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


def _total_norm(parameters: list[nn.Parameter], max_norm: float | None) -> Tensor:
    """Gradient norm, clipped to ``max_norm`` when given (non-finite norms are left to the caller)."""
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm or math.inf)


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
    loop = _Loop(model, compute_loss, config, validate, device or torch.device("cpu"),
                 distributed or DistributedContext())
    return loop.run(initialize, stream)


class _Loop:
    """The state of one ``train_loop`` call and the steps that change it."""

    def __init__(
        self,
        model: nn.Module,
        compute_loss: ComputeLoss,
        config: LoopConfig,
        validate: Callable[[], float] | None,
        device: torch.device,
        distributed: DistributedContext,
    ) -> None:
        self.model, self.compute_loss, self.config, self.validate = model, compute_loss, config, validate
        self.device, self.distributed = device, distributed
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.parameters, config.learning_rate, config.weight_decay)
        self.schedule = Schedule(self.optimizer, config.learning_rate, config.total_steps, config.schedule,
                                 config.warmup_steps)
        self.run_state = RunState()
        self.best_state: dict[str, Tensor] | None = None
        self.last_good: dict[str, Any] = {}
        self.path = None if config.checkpoint is None else Path(config.checkpoint)
        self.writes = distributed.is_main  # only rank 0 writes files and reports
        self.stat_dtype = torch.float64 if device.type in ("cpu", "cuda") else torch.float32
        self.last_saved = -math.inf
        self.guard = BufferGuard(model)

    # --- checkpoints ------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "rng": rng_state(self.device), "run": asdict(self.run_state),
                "best_state": self.best_state, "last_good": self.last_good, "fingerprint": self.config.fingerprint}

    def save(self, force: bool = True) -> None:
        due = force or time.monotonic() - self.last_saved >= self.config.checkpoint_interval
        if self.writes and self.path is not None and due:
            save_checkpoint(self.path, self.state())
            self.last_saved = time.monotonic()

    def start(self, initialize: Callable[[], None] | None) -> None:
        """Continue from the checkpoint when resuming, else initialise a fresh run."""
        self.model.train()
        if self.config.resume and self.path is not None and self.path.exists():
            loaded = load_checkpoint(self.path, map_location=self.device)
            warn_if_changed(loaded.get("fingerprint", {}), self.config.fingerprint, self.path, self.writes)
            try:
                self.model.load_state_dict(loaded["model"])
            except RuntimeError as error:
                raise ValueError(f"checkpoint {self.path} was written for another model: {error}") from None
            self.optimizer.load_state_dict(loaded["optimizer"])
            self.schedule.load_state_dict(loaded["schedule"])
            set_rng_state(loaded["rng"], self.device)
            self.run_state = RunState(**loaded["run"])
            self.best_state, self.last_good = loaded["best_state"], loaded["last_good"]
            if self.run_state.stopped not in ("early_stopping", "diverged"):  # those stay finished
                self.run_state.stopped = None
            self.guard.commit()
            return
        if initialize is not None:
            initialize()
        if not parameters_finite(self.model):
            raise ValueError("the model has NaN or Inf weights before training")
        self.guard.commit()
        self.last_good = self.snapshot()

    def snapshot(self, model_state: dict[str, Tensor] | None = None) -> dict[str, Any]:
        """A copy of the weights (``model_state`` where one was just taken) and optimiser state to
        roll back to."""
        return {"model": copy_state(self.model) if model_state is None else model_state,
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "step": self.run_state.step}

    # --- the loop ---------------------------------------------------------------------------

    def run(self, initialize: Callable[[], None] | None, stream: Any) -> FitResult:
        config, run = self.config, None
        fork_devices = [self.device.index] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices, device_type="cuda"):
            torch.manual_seed(config.seed)  # overridden by the checkpoint's state on resume
            self.start(initialize)
            run = self.run_state
            progress = Progress(config.total_steps, config.progress, config.metrics_csv, config.tensorboard_dir,
                                initial_step=run.step, history=run.history, enabled=self.writes, stream=stream)
            call_started = time.monotonic()  # the time limit is per call
            started = call_started - run.seconds  # history seconds add up over resumes
            # a record resumed mid-way already ran for a while: its samples per second count it
            record_started = started + (run.history[-1]["seconds"] if run.history else 0.0)
            with StopRequest() as stop, progress:
                while run.stopped is None and run.step < config.total_steps:
                    rate, loss_value, norm_value, stop_requested, time_up = self.step(stop, call_started)
                    if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                        self.skip(progress)
                    progress.update(run.step, loss_value)
                    boundary = run.step % config.steps_per_record == 0 or run.step == config.total_steps
                    if boundary:
                        run.seconds = time.monotonic() - started
                        self.close_record(rate, norm_value, time.monotonic() - record_started, progress)
                        record_started = time.monotonic()
                    if stop_requested:
                        run.stopped = "interrupted"
                    elif time_up and run.stopped is None:
                        run.stopped = "time_limit"
                    elif run.rollbacks > config.max_rollbacks:
                        run.stopped = "diverged"
                    if boundary or run.stopped is not None:
                        run.seconds = time.monotonic() - started
                        self.save(force=run.stopped is not None)
                if run.stopped is None:
                    run.stopped = config.end_reason
                    self.save()
                elif run.stopped == "time_limit" and not boundary:
                    # Saved mid-record, so a resume continues the record as if never stopped (no
                    # extra validation, patience count or history row); only this call's result
                    # gets the partial record, validated.
                    self.close_record(rate, norm_value, time.monotonic() - record_started, progress)
                    run.stopped = "time_limit"
                self.report_end(stop.signal_name, progress)
            if self.best_state is not None and self.validate is not None:
                self.model.load_state_dict(self.best_state)
        return FitResult(
            history=run.history, best_validation_loss=None if run.best_step is None else run.best_loss,
            best_step=run.best_step, steps=run.step, stopped=run.stopped, skipped_steps=run.skipped_steps,
            rollbacks=run.rollbacks, seconds=run.seconds, checkpoint=None if self.path is None else str(self.path),
            device=str(self.device),
        )

    def step(self, stop: StopRequest, call_started: float) -> tuple[float, float, float, bool, bool]:
        """One optimiser step, applied only if its loss and gradient are finite.

        Returns the learning rate, the loss and gradient norm (of the global batch), and whether
        any rank was asked to stop or ran out of time (all ranks then agree).
        """
        run, distributed, config = self.run_state, self.distributed, self.config
        elapsed = 0.0
        if config.schedule_by_time and config.time_limit:
            elapsed = (time.monotonic() - call_started) / config.time_limit
        rate = self.schedule.apply(run.step, elapsed)
        # The last step's gradients go before this forward pass, not after it: they would
        # otherwise be held beside its saved activations.
        self.optimizer.zero_grad(set_to_none=True)
        loss, samples = self.compute_loss(run.step)
        # only the trained parameters get gradients: a log_target's own parameters stay untouched
        loss.backward(inputs=self.parameters)
        grad_norm = _total_norm(self.parameters, config.clip_grad_norm)
        stop_requested = stop.requested  # read after the work, so a signal during it counts now
        time_up = config.time_limit is not None and time.monotonic() - call_started >= config.time_limit
        if distributed.enabled:  # one all-reduce carries the loss, the norm and both flags
            values = all_reduce_sum(torch.stack([
                loss.detach().to(self.stat_dtype), grad_norm.detach().to(self.stat_dtype),
                torch.tensor(float(stop_requested), dtype=self.stat_dtype, device=self.device),
                torch.tensor(float(time_up), dtype=self.stat_dtype, device=self.device),
            ]), distributed).tolist()
            stop_requested, time_up = values[2] > 0, values[3] > 0
        elif self.device.type == "cpu":  # no device to wait for: skip building a tensor
            values = [float(loss.detach()), float(grad_norm)]
        else:  # the step's one host sync
            values = torch.stack([loss.detach().to(self.stat_dtype), grad_norm.detach().to(self.stat_dtype)]).tolist()
        loss_value, norm_value = values[0] / distributed.world_size, values[1] / distributed.world_size
        if math.isfinite(loss_value) and math.isfinite(norm_value):
            self.optimizer.step()
            self.guard.commit()
            run.loss_sum += loss_value * samples
            run.loss_count += samples
            run.consecutive_bad = 0
        else:  # its forward pass may have written the bad batch into buffers (BatchNorm statistics)
            self.guard.revert()
        run.samples += samples
        run.step += 1
        return rate, loss_value, norm_value, stop_requested, time_up

    def skip(self, progress: Progress) -> None:
        """Count a non-finite step (its gradient is dropped); roll back after too many in a row."""
        run = self.run_state
        self.optimizer.zero_grad(set_to_none=True)
        run.skipped_steps += 1
        run.consecutive_bad += 1
        if run.skipped_steps == 1:
            progress.message(f"step {run.step}: non-finite loss or gradient; step skipped, weights unchanged "
                             "(further skips are counted in skipped_steps)")
        if run.consecutive_bad >= self.config.max_bad_steps:
            self.rollback(progress, f"{run.consecutive_bad} consecutive non-finite steps")

    def rollback(self, progress: Progress, reason: str) -> None:
        """Go back to the last good weights and optimiser state with a lower learning rate."""
        run = self.run_state
        self.model.load_state_dict(self.last_good["model"])
        self.optimizer.load_state_dict(self.last_good["optimizer"])  # loads copies: the snapshot stays
        self.guard.commit()
        self.schedule.scale *= self.config.rollback_factor
        run.rollbacks += 1
        progress.message(f"{reason} at step {run.step}: rolled back to the weights of step "
                         f"{self.last_good['step']}, learning rate now x{self.schedule.scale:g}")
        run.consecutive_bad = 0

    def close_record(self, rate: float, grad_norm: float, seconds: float, progress: Progress) -> None:
        """End a record: validate, keep the best and last good weights, log, check patience."""
        run, config = self.run_state, self.config
        # finite steps with an absurd step size: such weights must never be kept or checkpointed
        if not parameters_finite(self.model):
            self.rollback(progress, "non-finite weights")
        record, improved = append_record(run, self.validate, rate, grad_norm, seconds, config.steps_per_record)
        # Old copies go before new ones are taken, and the best weights and the roll-back point
        # share one copy when they are the same step: at four million parameters each copy of
        # the weights is 15 MiB and each of the optimiser state 30 MiB.
        good = is_good(record)
        if improved:
            self.best_state = None
        if good:
            self.last_good = {}
        if improved:
            self.best_state = copy_state(self.model)
        if good:
            self.last_good = self.snapshot(self.best_state if improved else None)
        progress.record(record)
        if config.patience is not None and self.validate is not None and run.bad_records >= config.patience:
            run.stopped = "early_stopping"

    def report_end(self, signal_name: str | None, progress: Progress) -> None:
        run = self.run_state
        if run.stopped == "interrupted":
            reason = f"interrupted by {signal_name}" if signal_name else "interrupted"
            if self.path is None:
                progress.message(f"{reason} at step {run.step}; no checkpoint was requested, so this run "
                                 "cannot be resumed")
            else:
                progress.message(f"{reason} at step {run.step}; checkpoint saved to {self.path}; resume with "
                                 f"{self.config.resume_hint}")
        if run.skipped_steps:
            progress.message(f"{run.skipped_steps} non-finite steps were skipped, {run.rollbacks} roll-backs")
        if run.stopped == "diverged":
            progress.message(f"stopped at step {run.step}: training stayed non-finite after "
                             f"{run.rollbacks} roll-backs")
