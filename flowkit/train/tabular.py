"""Fitting a density to a table with defaults that follow the data: ``fit_tabular``.

Every candidate model starts as the full-covariance Gaussian of the training rows (a learned
``Whitening`` layer at the latent end, initialised from their covariance shrunk towards its
diagonal by the amount that scores best on the validation rows) with a body that starts as the
identity, and keeps its best validation weights; if no flow beats the Gaussian on validation the
Gaussian is the model, so the fit's validation log-likelihood is never below it. Bodies of a
few sizes (``flowkit.train.sizing.candidates``) race on the validation rows and the best
continues; a time limit bounds the whole fit, race included."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowkit.flow import Flow
from flowkit.io import atomic_write
from flowkit.memory import copied, gather_in_place, trim_heap
from flowkit.presets import build
from flowkit.train.density import as_rows, fit_density
from flowkit.train.gaussian_start import best_shrinkage, fit_whitening, gaussian_flow, mean_nll, preprocessed_moments
from flowkit.train.result import FitResult
from flowkit.train.schedule import make_optimizer
from flowkit.train.sizing import (
    MIN_FINAL_STEPS,
    RACE_MAX_ROWS,
    Choice,
    candidates,
    choose,
    fixes_structure,
    rung_for,
)

RACE_SHARE = 0.5  # of a time limit, spent racing the candidates
WRAP_UP = 0.05  # of a time limit, kept for what follows training
MIN_RACE_STEPS = 150  # steps each candidate needs in a time-limited race for it to be worth running
SCORED_TRAIN_ROWS = 20_000  # training rows the final report scores (all of them, below this)

__all__ = ["TabularFit", "fit_tabular", "gaussian_flow", "mean_nll"]


@dataclass
class TabularFit:
    """What ``fit_tabular`` returns.

    Attributes:
        flow: the fitted flow (its last layer whitens; CPU, eval mode).
        result: the training run's ``FitResult`` (None when the Gaussian won before training).
        choice: the configuration used, with the reason for each choice.
        gaussian: the full-covariance Gaussian of the training rows as a ``Flow`` (for baselines).
        train_nll, validation_nll: mean negative log-likelihood (nats per row) of the flow on
            the training rows (a random ``SCORED_TRAIN_ROWS`` of them on larger tables; how many
            is ``extra["train_rows_scored"]``) and on the validation rows (None without any).
        gaussian_train_nll, gaussian_validation_nll: the same for ``gaussian``.
        train_rows, validation_rows: indices of the rows of ``data`` in each split.
        kept: ``"flow"``, or ``"gaussian"`` when the flow did not beat the Gaussian on validation.
    """

    flow: Flow
    result: FitResult | None
    choice: Choice
    gaussian: Flow
    train_nll: float
    validation_nll: float | None
    gaussian_train_nll: float
    gaussian_validation_nll: float | None
    train_rows: np.ndarray
    validation_rows: np.ndarray
    kept: str = "flow"
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _split(rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    held_out = min(int(round(rows * fraction)), rows - 2) if fraction > 0 else 0
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def _seconds_per_step(flow: Flow, choice: Choice, data_args: dict[str, Any], device: torch.device,
                      forward_only: bool = False) -> float:
    """Wall-clock seconds of a training step of ``flow`` at the choice's batch size (or of its
    forward pass alone, without autograd): the mean of two steps of a copy after one warm-up step
    (which pays one-off allocations)."""
    trial = copy.deepcopy(flow).to(device).train()
    optimizer = None if forward_only else make_optimizer(trial.parameters(), 1e-6)  # the fit's own
    x, c = data_args["data"], data_args["context"]
    rows = min(choice.batch_size, x.shape[0])
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        with torch.set_grad_enabled(not forward_only):
            loss = -trial(x[:rows].to(device), None if c is None else c[:rows].to(device)).mean()
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - started)
    del trial, optimizer, loss
    trim_heap()  # the freed blocks of a large body's steps would otherwise stay resident all the fit long
    return float(np.mean(timings[1:]))


def _takes_steps(flow: Flow, choice: Choice, data_args: dict[str, Any], device: torch.device, seconds: float,
                 steps: int) -> bool:
    """Whether ``flow`` takes ``steps`` training steps in ``seconds``. A step costs at least twice
    its forward pass (the backward pass costs at least as much again), so a body whose forward
    pass alone is too slow is refused without a training step: a large body's step holds its
    gradients, optimiser state and saved activations, hundreds of MiB of transient memory."""
    if seconds / (2 * _seconds_per_step(flow, choice, data_args, device, forward_only=True)) < steps:
        return False
    return seconds / _seconds_per_step(flow, choice, data_args, device) >= steps


def _sidecar(checkpoint: str | os.PathLike[str] | None) -> Path | None:
    """Where the configuration that won the race is kept beside the checkpoint, so ``resume``
    rebuilds the same model without racing again."""
    return None if checkpoint is None else Path(f"{checkpoint}.choice.json")


def fit_tabular(
    data: Tensor | np.ndarray,
    *,
    context: Tensor | np.ndarray | None = None,
    time_limit: float | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    overrides: dict[str, Any] | None = None,
    progress: bool | str | None = "auto",
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    metrics_csv: str | os.PathLike[str] | None = None,
    compile: bool = False,
    bf16: bool = False,
    resume_hint: str | None = None,
    dtype: torch.dtype = torch.float32,
    announce: Callable[[str], None] | None = None,
    preprocessing: list[dict[str, Any]] | None = None,
    consume: bool = False,
) -> TabularFit:
    """Fit a flow to the rows of ``data`` with a configuration chosen from its size.

    A few bodies (``flowkit.train.sizing.candidates``: the size the row count suggests and its
    neighbours) race on the validation rows; the best continues. With ``time_limit`` the race
    takes about half the time (the same number of steps for each candidate) and the winner the
    rest, its learning rate decaying with the time it has used; without one each candidate
    trains to early stopping and the best is kept. Every candidate starts as the Gaussian and keeps its best validation
    weights, and the Gaussian wins if no flow beats it.

    Args:
        data: ``(rows, columns)`` values (standardised or not: the whitening layer adapts).
        context: ``(rows, context_columns)`` conditioning, for a conditional density.
        time_limit: seconds for the whole fit, race included.
        seed: seeds the split, the initialisation and the shuffles.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        overrides: ``Choice`` fields to set instead of choosing them (``preset``, ``transforms``,
            ``hidden_features``, ``num_bins``, ``tail_bound``, ``batch_size``, ``learning_rate``,
            ``weight_decay``, ``epochs``, ``max_steps``, ``patience``, ``validation_fraction``);
            any of the first three fixes the body, and then nothing races.
        progress, checkpoint, resume, metrics_csv, compile, bf16, resume_hint: as for ``fit_density``
            (checkpoints cover the last stage: a run interrupted in the race starts afresh).
        dtype: the model's floating-point type.
        announce: called with a line of text for each decision (the candidates, the winner).
        preprocessing: dequantisation and bounds layers (a spec, see
            ``flowkit.bijectors.preprocessing.make_preprocessing``) at the data end of every
            candidate and of the Gaussian; the whitening is fitted to the rows after them (in eval
            mode: integer columns at their cells' centres).
        consume: ``data`` (and ``context``) may be overwritten: the training rows are gathered
            inside their memory instead of into a copy (as they are anyway when ``data`` is not
            already a CPU array of ``dtype``), which on a large table saves the copy's memory.
            For callers that pass their last reference.

    Returns:
        A ``TabularFit``.

    Example:
        >>> import torch
        >>> x = torch.randn(400, 3) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 1.0]])
        >>> fit = fit_tabular(x, overrides={"epochs": 3, "transforms": 1}, progress=False)
        >>> fit.validation_nll <= fit.gaussian_validation_nll
        True
    """
    started = time.monotonic()
    say = announce or (lambda line: None)
    # In the model's dtype from the start: a float64 copy of a large table would double its memory.
    x = as_rows(data, dtype, "data")
    c = None if context is None else as_rows(context, dtype, "context")
    if c is not None and c.shape[0] != x.shape[0]:
        raise ValueError(f"context has {c.shape[0]} rows but data has {x.shape[0]}")
    rows, features = x.shape
    context_features = 0 if c is None else c.shape[1]
    sidecar = _sidecar(checkpoint)
    if resume and sidecar is not None and sidecar.is_file():
        saved = json.loads(sidecar.read_text())
        field_names = {f.name for f in fields(Choice)}
        choices = [Choice(**{key: value for key, value in saved.items() if key in field_names})]
    else:
        choices = candidates(rows, features, time_limit, context_features, overrides)
    train_rows, validation_rows = _split(rows, choices[0].validation_fraction, seed)
    x_val = x[validation_rows] if len(validation_rows) else None
    c_val = None if c is None or x_val is None else c[validation_rows]
    x_train = gather_in_place(x, train_rows) if consume or copied(x, data) else x[train_rows]
    c_train = None if c is None else \
        gather_in_place(c, train_rows) if consume or copied(c, context) else c[train_rows]
    del data, context, x, c  # only the splits are used from here: a caller that passes its last reference frees it

    moments = preprocessed_moments(x_train, preprocessing)
    shrinkage, _ = best_shrinkage(x_train, x_val, preprocessing, moments)
    gaussian = gaussian_flow(x_train, shrinkage, preprocessing=preprocessing, moments=moments).to(dtype)
    trim_heap()  # the moments' blocks
    data_args = {"data": x_train, "context": c_train, "validation_data": x_val, "validation_context": c_val}
    target = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          ("cpu" if device == "auto" else device))

    def make(choice: Choice, start: bool = True) -> Flow:
        """The body of ``choice``, its whitening fitted to the rows (``start``: skipped for a body
        that is only timed)."""
        torch.manual_seed(seed)
        arguments = {"features": features, "context_features": context_features, **choice.preset_arguments(seed)}
        try:
            if not choice.whiten:
                raise ValueError("no whitening asked for")
            flow = build(choice.preset, whiten=True, preprocessing=preprocessing, **arguments).to(dtype)
        except ValueError:  # a flow without a flowkit chain (nflows_*), or whiten=False: no Gaussian start
            torch.manual_seed(seed)
            try:
                return build(choice.preset, preprocessing=preprocessing, **arguments).to(dtype)
            except ValueError:
                if not preprocessing:
                    raise
                raise ValueError(f"{choice.preset} has no flowkit chain to hold the preprocessing layers "
                                 "(integer or bounded columns); choose a flowkit preset") from None
        if start:
            fit_whitening(flow.eval() if preprocessing else flow, x_train, c_train, shrinkage)  # eval: cell centres
        return flow.train()

    def train(flow: Flow, choice: Choice, budget: float | None, **extra: Any) -> FitResult:
        return fit_density(
            flow, **data_args, validation_fraction=0.0, epochs=choice.epochs, max_steps=choice.max_steps,
            batch_size=choice.batch_size, learning_rate=choice.learning_rate, weight_decay=choice.weight_decay,
            patience=choice.patience, time_limit=budget, schedule_by_time=budget is not None, seed=seed,
            device=target, progress=progress, compile=compile, bf16=bf16, **extra)

    def left() -> float | None:
        # Training stops a little before the limit: scoring, saving and exiting take the rest.
        reserve = max(0.5, WRAP_UP * time_limit) if time_limit is not None else 0.0
        return None if time_limit is None else max(time_limit - reserve - (time.monotonic() - started), 1e-3)

    def finish(flow: Flow, result: FitResult, choice: Choice) -> TabularFit:
        return _finish(flow, initial[id(flow)], result, choice, gaussian, data_args, train_rows, validation_rows,
                       started, shrinkage)

    if time_limit is not None and rows >= RACE_MAX_ROWS and not fixes_structure(overrides):
        # Too many rows to race: the body the row count suggests, unless it is too slow for the
        # budget to take MIN_FINAL_STEPS steps; then the largest smaller body that can.
        rung, body = rung_for(rows), make(choices[0], start=False)
        while rung > 0 and not _takes_steps(body, choices[0], data_args, target, left(), MIN_FINAL_STEPS):
            rung -= 1
            choices = [choose(rows, features, time_limit, context_features, overrides, rung)]
            choices[0].reasons["size"] += f", the largest that takes {MIN_FINAL_STEPS} steps in the time limit"
            body = make(choices[0], start=False)
        del body
    flows = [make(choice) for choice in choices]
    # Each flow's start (the Gaussian, for whitened flows), to fall back on if it never beats it.
    start_of = lambda flow: copy.deepcopy(flow.state_dict()) if flow.config.get("whiten") else None
    initial = {id(flow): start_of(flow) for flow in flows}
    winner, result = 0, None
    race_steps = None
    if len(choices) > 1 and time_limit is not None:
        # Under a time limit every candidate races for the same number of steps (not the same
        # time: equal time favours small bodies, which take more steps but learn less from each),
        # together half of what is left. Too few steps for that and there is no race: the body
        # the row count suggests trains alone, with all of the time.
        per_step: list[float] = []
        for choice, flow in zip(choices, flows):  # smallest first: stop timing once the race cannot be afforded
            per_step.append(_seconds_per_step(flow, choice, data_args, target))
            race_steps = int(RACE_SHARE * left() / sum(per_step))
            if race_steps < MIN_RACE_STEPS:
                break
        if race_steps < MIN_RACE_STEPS:
            say(f"no race: {time_limit:g} s are too few for {len(choices)} candidates to take "
                f"{MIN_RACE_STEPS} steps each")
            middle = len(choices) // 2
            choices, flows = [choices[middle]], [flows[middle]]
    if len(choices) > 1 and x_val is not None:
        say("racing " + "; ".join(describe(choice) for choice in choices) + " on the validation rows"
            + ("" if race_steps is None else f", {race_steps} steps each"))
        scores = []
        race_ends = None if time_limit is None else time.monotonic() + RACE_SHARE * left()
        for index, (choice, flow) in enumerate(zip(choices, flows)):
            if race_steps is None:
                raced = train(flow, choice, None)
            else:  # the step count decides; a share of the race's time left bounds a misjudged step time
                budget = max(race_ends - time.monotonic(), 1e-3) * per_step[index] / sum(per_step[index:])
                raced = train(flow, replace(choice, max_steps=race_steps), budget)
            if raced.stopped == "interrupted":
                return finish(flow, raced, choice)
            score = math.inf if raced.best_validation_loss is None else float(raced.best_validation_loss)
            scores.append(score if math.isfinite(score) else math.inf)
            say(f"  {describe(choice)}: validation {score:.4f} nats/row after {raced.steps} steps ({raced.stopped})")
            if time_limit is None:
                result = raced if len(scores) == 1 or score <= min(scores[:-1]) else result
        winner = int(np.argmin(scores))
    choice, flow = choices[winner], flows[winner]
    if result is None or time_limit is not None:  # the last stage: the winner continues (or the one choice trains)
        if sidecar is not None and len(choices) > 1:
            atomic_write(sidecar, lambda handle: handle.write(json.dumps(choice.summary())), mode="w")
        say(("continuing " if len(choices) > 1 else "training ") + describe(choice))
        result = train(flow, choice, left(), checkpoint=checkpoint, resume=resume, metrics_csv=metrics_csv,
                       resume_hint=resume_hint)
    if sidecar is not None and result.stopped != "interrupted":
        sidecar.unlink(missing_ok=True)
    return finish(flow, result, choice)


def describe(choice: Choice) -> str:
    """The body of a configuration in a few words (``nsf, 3 transforms x 128``)."""
    hidden = choice.hidden_features
    hidden = ",".join(map(str, hidden)) if isinstance(hidden, list) else str(hidden)
    return f"{choice.preset}, {choice.transforms} transforms x {hidden}"


def _finish(flow: Flow, initial: dict[str, Tensor] | None, result: FitResult, choice: Choice, gaussian: Flow,
            data_args: dict[str, Any], train_rows: np.ndarray, validation_rows: np.ndarray, started: float,
            shrinkage: float) -> TabularFit:
    """Keep the Gaussian if the flow did not beat it on validation, and measure both."""
    flow = flow.cpu().eval()
    x_train, c_train = data_args["data"], data_args["context"]
    x_val, c_val = data_args["validation_data"], data_args["validation_context"]
    kept = "flow"
    gaussian_val = None if x_val is None else mean_nll(gaussian, x_val)
    val_nll = None if x_val is None else mean_nll(flow, x_val, c_val)
    if val_nll is not None and not val_nll <= gaussian_val:  # also catches NaN
        if initial is not None:
            flow.load_state_dict(initial)  # the flow's own start: the Gaussian, to rounding
            val_nll = mean_nll(flow, x_val, c_val)
        if initial is None or (c_val is None and not val_nll <= gaussian_val):
            flow, val_nll = gaussian, gaussian_val  # no Gaussian start (or a rounding worse): the Gaussian itself
        kept = "gaussian"
    # The training rows' score is a report, not a decision: on large tables a random subset of
    # them gives it to a few hundredths of a nat in seconds instead of minutes.
    scored = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(0))[:SCORED_TRAIN_ROWS]
    scored = scored.sort().values if len(scored) < x_train.shape[0] else slice(None)
    x_scored, c_scored = x_train[scored], None if c_train is None else c_train[scored]
    return TabularFit(
        flow=flow, result=result, choice=choice, gaussian=gaussian, train_nll=mean_nll(flow, x_scored, c_scored),
        validation_nll=val_nll, gaussian_train_nll=mean_nll(gaussian, x_scored), gaussian_validation_nll=gaussian_val,
        train_rows=train_rows, validation_rows=validation_rows, kept=kept, seconds=time.monotonic() - started,
        extra={"shrinkage": shrinkage, "train_rows_scored": int(x_scored.shape[0])})
