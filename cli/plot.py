"""``flowkit plot``: pictures of a fitted model (density, marginals, layers, training curves); for
a conditional 2-D model, the density at a few context values, one picture each."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch
from flowkit_cli.errors import check_outputs, clean_errors
from flowkit_cli.tables import FORMAT_CHOICE, input_path, read_model_table
from torch import nn

from flowkit.data.tabular import DataError, Standardizer, Table
from flowkit.io import load_model

CONTEXT_QUANTILES = (1 / 6, 1 / 2, 5 / 6)  # the middles of the context's thirds


class AtContext(nn.Module):
    """A conditional flow with its context fixed (standardised values): a density of the rest
    that the plotting functions can draw like an unconditional one."""

    def __init__(self, flow, context: np.ndarray) -> None:
        super().__init__()
        self.flow = flow
        self.features = flow.features
        self.register_buffer("context", torch.as_tensor(context, dtype=next(flow.parameters()).dtype))

    def log_prob(self, x, context=None, batch_size=None):
        return self.flow.log_prob(x, self.context, batch_size=batch_size)

    def sample(self, num_samples, context=None, batch_size=None):
        return self.flow.sample(num_samples, self.context, batch_size=batch_size)


def context_picture_paths(path: Path, count: int) -> list[Path]:
    """``fit.png`` -> ``fit-context1.png``, ``fit-context2.png``, ..."""
    return [path.with_name(f"{path.stem}-context{index + 1}{path.suffix}") for index in range(count)]


def write_fit_picture(flow, table: Table, standardizer: Standardizer, path: Path, title: str,
                      context: np.ndarray | None = None) -> None:
    """The fit beside the data: a 2-D model's density and samples, or the marginals of samples.

    A conditional model is drawn at the middle of each third of its (first) context column: each
    picture shows the data rows of that third, the density at that context and samples there.
    Marginals of a conditional model compare the data with one sample at each row's context.
    """
    from flowkit.plotting import plot_density_2d, plot_marginals

    if context is not None and table.values.shape[1] == 2:
        order = np.argsort(context[:, 0], kind="stable")
        thirds = np.array_split(order, len(CONTEXT_QUANTILES))
        names = standardizer.context.columns
        for rows, picture in zip(thirds, context_picture_paths(path, len(thirds))):
            at = np.median(context[rows], axis=0)
            label = ", ".join(f"{name}={value:.3g}" for name, value in zip(names, at))
            fixed = AtContext(flow, standardizer.context.transform(at[None])[0])
            plot_density_2d(fixed, table.values[rows], picture, standardizer, title=f"{title} at {label}")
            click.echo(f"wrote {picture}")
        return
    if table.values.shape[1] == 2:
        plot_density_2d(flow, table.values, path, standardizer, title=title)
    else:
        count = min(len(table.values), 20000)
        with torch.no_grad():
            if context is None:
                samples = flow.sample(count)
            else:
                rows = np.random.default_rng(0).choice(len(context), count, replace=False)
                c = torch.as_tensor(standardizer.context.transform(context[rows]), dtype=next(flow.parameters()).dtype)
                samples = flow.sample(count, c)
        plot_marginals(table.values, standardizer.inverse(samples.double().numpy()), table.columns, path)
    click.echo(f"wrote {path}")


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path(dir_okay=False, allow_dash=True), required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Picture file (.png, .pdf, .svg...); a conditional 2-D model writes NAME-context1.png, ...")
@click.option("--layers", is_flag=True, help="Show how each layer bends space (2-D flows).")
@click.option("--history", is_flag=True, help="Show the training and validation loss curves.")
@click.option("--format", "input_format", type=FORMAT_CHOICE, default=None,
              help="Format of DATA when it is - (standard input) [default: csv].")
@clean_errors
def plot(model, data, output, layers, history, input_format) -> None:
    """Picture a fitted MODEL: density and samples beside DATA, marginals, its layers or its training."""
    from flowkit.plotting import plot_history, plot_layers

    check_outputs({"model file": model, "data file": input_path(data)}, {"picture": output})
    flow, standardizer, metadata = load_model(model)
    if history:
        if not isinstance(metadata.get("history"), list) or not metadata["history"]:
            raise DataError(f"{model}: holds no training history")
        plot_history(metadata["history"], output)
        click.echo(f"wrote {output}")
        return
    if layers:
        if flow.context_features:
            raise DataError("--layers draws unconditional 2-D flows; this model is conditional")
        plot_layers(flow, output, standardizer)
        click.echo(f"wrote {output}")
        return
    if data is None:
        raise DataError("give DATA to draw beside the model (or --layers)")
    values, context = read_model_table(data, flow, standardizer, metadata, input_format)
    if standardizer is None:
        standardizer = Standardizer(np.zeros(flow.features), np.ones(flow.features),
                                    [f"x{i}" for i in range(flow.features)])
    write_fit_picture(flow, Table(values, standardizer.columns), standardizer, Path(output),
                      "stdin" if data == "-" else Path(data).stem, context)
