"""``flowkit``: fit, sample, score, plot and inspect density models of tabular data.

Bad input ends with one line on stderr (``error: ...``) and exit status 1 (2 for a bad option or
argument); nothing already on disk is overwritten unless the command succeeds, since every output
is written atomically, and no output may overwrite an input or another output.
"""

from __future__ import annotations

import inspect
import json
import signal
import sys
import threading
from pathlib import Path

import click
import numpy as np
import torch
from flowkit_cli.errors import INTERRUPTED, Group, check_device, check_outputs, clean_errors

from flowkit.data.tabular import DataError, Standardizer, Table, discrete_columns, read_table
from flowkit.data.toys import TOYS, make_toy
from flowkit.io import atomic_write, load_model, save_model, write_csv
from flowkit.presets import PRESETS, build


def load_data(source: str, toy_samples: int, seed: int) -> tuple[Table, str]:
    """A table from a file, or from ``toy:NAME`` (a 2-D toy data set drawn with the seed)."""
    if source.startswith("toy:"):
        name = source[4:]
        if name not in TOYS:
            raise DataError(f"unknown toy data set {name!r}; choose from {', '.join(TOYS)}")
        return Table(make_toy(name, toy_samples, seed), ["x", "y"]), name
    return read_table(source), Path(source).stem


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


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flowkit")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads for torch [default: torch's choice]. Small models run fastest on 1.")
@click.pass_context
def main(ctx: click.Context, threads: int | None) -> None:
    """Normalizing flows for tabular data: fit a density, then sample, score and plot it."""
    if threads is not None:
        torch.set_num_threads(threads)
    if threading.current_thread() is threading.main_thread():
        # By default SIGTERM ends Python on the spot, leaving a half-written temporary file
        # beside the output (gigabytes, for a large sample). As an exception it unwinds through
        # atomic_write, which deletes it. (fit's training loop handles SIGTERM on its own.)
        previous = signal.signal(signal.SIGTERM, exit_on_signal)
        ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))


def exit_on_signal(number: int, frame) -> None:
    raise SystemExit(128 + number)  # the shell's convention for a run ended by a signal


@main.command()
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


def write_fit_picture(flow, table: Table, standardizer: Standardizer, path: Path, title: str) -> None:
    from flowkit.plotting import plot_density_2d, plot_marginals

    if table.values.shape[1] == 2:
        plot_density_2d(flow, table.values, path, standardizer, title=title)
    else:
        samples = standardizer.inverse(flow.sample(min(len(table.values), 20000)).double().numpy())
        plot_marginals(table.values, samples, table.columns, path)
    click.echo(f"wrote {path}")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-n", "--num-samples", type=click.IntRange(1), default=1000, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="CSV file [default: stdout].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=65536, show_default=True)
@click.option("--compile", "use_compile", is_flag=True,
              help="Compile the autoregressive sampling steps with torch.compile: tens of seconds once, "
                   "then faster sampling (spline flows most).")
@clean_errors
def sample(model, num_samples, output, seed, batch_size, use_compile) -> None:
    """Draw synthetic rows from a fitted MODEL, in the data's units and columns."""
    check_outputs({"model file": model}, {"output": output})
    flow, standardizer, _ = load_model(model)
    columns = standardizer.columns if standardizer is not None else [f"x{i}" for i in range(flow.features)]
    batch_size = min(batch_size, num_samples)
    if use_compile and hasattr(flow, "compile_sampling"):
        flow.compile_sampling()
    torch.manual_seed(seed)

    def chunks():
        # Drawn and written a batch at a time, so any number of rows fits in memory; the same
        # draws as flow.sample(num_samples, batch_size=batch_size). Compiled code is specialised
        # to one batch size, so there a short last batch is drawn full and cut.
        for start in range(0, num_samples, batch_size):
            rows = min(batch_size, num_samples - start)
            values = flow.sample(batch_size if use_compile else rows)[:rows].double().numpy()
            yield standardizer.inverse(values) if standardizer is not None else values

    emit_table(output, chunks(), columns, num_samples)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="CSV file [default: stdout].")
@click.option("--batch-size", type=click.IntRange(1), default=65536, show_default=True)
@clean_errors
def score(model, data, output, batch_size) -> None:
    """Write the log-density of each row of DATA under MODEL (low values flag anomalies)."""
    check_outputs({"model file": model, "data file": data}, {"output": output})
    flow, standardizer, _ = load_model(model)
    values = read_model_table(data, flow, standardizer).values
    if standardizer is not None:
        values = standardizer.transform(values)
    dtype = next(flow.parameters()).dtype
    # A row beyond the model's floating-point range (float32: 3.4e38 standard deviations) would
    # become inf on the way in and NaN on the way out; its density underflows to 0, so its score
    # is -inf, which sorts it as the most anomalous row.
    representable = (np.abs(values) <= torch.finfo(dtype).max).all(axis=1)
    with torch.no_grad():
        log_density = flow.log_prob(torch.as_tensor(np.where(representable[:, None], values, 0.0), dtype=dtype),
                                    batch_size=batch_size).double().numpy()
    log_density[~representable] = -np.inf
    log_density += standardizer.log_det if standardizer is not None else 0.0
    emit_table(output, [log_density[:, None]], ["log_density"], len(log_density))


def read_model_table(path: str, flow, standardizer: Standardizer | None) -> Table:
    """A table with the model's columns in the model's order (matched by name where both have
    names), or a one-line error when it cannot be."""
    table = read_table(path)
    if standardizer is not None:
        return Table(standardizer.align(table), standardizer.columns)
    if table.values.shape[1] != flow.features:
        raise DataError(f"the model expects {flow.features} columns, the data has {table.values.shape[1]}")
    return table


def emit_table(output: str | None, chunks, columns: list[str], rows: int) -> None:
    """Write a header and the rows of each array in ``chunks`` as CSV, to stdout or atomically to a file."""
    if output is None:
        write_csv(sys.stdout, columns, chunks)
    else:
        atomic_write(output, lambda handle: write_csv(handle, columns, chunks), mode="w")
        click.echo(f"wrote {rows} rows to {output}", err=True)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@clean_errors
def info(model, as_json) -> None:
    """Describe a fitted MODEL: architecture, size, columns and training summary."""
    flow, standardizer, metadata = load_model(model)
    summary = {"config": flow.config, "parameters": sum(p.numel() for p in flow.parameters()),
               "columns": standardizer.columns if standardizer is not None else None, "training": metadata}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    lines = {"flow": f"{flow.config['preset']} ({summary['parameters']} parameters)",
             "config": json.dumps({k: v for k, v in flow.config.items() if k != "preset"})}
    if summary["columns"]:
        lines["columns"] = ", ".join(summary["columns"])
    for key, value in metadata.items():
        if key == "history" and isinstance(value, list):
            value = f"{len(value)} records (`flowkit plot MODEL --history`)"
        lines.setdefault(key, value)
    width = max(len(key) for key in lines) + 1
    for key, value in lines.items():
        click.echo(f"{key + ':':<{width}} {value}")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path(dir_okay=False), required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="PNG file.")
@click.option("--layers", is_flag=True, help="Show how each layer bends space (2-D flows).")
@click.option("--history", is_flag=True, help="Show the training and validation loss curves.")
@clean_errors
def plot(model, data, output, layers, history) -> None:
    """Picture a fitted MODEL: density and samples beside DATA, marginals, its layers or its training."""
    from flowkit.plotting import plot_history, plot_layers

    check_outputs({"model file": model, "data file": data}, {"picture": output})
    flow, standardizer, metadata = load_model(model)
    if history:
        if not isinstance(metadata.get("history"), list) or not metadata["history"]:
            raise DataError(f"{model}: holds no training history")
        plot_history(metadata["history"], output)
        click.echo(f"wrote {output}")
        return
    if layers:
        plot_layers(flow, output, standardizer)
        click.echo(f"wrote {output}")
        return
    if data is None:
        raise DataError("give DATA to draw beside the model (or --layers)")
    table = read_model_table(data, flow, standardizer)
    if standardizer is None:
        standardizer = Standardizer(np.zeros(flow.features), np.ones(flow.features), table.columns)
    write_fit_picture(flow, table, standardizer, Path(output), Path(data).stem)


if __name__ == "__main__":
    main()
