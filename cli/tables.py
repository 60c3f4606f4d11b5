"""Reading the tables a command is given and writing the tables it produces."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from flowkit.data.tabular import DataError, Standardizer, Table, read_table
from flowkit.data.toys import TOYS, make_toy
from flowkit.io import atomic_write, write_csv


def load_data(source: str, toy_samples: int, seed: int) -> tuple[Table, str]:
    """A table from a file, or from ``toy:NAME`` (a 2-D toy data set drawn with the seed)."""
    if source.startswith("toy:"):
        name = source[4:]
        if name not in TOYS:
            raise DataError(f"unknown toy data set {name!r}; choose from {', '.join(TOYS)}")
        return Table(make_toy(name, toy_samples, seed), ["x", "y"]), name
    return read_table(source), Path(source).stem


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
