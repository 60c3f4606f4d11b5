"""Reading the tables a command is given and writing the tables it produces: CSV, TSV, Parquet
and ``.npy`` files, ``-`` for standard input and output, the format of an output following its
name (or ``--format``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from flowkit.data.formats import FORMATS, binary_format, format_of, write_table
from flowkit.data.tabular import DataError, Standardizer, Table, read_table
from flowkit.data.toys import TOYS, make_toy
from flowkit.io import atomic_write

FORMAT_CHOICE = click.Choice(list(FORMATS))


def load_data(source: str, toy_samples: int, seed: int, format: str | None = None) -> tuple[Table, str]:
    """A table from a file, ``-`` (standard input), or ``toy:NAME`` (a 2-D toy data set drawn with the seed)."""
    if source.startswith("toy:"):
        name = source[4:]
        if name not in TOYS:
            raise DataError(f"unknown toy data set {name!r}; choose from {', '.join(TOYS)}")
        return Table(make_toy(name, toy_samples, seed), ["x", "y"]), name
    return read_table(source, format), "stdin" if source == "-" else Path(source).stem


def input_path(source: str | None) -> str | None:
    """A path for ``check_outputs``: None for standard input and toys."""
    return None if source is None or source == "-" or source.startswith("toy:") else source


@dataclass
class ModelColumns:
    """What a model file says about columns: the modelled ones (its order), the context ones,
    and the table it was fitted on (for headerless data and for columns it left out)."""

    modelled: list[str]
    context: list[str]
    table_columns: list[str]
    ignored: list[str]
    discrete: list[str]
    bounds: dict[str, list]

    @classmethod
    def of(cls, flow, standardizer: Standardizer | None, metadata: dict) -> ModelColumns:
        modelled = standardizer.columns if standardizer is not None else [f"x{i}" for i in range(flow.features)]
        context = standardizer.context.columns if standardizer is not None and standardizer.context else []
        roles = metadata.get("columns") if isinstance(metadata.get("columns"), dict) else {}
        table_columns = roles.get("table_columns") or modelled + context
        return cls(list(modelled), list(context), list(table_columns), list(roles.get("ignored", [])),
                   list(roles.get("discrete", [])), dict(roles.get("bounds", {})))

    @property
    def needed(self) -> list[str]:
        """The model's columns (modelled and context) in the fitted table's order."""
        wanted = set(self.modelled) | set(self.context)
        in_order = [name for name in self.table_columns if name in wanted]
        return in_order if len(in_order) == len(wanted) else self.modelled + self.context


def _generated(columns: list[str]) -> bool:
    return all(name == f"x{i}" for i, name in enumerate(columns))


def align(table: Table, columns: ModelColumns, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The modelled values and the context values (None for an unconditional model) of a table,
    matched by name where both sides have names, by position otherwise."""
    needed = columns.needed
    if _generated(table.columns) or _generated(columns.table_columns):
        if table.values.shape[1] == len(needed):
            names = needed
        elif table.values.shape[1] == len(columns.table_columns):
            names = columns.table_columns
        else:
            wider = f" (or the {len(columns.table_columns)} of the table it was fitted on)" \
                if len(columns.table_columns) != len(needed) else ""
            raise DataError(f"the model expects {len(needed)} columns{wider}, the data has {table.values.shape[1]}")
        by_name = {name: table.values[:, index] for index, name in enumerate(names)}
    else:
        missing = [name for name in needed if name not in table.columns]
        unexpected = [name for name in table.columns if name not in needed and name not in columns.ignored]
        if (missing or unexpected) and table.values.shape[1] != len(needed) and not columns.ignored:
            raise DataError(f"the model expects {len(needed)} columns, the data has {table.values.shape[1]}")
        if missing or unexpected:
            differences = [f"{what} {', '.join(map(repr, names))}"
                           for what, names in (("missing", missing), ("unexpected", unexpected)) if names]
            raise DataError(f"{label}: column names differ from the model's: {'; '.join(differences)}")
        by_name = {name: table.values[:, table.columns.index(name)] for name in needed}
    values = np.column_stack([by_name[name] for name in columns.modelled])
    context = np.column_stack([by_name[name] for name in columns.context]) if columns.context else None
    return values, context


def read_model_table(path: str, flow, standardizer: Standardizer | None, metadata: dict | None = None,
                     format: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The modelled and context values of a data file, in the model's order, or a one-line error."""
    table = read_table(path, format)
    return align(table, ModelColumns.of(flow, standardizer, metadata or {}), "stdin" if path == "-" else path)


def emit_table(output: str | None, chunks, columns: list[str], rows: int, format: str | None = None) -> None:
    """Stream a header and the rows of each array in ``chunks`` to standard output (None or ``-``)
    or atomically to a file, in ``format`` or the one its name implies."""
    kind = format_of(output, format)
    if output is None or output == "-":
        handle = sys.stdout.buffer if binary_format(kind) else sys.stdout
        write_table(handle, columns, chunks, rows, kind)
        handle.flush()
    else:
        atomic_write(output, lambda handle: write_table(handle, columns, chunks, rows, kind),
                     mode="wb" if binary_format(kind) else "w")
        click.echo(f"wrote {rows} rows to {output}", err=True)
