"""``flowkit sample``: synthetic rows from a fitted model, streamed a batch at a time; for a
conditional model, at the contexts of a file's rows or at one given context."""

from __future__ import annotations

import click
import numpy as np
import torch
from flowkit_cli.errors import check_outputs, clean_errors
from flowkit_cli.tables import FORMAT_CHOICE, ModelColumns, emit_table, input_path

from flowkit.data.tabular import DataError, read_table
from flowkit.io import load_model


def context_rows(columns: ModelColumns, context_file: str | None, assignments: tuple[str, ...]) -> np.ndarray | None:
    """The context rows to sample at (data units), from ``--context-file`` or ``--context NAME=VALUE``."""
    if not columns.context:
        if context_file or assignments:
            raise DataError("this model is unconditional: it takes no --context or --context-file")
        return None
    if context_file and assignments:
        raise DataError("give the context either as --context-file or as --context NAME=VALUE, not both")
    if context_file:
        table = read_table(context_file)
        label = "stdin" if context_file == "-" else context_file
        if all(name == f"x{i}" for i, name in enumerate(table.columns)):  # headerless: by position
            if table.values.shape[1] != len(columns.context):
                raise DataError(f"{label}: the model's context has {len(columns.context)} columns "
                                f"({', '.join(columns.context)}), the file has {table.values.shape[1]}")
            return table.values
        missing = [name for name in columns.context if name not in table.columns]
        if missing:
            raise DataError(f"{label}: no context column(s) {', '.join(map(repr, missing))} (the model's context "
                            f"is {', '.join(map(repr, columns.context))})")
        return table.values[:, [table.columns.index(name) for name in columns.context]]
    if not assignments:
        raise DataError(f"this model is conditional: give --context-file FILE or --context NAME=VALUE for "
                        f"{', '.join(map(repr, columns.context))}")
    given: dict[str, float] = {}
    for item in assignments:
        name, equals, text = item.partition("=")
        if not equals or name not in columns.context:
            raise DataError(f"--context {item!r}: expected NAME=VALUE with NAME one of "
                            f"{', '.join(map(repr, columns.context))}")
        if name in given:
            raise DataError(f"--context: {name!r} is given twice")
        try:
            value = float(text)
        except ValueError:
            raise DataError(f"--context {item!r}: {text!r} is not a number") from None
        if not np.isfinite(value):
            raise DataError(f"--context {item!r}: the value must be finite")
        given[name] = value
    missing = [name for name in columns.context if name not in given]
    if missing:
        raise DataError(f"--context: no value for {', '.join(map(repr, missing))}")
    return np.array([[given[name] for name in columns.context]])


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-n", "--num-samples", type=click.IntRange(1), default=None,
              help="Rows to draw [default: 1000; with --context-file, 1 per context row].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Output file, its format from its name: .csv, .tsv, .parquet, .npy [default: stdout].")
@click.option("--format", "output_format", type=FORMAT_CHOICE, default=None,
              help="Output format [default: from the name; csv for stdout].")
@click.option("--context", "context_values", multiple=True, metavar="NAME=VALUE",
              help="Sample a conditional model at this context (one per context column).")
@click.option("--context-file", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Sample a conditional model at each row's context (-n rows each; default 1).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=65536, show_default=True)
@click.option("--compile", "use_compile", is_flag=True,
              help="Compile the autoregressive sampling steps with torch.compile: tens of seconds once, "
                   "then faster sampling (spline flows most).")
@clean_errors
def sample(model, num_samples, output, output_format, context_values, context_file, seed, batch_size,
           use_compile) -> None:
    """Draw synthetic rows from a fitted MODEL, in the data's units and columns (integer columns as
    whole numbers, bounded columns within their bounds). A conditional model's rows hold the
    context they were drawn at."""
    check_outputs({"model file": model, "context file": input_path(context_file)},
                  {"output": None if output == "-" else output})
    flow, standardizer, metadata = load_model(model)
    columns = ModelColumns.of(flow, standardizer, metadata)
    contexts = context_rows(columns, context_file, context_values)
    if contexts is None:
        per_context, total = None, num_samples or 1000
    else:
        per_context = num_samples or (1 if context_file else 1000)
        total = per_context * len(contexts)
    batch_size = min(batch_size, total)
    if use_compile and hasattr(flow, "compile_sampling"):
        flow.compile_sampling()
    dtype = next(flow.parameters()).dtype
    discrete = [columns.modelled.index(name) for name in columns.discrete if name in columns.modelled]
    bounds = [(columns.modelled.index(name), lo, hi) for name, (lo, hi) in columns.bounds.items()
              if name in columns.modelled]
    out_columns = columns.needed if contexts is not None else columns.modelled
    order = [(columns.modelled + columns.context).index(name) for name in out_columns]
    torch.manual_seed(seed)

    def in_data_units(values: np.ndarray) -> np.ndarray:
        values = standardizer.inverse(values) if standardizer is not None else values
        # The layers already floor and bound; this removes the last ulp of float rounding.
        values[:, discrete] = np.round(values[:, discrete])
        for index, lo, hi in bounds:
            values[:, index] = np.clip(values[:, index], lo, hi)
        return values

    def chunks():
        # Drawn and written a batch at a time, so any number of rows fits in memory; the same
        # draws as flow.sample(total, batch_size=batch_size). Compiled code is specialised to one
        # batch size, so there a short last batch is drawn full and cut.
        for start in range(0, total, batch_size):
            rows = min(batch_size, total - start)
            drawn = batch_size if use_compile else rows
            if contexts is None:
                values = flow.sample(drawn)[:rows].double().numpy()
                yield in_data_units(values)
                continue
            index = np.minimum(np.arange(start, start + drawn) // per_context, len(contexts) - 1)
            raw = contexts[index]
            c = torch.as_tensor(standardizer.context.transform(raw), dtype=dtype)
            values = in_data_units(flow.sample(drawn, c)[:rows].double().numpy())
            yield np.concatenate([values, raw[:rows]], axis=1)[:, order]

    if contexts is not None and not np.isfinite(contexts).all():
        raise DataError("the context holds a non-finite value")
    emit_table(output, chunks(), out_columns, total, output_format)

