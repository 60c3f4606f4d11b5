"""``flowkit fit``'s closing summary: the negative log-likelihood of the flow and of the Gaussian
baseline on the training, validation and test rows, in nats per row and bits per feature, in the
data's units; and the bounds the data suggest."""

from __future__ import annotations

import math

import click
import torch

from flowkit.train.gaussian_start import mean_nll


def nll_summary(fitted, prepared, test: tuple | None = None) -> dict:
    """``{split: {"rows", "flow_nll", "gaussian_nll", "flow_bits_per_feature", ...}}`` in data units.

    The flow's numbers are those of its density in eval mode: integer columns at their cells'
    centres. The Gaussian is the full-covariance Gaussian of the training rows behind the same
    preprocessing layers (unconditional, for a conditional model).
    """
    shift = prepared.standardizer.log_det  # from standardised values back to the data's units
    features = prepared.values.shape[1]
    dtype = next(fitted.flow.parameters()).dtype
    splits = {"train": fitted.train_rows, "validation": fitted.validation_rows}
    summary = {}
    for split, rows in splits.items():
        if len(rows) == 0:
            continue
        if split == "train":
            flow_nll, gaussian_nll = fitted.train_nll, fitted.gaussian_train_nll
        else:
            flow_nll, gaussian_nll = fitted.validation_nll, fitted.gaussian_validation_nll
        summary[split] = _entry(len(rows), flow_nll - shift, gaussian_nll - shift, features)
        if split == "train" and fitted.extra.get("train_rows_scored", len(rows)) < len(rows):
            summary[split]["scored_rows"] = fitted.extra["train_rows_scored"]  # a random subset, on large tables
    if test is not None:
        x_test, c_test = (None if array is None else torch.as_tensor(array, dtype=dtype) for array in test)
        summary["test"] = _entry(len(x_test), mean_nll(fitted.flow, x_test, c_test) - shift,
                                 mean_nll(fitted.gaussian, x_test) - shift, features)
    return summary


def _entry(rows: int, flow_nll: float, gaussian_nll: float, features: int) -> dict:
    bits = features * math.log(2)
    return {"rows": int(rows), "flow_nll": float(flow_nll), "gaussian_nll": float(gaussian_nll),
            "flow_bits_per_feature": float(flow_nll / bits), "gaussian_bits_per_feature": float(gaussian_nll / bits)}


def print_summary(summary: dict, notes: list[str]) -> None:
    """The table of negative log-likelihoods, then the notes (integer columns, proposed bounds)."""
    click.echo(f"{'negative log-likelihood':<24}{'rows':>8}{'flow nats/row':>15}{'bits/feature':>14}"
               f"{'Gaussian nats/row':>19}{'bits/feature':>14}")
    for split, entry in summary.items():
        if "scored_rows" in entry:
            split = f"{split} ({entry['scored_rows']} scored)"
        click.echo(f"{split:<24}{entry['rows']:>8}{entry['flow_nll']:>15.4f}{entry['flow_bits_per_feature']:>14.4f}"
                   f"{entry['gaussian_nll']:>19.4f}{entry['gaussian_bits_per_feature']:>14.4f}")
    for note in notes:
        click.echo(f"note: {note}")
