"""``flowkit score``: the log-density of each row of a table under a fitted model, and their mean
with its standard error on stderr."""

from __future__ import annotations

import click
import numpy as np
import torch
from flowkit_cli.errors import check_outputs, clean_errors
from flowkit_cli.tables import FORMAT_CHOICE, ModelColumns, emit_table, input_path, read_model_table

from flowkit.io import load_model
from flowkit.scoring import log_density, mean_and_standard_error


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Output file, its format from its name: .csv, .tsv, .parquet, .npy [default: stdout].")
@click.option("--format", "input_format", type=FORMAT_CHOICE, default=None,
              help="Format of DATA when it is - (standard input) [default: csv].")
@click.option("--output-format", type=FORMAT_CHOICE, default=None,
              help="Output format [default: from the name; csv for stdout].")
@click.option("--cells", type=click.Choice(["probability", "density"]), default="probability", show_default=True,
              help="For integer columns: the log-probability of each row's cell (importance sampling over the "
                   "dequantisation noise), or the density of the dequantised variable at the cell's centre.")
@click.option("--draws", type=click.IntRange(1), default=64, show_default=True,
              help="Importance samples per row for --cells probability.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=65536, show_default=True)
@clean_errors
def score(model, data, output, input_format, output_format, cells, draws, seed, batch_size) -> None:
    """Write the log-density of each row of DATA under MODEL (low values flag anomalies), in the
    units of DATA, and print their mean and its standard error on stderr.

    A conditional model reads its context columns from DATA. For integer columns the default is
    the log-probability of the row's cell (--cells). A row outside the model's support (beyond a
    bound, or a fraction in an integer column) scores -inf.
    """
    check_outputs({"model file": model, "data file": input_path(data)}, {"output": None if output == "-" else output})
    flow, standardizer, metadata = load_model(model)
    values, context = read_model_table(data, flow, standardizer, metadata, input_format)
    columns = ModelColumns.of(flow, standardizer, metadata)
    outside = outside_support(values, columns)
    if standardizer is not None:
        values = standardizer.transform(values)
        if context is not None:
            context = standardizer.context.transform(context)
    dtype = next(flow.parameters()).dtype
    # A row beyond the model's floating-point range (float32: 3.4e38 standard deviations) would
    # become inf on the way in and NaN on the way out; its density underflows to 0, so its score
    # is -inf, which sorts it as the most anomalous row.
    representable = (np.abs(values) <= torch.finfo(dtype).max).all(axis=1)
    if context is not None:
        representable &= (np.abs(context) <= torch.finfo(dtype).max).all(axis=1)
    torch.manual_seed(seed)
    with torch.no_grad():
        x = torch.as_tensor(np.where(representable[:, None], values, 0.0), dtype=dtype)
        c = None if context is None else torch.as_tensor(np.where(representable[:, None], context, 0.0), dtype=dtype)
        scores = log_density(flow, x, c, cells=cells, draws=draws, batch_size=batch_size).double().numpy()
    scores[~representable | outside] = -np.inf
    scores += standardizer.log_det if standardizer is not None else 0.0
    emit_table(output, [scores[:, None]], ["log_density"], len(scores), output_format)
    mean, error = mean_and_standard_error(scores)
    finite = int(np.isfinite(scores).sum())
    what = "log-probability of the cells" if columns.discrete and cells == "probability" else "log-density"
    line = f"mean {what} {mean:.4f} +- {error:.4f} (standard error) over {finite} rows"
    if finite < len(scores):
        line += f"; {len(scores) - finite} rows outside the model's support score -inf"
    click.echo(line, err=True)


def outside_support(values: np.ndarray, columns: ModelColumns) -> np.ndarray:
    """Rows the model gives no mass: beyond a bound, or not a whole number in an integer column."""
    outside = np.zeros(len(values), dtype=bool)
    for name, (lo, hi) in columns.bounds.items():
        if name in columns.modelled:
            column = values[:, columns.modelled.index(name)]
            outside |= (column < lo if lo is not None else False) | (column > hi if hi is not None else False)
    for name in columns.discrete:
        if name in columns.modelled:
            column = values[:, columns.modelled.index(name)]
            outside |= column != np.round(column)
    return outside
