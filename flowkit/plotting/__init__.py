"""Pictures; the only package that imports matplotlib.

``fits``: pictures of a fitted model (``flowkit fit`` / ``flowkit plot``); ``toys``: 2-D toy and
target fits (``flowkit toy``), their layers, training curves and animations; ``gallery``: all of
them in one figure; ``common``: saving and density panels.
"""

from flowkit.plotting.common import density_norm, picture_format
from flowkit.plotting.fits import plot_density_2d, plot_history, plot_layers, plot_marginals

__all__ = ["density_norm", "picture_format", "plot_density_2d", "plot_history", "plot_layers", "plot_marginals"]
