"""What a fit returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STOP_REASONS: tuple[str, ...] = (
    "completed", "early_stopping", "time_limit", "interrupted", "max_steps", "diverged",
)


@dataclass
class FitResult:
    """The outcome of ``fit_density`` or ``fit_variational``; the flow itself is trained in place.

    Attributes:
        history: one dict per logged record (an epoch of ``fit_density``, an interval of
            ``fit_variational``) with keys ``step, epoch, train_loss, validation_loss,
            learning_rate, grad_norm, seconds, samples_per_second, skipped_steps``;
            ``train_loss`` is the mean per row (or Monte Carlo sample) over the record's applied
            steps, in the same units as ``validation_loss``.
        best_validation_loss: lowest validation loss (nats per row), or None without validation.
        best_step: the step whose weights were restored at the end, or None.
        steps: optimiser steps taken in total (including steps before a resume).
        stopped: why the run ended, one of ``STOP_REASONS``.
        skipped_steps: steps whose loss or gradient was not finite and were not applied.
        rollbacks: times the weights were rolled back to the last good state with a lower rate.
        seconds: wall-clock seconds of training, summed over resumes.
        diagnostics: filled by ``fit_variational`` (``elbo, log_z, ess, khat``).
        checkpoint: path of the checkpoint written, or None.
        device: the device trained on.

    Example:
        >>> FitResult(history=[], stopped="completed").steps
        0
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_validation_loss: float | None = None
    best_step: int | None = None
    steps: int = 0
    stopped: str = "completed"
    skipped_steps: int = 0
    rollbacks: int = 0
    seconds: float = 0.0
    diagnostics: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    device: str = "cpu"

    @property
    def final_train_loss(self) -> float | None:
        """The train loss of the last record, or None before the first record."""
        return self.history[-1].get("train_loss") if self.history else None
