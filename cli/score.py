"""``flowkit score``: the log-density of each row of a table under a fitted model."""

from __future__ import annotations

import click
import numpy as np
import torch
from flowkit_cli.errors import check_outputs, clean_errors
from flowkit_cli.tables import emit_table, read_model_table

from flowkit.io import load_model


@click.command()
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
