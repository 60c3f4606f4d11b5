"""``flowkit fit``'s column options: which columns are modelled, conditioned on, integer or
bounded, and the standardised arrays and preprocessing spec that ``fit_tabular`` is given."""

from __future__ import annotations

from dataclasses import dataclass, replace

import click
import numpy as np
from flowkit_cli.tables import ModelColumns, align

from flowkit.data.columns import ColumnRoles, check_bounds, column_roles, take_columns
from flowkit.data.tabular import DataError, Standardizer, Table
from flowkit.memory import can_standardize_in_place, standardize_in_place


def column_options(command):
    """The column options shared by ``fit`` (names or 0-based indices, comma-separated)."""
    options = [
        click.option("--columns", default=None, help="Model only these columns (names or 0-based indices, a,b,3)."),
        click.option("--exclude", default=None, help="Leave these columns out."),
        click.option("--context", default=None,
                     help="Condition on these columns: a density p(rest | context), sampled at given contexts."),
        click.option("--discrete", default=None,
                     help="Integer columns to dequantise [default: whole-number columns with repeats]."),
        click.option("--continuous", default=None, help="Columns never to treat as integer."),
        click.option("--bounds", multiple=True, metavar="COL=LO:HI",
                     help="Bounds of a column (logit for both, softplus for one; a side may be empty: x=0:). "
                          "Repeatable."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@dataclass
class PreparedTable:
    """A table ready for ``fit_tabular``."""

    roles: ColumnRoles
    values: np.ndarray  # the modelled columns, in data units
    context: np.ndarray | None
    standardizer: Standardizer  # with .context for a conditional model
    preprocessing: list[dict]

    @property
    def x(self) -> np.ndarray:
        """The modelled columns standardised, in the float32 the model trains in."""
        return self.standardizer.transform(self.values, np.float32)

    @property
    def c(self) -> np.ndarray | None:
        return None if self.context is None else self.standardizer.context.transform(self.context, np.float32)

    def training_arrays(self, picture_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None, PreparedTable]:
        """``x`` and ``c``, and a ``sample`` of ``picture_rows`` rows to draw beside the fit.

        On a table larger than the sample, ``x`` is written over the modelled values' own float64
        buffer and half of it released (``standardize_in_place``): the values are consumed, and
        from here only the returned sample (and the file) hold the data in its units. A million
        rows would otherwise hold the float64 table and its float32 copy at once."""
        picture, values = self.sample(picture_rows, seed), self.values
        if picture is self or not can_standardize_in_place(values):
            return self.x, self.c, picture
        c = self.c
        self.values = None  # consumed: nothing may read it again
        return standardize_in_place(values, self.standardizer.mean, self.standardizer.std), c, picture

    def sample(self, count: int, seed: int = 0) -> PreparedTable:
        """The same table with a random ``count`` of its rows (all of them, in order, if it has no
        more): for pictures, which need no more."""
        if len(self.values) <= count:
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self.values), count, replace=False))
        return replace(self, values=self.values[rows], context=None if self.context is None else self.context[rows])

    def model_columns(self) -> ModelColumns:
        metadata = self.roles.metadata()
        return ModelColumns(metadata["modelled"], metadata["context"], metadata["table_columns"], metadata["ignored"],
                            metadata["discrete"], metadata["bounds"])

    def other(self, table: Table, label: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Standardised modelled and context values of another table (``--test``), checked like the data."""
        values, context = align(table, self.model_columns(), label)
        names = self.roles.metadata()["modelled"]
        bounds = {names.index(self.roles.names[index]): bound for index, bound in self.roles.bounds.items()}
        check_bounds(values, names, bounds, label)
        for position in self.roles.positions(self.roles.discrete):
            column = values[:, position]
            fractional = np.flatnonzero(column != np.round(column))
            if len(fractional):
                raise DataError(f"{label}: integer column {names[position]!r} holds a fraction "
                                f"(row {fractional[0]}: {column[fractional[0]]:g})")
        return self.standardizer.transform(values), \
            None if context is None else self.standardizer.context.transform(context)


def prepare(table: Table, columns=None, exclude=None, context=None, discrete=None, continuous=None,
            bounds=()) -> PreparedTable:
    """Roles from the options, then the modelled and context arrays and their standardisation.
    Integer and bounded columns stay in the data's units (their preprocessing layers work there;
    the whitening layer behind them scales them); the others are standardised in float64."""
    roles = column_roles(table.columns, table.values, columns=columns, exclude=exclude, context=context,
                         discrete=discrete, continuous=continuous, bounds=bounds)
    values = take_columns(table.values, roles.modelled)
    names = [table.columns[index] for index in roles.modelled]
    unscaled = roles.positions(sorted(set(roles.discrete) | set(roles.bounds)))
    standardizer = Standardizer.fit(Table(values, names), unscaled=unscaled)
    context_values = None
    if roles.context:
        context_values = table.values[:, roles.context]
        standardizer.context = Standardizer.fit(Table(context_values, [table.columns[i] for i in roles.context]))
    return PreparedTable(roles, values, context_values, standardizer, roles.preprocessing(table.values))
