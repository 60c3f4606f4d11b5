"""``flowkit plot``: pictures of a fitted model (density, marginals, layers, training curves)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from flowkit_cli.errors import check_outputs, clean_errors
from flowkit_cli.tables import read_model_table

from flowkit.data.tabular import DataError, Standardizer, Table
from flowkit.io import load_model


def write_fit_picture(flow, table: Table, standardizer: Standardizer, path: Path, title: str) -> None:
    from flowkit.plotting import plot_density_2d, plot_marginals

    if table.values.shape[1] == 2:
        plot_density_2d(flow, table.values, path, standardizer, title=title)
    else:
        samples = standardizer.inverse(flow.sample(min(len(table.values), 20000)).double().numpy())
        plot_marginals(table.values, samples, table.columns, path)
    click.echo(f"wrote {path}")


@click.command()
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
