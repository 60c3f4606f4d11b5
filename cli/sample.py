"""``flowkit sample``: synthetic rows from a fitted model, streamed a batch at a time."""

from __future__ import annotations

import click
import torch
from flowkit_cli.errors import check_outputs, clean_errors
from flowkit_cli.tables import emit_table

from flowkit.io import load_model


@click.command()
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
