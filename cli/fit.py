"""``flowkit fit``: train a flow on a table by maximum likelihood and save it as a model file."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
from flowkit_cli.errors import INTERRUPTED, check_device, check_outputs, clean_errors
from flowkit_cli.plot import write_fit_picture
from flowkit_cli.prepare import column_options, prepare
from flowkit_cli.summary import nll_summary, print_summary
from flowkit_cli.tables import FORMAT_CHOICE, input_path, load_data

from flowkit.data.columns import proposals
from flowkit.data.tabular import DataError, Standardizer, Table, read_table
from flowkit.io import save_model
from flowkit.presets import PRESETS


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
@click.option("--flow", "preset", type=click.Choice(["auto", *sorted(PRESETS)]), default="auto", show_default=True,
              help="A preset, or auto: chosen with depth, width and schedule from the table's size.")
@click.option("--transforms", type=click.IntRange(1), default=None, help="Flow layers [default: from the data].")
@click.option("--hidden", default=None, help="Conditioner width, or widths like 128,128 [default: from the data].")
@click.option("--bins", "num_bins", type=click.IntRange(2), default=None, help="Spline bins [default: 8].")
@click.option("--epochs", type=click.IntRange(1), default=None, help="[default: from the data].")
@click.option("--max-steps", type=click.IntRange(1), default=None)
@click.option("--batch-size", type=click.IntRange(1), default=None, help="[default: from the data].")
@click.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate [default: from the data].")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None, help="[default: from the data].")
@click.option("--patience", type=click.IntRange(1), default=None,
              help="Epochs without validation improvement before stopping [default: from the data].")
@click.option("--validation-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Rows held out for early stopping [default: from the data].")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds for the whole fit; the schedule is sized to end within it.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@column_options
@click.option("--test", "test_path", type=click.Path(dir_okay=False), default=None,
              help="A test table: its negative log-likelihood joins the summary (never used in training).")
@click.option("--format", "input_format", type=FORMAT_CHOICE, default=None,
              help="Format of DATA when it is - (standard input) [default: csv].")
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
@click.option("--bf16", is_flag=True,
              help="bfloat16 matmuls (float32 weights and log-dets) on a GPU or a CPU with AMX / AVX512-BF16; "
                   "refused elsewhere. With --compile about twice as fast a step as float32 on AMX.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@clean_errors
def fit(data, output, preset, transforms, hidden, num_bins, epochs, max_steps, batch_size, learning_rate,
        weight_decay, patience, validation_fraction, time_limit, seed, device, toy_samples, plot_path, no_plot,
        checkpoint, resume, metrics, use_compile, bf16, quiet, columns, exclude, context, discrete, continuous,
        bounds, test_path, input_format) -> None:
    """Fit a flow to DATA (CSV, TSV, Parquet or .npy table, - for standard input, or toy:NAME) by
    maximum likelihood.

    Integer columns (whole numbers with repeats, or --discrete) are dequantised with uniform
    noise; --bounds columns are mapped through a logit or softplus; both are layers stored in the
    model, so scores are densities in the data's units and samples respect them. --context
    columns make the density conditional: p(rest | context).

    With the defaults the model starts as the full-covariance Gaussian of the training rows and
    keeps its best validation weights, so it never scores below that Gaussian on validation; the
    flow's size and schedule follow the table's size and --time-limit, and are printed.
    """
    from flowkit.train.tabular import fit_tabular  # imported here so `flowkit --help` stays fast

    started = time.monotonic() - seconds_since_start()

    check_device(device)
    if data == "-" and output is None:
        raise DataError("give -o/--output for a model fitted to standard input")
    table, name = load_data(data, toy_samples, seed, input_format)
    prepared = prepare(table, columns, exclude, context, discrete, continuous, bounds)
    standardizer = prepared.standardizer
    test = None if test_path is None else prepared.other(read_table(test_path), test_path)
    output = Path(output or f"{name}.flowkit")
    checkpoint = Path(checkpoint or f"{output}.ckpt")
    plot_path = None if no_plot else Path(plot_path or output.with_suffix(".png"))
    check_outputs({"data file": input_path(data), "test file": test_path},
                  {"model file": output, "checkpoint": checkpoint, "picture": plot_path, "metrics file": metrics})
    if resume and not checkpoint.is_file():
        raise DataError(f"{checkpoint}: no checkpoint to resume from")
    if not resume and checkpoint.exists():  # an interrupted run's progress must not be overwritten
        raise DataError(f"{checkpoint}: a checkpoint of an earlier run exists; add --resume to continue it, "
                        "or delete it to start afresh")
    notes = describe_columns(prepared)
    for note in notes:  # what happens to the columns is said even with -q (which silences progress)
        click.echo(f"note: {note}", err=True)
    overrides = {"preset": None if preset == "auto" else preset, "transforms": transforms,
                 "hidden_features": None if hidden is None else parse_hidden(hidden), "num_bins": num_bins,
                 "epochs": epochs, "max_steps": max_steps, "batch_size": batch_size, "learning_rate": learning_rate,
                 "weight_decay": weight_decay, "patience": patience, "validation_fraction": validation_fraction}
    rows, proposed = int(table.values.shape[0]), proposals(prepared.roles, table.values)
    # The model trains on float32 standardised arrays handed over as fit_tabular's only reference
    # (it frees them once split); only a sample of the rows is kept for the picture, so on a large
    # table no second copy of the data stays in memory while the flow trains. The table's float64
    # values are consumed here (the float32 rows are written over them): nothing reads them below.
    x, c, prepared = prepared.training_arrays(PICTURE_ROWS, seed)
    arrays = {"x": x, "c": c}
    del table, x, c
    remaining = None if time_limit is None else max(time_limit - (time.monotonic() - started), 1e-3)
    fitted = fit_tabular(
        arrays.pop("x"), context=arrays.pop("c"), preprocessing=prepared.preprocessing or None,
        time_limit=remaining, seed=seed, device=device, overrides=overrides,
        checkpoint=str(checkpoint), resume=resume, progress=False if quiet else "auto", metrics_csv=metrics,
        compile=use_compile, bf16=bf16, resume_hint="the same `flowkit fit` command with --resume", consume=True,
        announce=None if quiet else lambda line: click.echo(line, err=True))
    result = fitted.result
    if result.stopped == "interrupted":
        sys.exit(INTERRUPTED)
    flow = fitted.flow
    # The model works on standardised values; report log-likelihoods in the data's own units.
    shift = standardizer.log_det
    validation_nll = None if fitted.validation_nll is None else fitted.validation_nll - shift
    gaussian_validation_nll = None if fitted.gaussian_validation_nll is None else \
        fitted.gaussian_validation_nll - shift
    metadata = {"data": data, "rows": rows, "steps": int(result.steps),
                "stopped": result.stopped, "kept": fitted.kept, "choice": fitted.choice.summary(),
                "choice_reasons": fitted.choice.reasons,
                "train_nll": fitted.train_nll - shift, "validation_nll": validation_nll,
                "gaussian_train_nll": fitted.gaussian_train_nll - shift,
                "gaussian_validation_nll": gaussian_validation_nll,
                "skipped_steps": int(result.skipped_steps), "history": history_in_data_units(result, standardizer),
                "columns": prepared.roles.metadata(), "test": test_path}
    summary = nll_summary(fitted, prepared, test)
    metadata["summary"] = summary
    metadata["proposals"] = proposed
    save_model(output, flow, standardizer, metadata)
    checkpoint.unlink(missing_ok=True)  # the finished model supersedes the run's checkpoint
    name_of_flow = flow.config["preset"]
    message = f"saved {output} ({name_of_flow}, {sum(p.numel() for p in flow.parameters())} parameters, " \
              f"{result.steps} steps, stopped: {result.stopped}"
    click.echo(f"chose {describe_choice(fitted.choice)}", err=True)
    if validation_nll is not None:
        message += f", validation log-likelihood {-validation_nll:.4f} nats/row against the Gaussian's " \
                   f"{-gaussian_validation_nll:.4f}"
        if fitted.kept == "gaussian":
            message += "; the flow did not beat it, so the model is that Gaussian"
    click.echo(message + ")")
    centres = ["integer columns enter these numbers as densities at their cells' centres; `flowkit score` "
               "gives the cells' probabilities"] if prepared.roles.discrete else []
    print_summary(summary, centres + metadata["proposals"])
    if plot_path is not None:
        write_fit_picture(flow, Table(prepared.values, standardizer.columns), standardizer, plot_path,
                          f"{name_of_flow} on {name}", prepared.context)


def describe_columns(prepared) -> list[str]:
    """What happens to the columns, in a line or two: integer columns found or named, bounds, context."""
    roles, names = prepared.roles, prepared.roles.names
    notes = []
    if roles.discrete:
        detected = [names[i] for i in roles.detected]
        named = [names[i] for i in roles.discrete if i not in roles.detected]
        parts = ([f"named {', '.join(map(repr, named))}"] if named else []) + \
            ([f"detected {', '.join(map(repr, detected))} (whole numbers with repeats; --continuous to "
              "model them as real)"] if detected else [])
        notes.append(f"integer columns, dequantised with uniform noise in training and sampled as whole numbers: "
                     f"{'; '.join(parts)}")
    if roles.bounds:
        shown = ", ".join(f"{names[i]} in [{'' if lo is None else f'{lo:g}'}:{'' if hi is None else f'{hi:g}'}]"
                          for i, (lo, hi) in roles.bounds.items())
        notes.append(f"bounded columns (logit for two bounds, softplus for one): {shown}")
    if roles.context:
        notes.append(f"conditional density of {len(roles.modelled)} column(s) given "
                     f"{', '.join(repr(names[i]) for i in roles.context)}")
    if roles.ignored:
        notes.append(f"left out: {', '.join(repr(names[i]) for i in roles.ignored)}")
    return notes


def seconds_since_start() -> float:
    """Seconds since this process started, so --time-limit bounds the whole command, Python's and
    torch's start-up included (Linux; elsewhere, from when this module was imported)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - IMPORTED


IMPORTED = time.monotonic()
PICTURE_ROWS = 20_000  # data rows drawn beside the fit: more only slows the picture


def describe_choice(choice) -> str:
    """One line saying what ``fit`` chose (or was given) for the flow and its training."""
    hidden = choice.hidden_features
    hidden = ",".join(map(str, hidden)) if isinstance(hidden, list) else str(hidden)
    steps = f", at most {choice.max_steps} steps" if choice.max_steps else ""
    return (f"{choice.preset}, {choice.transforms} transforms, hidden {hidden}, batch {choice.batch_size}, "
            f"lr {choice.learning_rate:g}, weight decay {choice.weight_decay:g}, up to {choice.epochs} epochs{steps}, "
            f"patience {choice.patience}, {choice.validation_fraction:.0%} of rows for validation")


def history_in_data_units(result, standardizer: Standardizer) -> list[dict]:
    """The per-epoch losses, shifted from standardised to data units like ``validation_nll``."""
    rows = []
    for row in result.history:
        rows.append({key: row.get(key) for key in ("step", "epoch", "learning_rate")})
        for key in ("train_loss", "validation_loss"):
            rows[-1][key] = None if row.get(key) is None else float(row[key]) - standardizer.log_det
    return rows
