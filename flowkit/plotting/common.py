"""What every picture shares: the format a name asks for, atomic saving, and density panels with a
stated colour scale.

The ``flowkit.plotting`` package holds the only modules that import matplotlib. They draw on
``Figure`` objects directly (no pyplot), so they never touch a global backend or leak figures, and
write pictures atomically in the format their name asks for (PNG by default).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from flowkit.data.grid import DensityGrid
from flowkit.io import atomic_write

DENSITY_MAP = "viridis"
LOG_DECADES = 3.0  # a log colour scale spans this many powers of ten below the peak


def picture_format(path: str | Path) -> str:
    """The image format a picture's name asks for (``.png``, ``.pdf``, ``.svg``, ``.jpg``...);
    PNG when the name has no suffix. Raises ValueError for a suffix matplotlib cannot write."""
    suffix = Path(path).suffix.lower().lstrip(".")
    supported = Figure().canvas.get_supported_filetypes()
    if suffix and suffix not in supported:
        raise ValueError(f"{path}: cannot write a .{suffix} picture; use one of .{', .'.join(sorted(supported))}")
    return suffix or "png"


def save(figure: Figure, path: str | Path, dpi: int = 110, tight: bool = True) -> None:
    """Write ``figure`` atomically; ``tight=False`` keeps its exact size (``figsize * dpi`` pixels),
    which figures laid out by matplotlib's constrained layout need no trimming for."""
    image_format = picture_format(path)
    atomic_write(path, lambda handle: figure.savefig(handle, format=image_format, dpi=dpi,
                                                     bbox_inches="tight" if tight else None))


def density_norm(peak: float, scale: str = "log") -> Normalize:
    """The colour scale of density panels: ``"log"`` spans ``LOG_DECADES`` decades below ``peak``
    (so low-density bridges and tails stay visible), ``"linear"`` runs from 0 to ``peak``."""
    if scale == "log":
        return LogNorm(vmin=peak * 10**-LOG_DECADES, vmax=peak, clip=True)
    if scale == "linear":
        return Normalize(vmin=0.0, vmax=peak, clip=True)
    raise ValueError(f"unknown colour scale {scale!r}; choose log or linear")


def draw_density(axis, grid: DensityGrid, norm: Normalize):
    """The grid's density as an image on ``axis`` (cell centres at the pixels' centres)."""
    image = axis.imshow(np.clip(grid.density, 1e-300, None), origin="lower", extent=grid.box.extent,
                        aspect="auto", cmap=DENSITY_MAP, norm=norm, interpolation="nearest")
    axis.set_xlim(grid.box.low[0], grid.box.high[0])
    axis.set_ylim(grid.box.low[1], grid.box.high[1])
    return image


def colour_bar(figure: Figure, image, axis, scale: str) -> None:
    bar = figure.colorbar(image, ax=axis, fraction=0.046, pad=0.03)
    bar.set_label(f"density ({scale} scale)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
