"""``flowkit fit``: train a flow on a table by maximum likelihood and save it as a model file."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import click
import numpy as np
import torch
from flowkit_cli.errors import INTERRUPTED, check_device, check_outputs, clean_errors
from flowkit_cli.plot import write_fit_picture
from flowkit_cli.tables import load_data

from flowkit.data.tabular import DataError, Standardizer, discrete_columns
from flowkit.io import save_model
from flowkit.presets import PRESETS, build


def preset_arguments(preset: str, **candidates) -> dict:
    """The candidate keyword arguments that this preset accepts (``num_bins`` only for splines)."""
    accepted = inspect.signature(PRESETS[preset]).parameters
    return {name: value for name, value in candidates.items() if name in accepted and value is not None}


def parse_hidden(text: str) -> int | list[int]:
    try:
        widths = [int(part) for part in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected a width or comma-separated widths, got {text!r}") from None
    if min(widths) < 1:
        raise click.BadParameter("widths must be positive")
    return widths[0] if len(widths) == 1 else widths


@click.command()
@click.argument("data")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Model file [default: DATA's name + .flowkit].")
@click.option("--flow", "preset", type=click.Choice(sorted(PRESETS)), default="realnvp", show_default=True)
@click.option("--transforms", type=click.IntRange(1), default=5, show_default=True)
@click.option("--hidden", default="64", show_default=True, help="Conditioner width, or widths like 128,128.")
@click.option("--bins", "num_bins", type=click.IntRange(2), default=8, show_default=True, help="Spline bins.")
@click.option("--epochs", type=click.IntRange(1), default=100, show_default=True)
@click.option("--max-steps", type=click.IntRange(1), default=None)
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--patience", type=click.IntRange(1), default=20, show_default=True,
              help="Epochs without validation improvement before stopping.")
@click.option("--validation-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True)
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None, help="Seconds.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--toy-samples", type=click.IntRange(2), default=5000, show_default=True,
              help="Rows to draw when DATA is toy:NAME.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Picture of the fit [default: beside the model, .png].")
@click.option("--no-plot", is_flag=True, help="Write no picture.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint file [default: the model file + .ckpt].")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint of an interrupted run.")
@click.option("--metrics", type=click.Path(dir_okay=False), default=None, help="Write per-epoch metrics as CSV.")
@click.option("--compile", "use_compile", is_flag=True,
              help="Train through torch.compile: tens of seconds to compile, then faster steps (spline flows most).")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@clean_errors
def fit(data, output, preset, transforms, hidden, num_bins, epochs, max_steps, batch_size, learning_rate,
        weight_decay, patience, validation_fraction, time_limit, seed, device, toy_samples, plot_path, no_plot,
        checkpoint, resume, metrics, use_compile, quiet) -> None:
    """Fit a flow to DATA (CSV, TSV, text or .npy table, or toy:NAME) by maximum likelihood."""
    from flowkit.train import fit_density  # imported here so `flowkit --help` stays fast

    check_device(device)
    table, name = load_data(data, toy_samples, seed)
    standardizer = Standardizer.fit(table)
    output = Path(output or f"{name}.flowkit")
    checkpoint = Path(checkpoint or f"{output}.ckpt")
    plot_path = None if no_plot else Path(plot_path or output.with_suffix(".png"))
    check_outputs({"data file": None if data.startswith("toy:") else data},
                  {"model file": output, "checkpoint": checkpoint, "picture": plot_path, "metrics file": metrics})
    if resume and not checkpoint.is_file():
        raise DataError(f"{checkpoint}: no checkpoint to resume from")
    if not resume and checkpoint.exists():  # an interrupted run's progress must not be overwritten
        raise DataError(f"{checkpoint}: a checkpoint of an earlier run exists; add --resume to continue it, "
                        "or delete it to start afresh")
    discrete = discrete_columns(table)
    if discrete:
        click.echo(f"warning: column(s) {', '.join(map(repr, discrete[:5]))}{', ...' if len(discrete) > 5 else ''} "
                   "hold repeated whole numbers; a continuous density can put spikes on them (adding uniform "
                   "noise in [0, 1) to such columns first is the usual remedy)", err=True)
    torch.manual_seed(seed)
    kwargs = preset_arguments(preset, context_features=0, transforms=transforms, hidden_features=parse_hidden(hidden),
                              num_bins=num_bins, seed=seed)
    flow = build(preset, features=table.values.shape[1], **kwargs)
    result = fit_density(
        flow, standardizer.transform(table.values).astype(np.float32), validation_fraction=validation_fraction,
        epochs=epochs, max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate,
        weight_decay=weight_decay, patience=patience, time_limit=time_limit, seed=seed, device=device,
        checkpoint=str(checkpoint), resume=resume, progress=False if quiet else "auto", metrics_csv=metrics,
        compile=use_compile, resume_hint="the same `flowkit fit` command with --resume")
    if result.stopped == "interrupted":
        sys.exit(INTERRUPTED)
    flow = flow.cpu().eval()
    # The model works on standardised values; report log-likelihoods in the data's own units.
    validation_nll = None if result.best_validation_loss is None else \
        float(result.best_validation_loss) - standardizer.log_det
    metadata = {"data": data, "rows": int(table.values.shape[0]), "steps": int(result.steps),
                "stopped": result.stopped, "validation_nll": validation_nll,
                "skipped_steps": int(result.skipped_steps), "history": history_in_data_units(result, standardizer)}
    save_model(output, flow, standardizer, metadata)
    checkpoint.unlink(missing_ok=True)  # the finished model supersedes the run's checkpoint
    message = f"saved {output} ({preset}, {sum(p.numel() for p in flow.parameters())} parameters, " \
              f"{result.steps} steps, stopped: {result.stopped}"
    if validation_nll is not None:
        message += f", validation log-likelihood {-validation_nll:.4f} nats/row"
    click.echo(message + ")")
    if plot_path is not None:
        write_fit_picture(flow, table, standardizer, plot_path, f"{preset} on {name}")


def history_in_data_units(result, standardizer: Standardizer) -> list[dict]:
    """The per-epoch losses, shifted from standardised to data units like ``validation_nll``."""
    rows = []
    for row in result.history:
        rows.append({key: row.get(key) for key in ("step", "epoch", "learning_rate")})
        for key in ("train_loss", "validation_loss"):
            rows[-1][key] = None if row.get(key) is None else float(row[key]) - standardizer.log_det
    return rows
