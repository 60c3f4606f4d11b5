"""``flowkit toy``: fit a flow to a 2-D toy data set (maximum likelihood) or to a 2-D energy target
(reverse KL) and write its pictures, its figures as JSON and the model.

Outputs, in the folder ``-o DIR`` (named after the toy or target, so one folder holds many):
``NAME.png`` (data, true density, learned density, samples, figures in the title),
``NAME_layers.png`` (base samples pushed through each layer), ``NAME_training.png`` (the training
curve against the truth), ``NAME.json`` (the figures), ``NAME.flowkit`` (the model, for ``flowkit
sample`` and friends) and, with ``--animate``, ``NAME.gif``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import torch
from flowkit_cli.errors import INTERRUPTED, check_outputs, clean_errors
from flowkit_cli.fit import parse_hidden

from flowkit.data.grid import TARGET_BOXES
from flowkit.data.tabular import DataError
from flowkit.data.toy_densities import TOY_DENSITIES
from flowkit.data.toys import TOYS
from flowkit.io import atomic_write, save_model
from flowkit.presets import PRESETS


def list_names() -> str:
    toys = ", ".join(f"{name}{'' if name in TOY_DENSITIES else ' (no closed-form density)'}" for name in TOYS)
    return f"toys: {toys}\ntargets (--target): {', '.join(TARGET_BOXES)}"


@click.command()
@click.argument("name", required=False)
@click.option("--target", default=None, help="Fit this 2-D energy target by reverse KL instead of a toy.")
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None, help="Folder for the outputs.")
@click.option("--flow", "preset", type=click.Choice(sorted(PRESETS)), default="nsf_coupling", show_default=True)
@click.option("--transforms", type=click.IntRange(1), default=4, show_default=True)
@click.option("--hidden", default="64", show_default=True, help="Conditioner width, or widths like 64,64.")
@click.option("--steps", type=click.IntRange(1), default=1000, show_default=True, help="Optimiser steps.")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Toys: passes over the training rows instead of --steps.")
@click.option("--samples", "num_samples", type=click.IntRange(100), default=10000, show_default=True,
              help="Toy rows to draw (a tenth held out for validation); as many fresh rows score the fit.")
@click.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True), default=3e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=50.0, show_default=True,
              help="Seconds of training at most.")
@click.option("--scale", type=click.Choice(["log", "linear"]), default="log", show_default=True,
              help="Colour scale of the density panels (log: three decades below the peak).")
@click.option("--animate", is_flag=True, help="Also write NAME.gif: the learned density during training.")
@click.option("--list", "list_only", is_flag=True, help="List the toys and targets and exit.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@clean_errors
def toy(name, target, output, preset, transforms, hidden, steps, epochs, num_samples, learning_rate, seed,
        time_limit, scale, animate, list_only, quiet) -> None:
    """Fit a flow to the 2-D toy NAME (or --target NAME) and picture it in -o DIR."""
    if list_only:
        click.echo(list_names())
        return
    if (name is None) == (target is None):
        raise click.UsageError("give a toy NAME or --target NAME (one of them); --list shows them")
    if output is None:
        raise click.UsageError("give the output folder with -o DIR")
    label = name or target
    if name is not None and name not in TOYS:
        raise DataError(f"unknown toy {name!r}; choose from {', '.join(TOYS)} (or --target NAME)")
    if target is not None and target not in TARGET_BOXES:
        raise DataError(f"unknown target {target!r}; choose from {', '.join(TARGET_BOXES)}")
    if target is not None and epochs is not None:
        raise click.UsageError("--epochs is for toys; a target fit takes --steps")
    folder = Path(output)
    paths = {"picture": folder / f"{label}.png", "layers picture": folder / f"{label}_layers.png",
             "training picture": folder / f"{label}_training.png", "figures file": folder / f"{label}.json",
             "model file": folder / f"{label}.flowkit", "animation": folder / f"{label}.gif" if animate else None}
    check_outputs({}, paths)

    from flowkit.plotting import plot_layers
    from flowkit.plotting.toys import animate_toy_fit, plot_toy_fit, plot_toy_history, summary
    from flowkit.train.toy import fit_target, fit_toy

    options = dict(preset=preset, transforms=transforms, hidden_features=parse_hidden(hidden), steps=steps,
                   learning_rate=learning_rate, seed=seed, time_limit=time_limit, frames=40 if animate else 0,
                   progress=False if quiet else "auto")
    if name is not None:
        fit = fit_toy(name, num_samples=num_samples, epochs=epochs, **options)
    else:
        fit = fit_target(target, **options)
    if fit.result.stopped == "interrupted":
        sys.exit(INTERRUPTED)
    if fit.result.stopped == "diverged":
        raise DataError(f"{label}: training diverged; try a smaller --lr")
    torch.manual_seed(seed)
    plot_toy_fit(fit, paths["picture"], scale=scale)
    plot_layers(fit.flow, paths["layers picture"], fit.standardizer)
    plot_toy_history(fit, paths["training picture"])
    if animate:
        animate_toy_fit(fit, paths["animation"], scale=scale)
    history = [{key: row.get(key) for key in ("step", "train_loss", "validation_loss")} for row in fit.result.history]
    save_model(paths["model file"], fit.flow, fit.standardizer,
               {"data": f"toy:{name}" if name else f"target:{target}", **fit.metrics, "history": history})
    text = json.dumps(fit.metrics, indent=2) + "\n"
    atomic_write(paths["figures file"], lambda handle: handle.write(text), mode="w")
    for path in paths.values():
        if path is not None:
            click.echo(f"wrote {path}")
    click.echo(f"{label}: {summary(fit)}")
