"""flowkit: normalizing flows on PyTorch."""

from flowkit import bijectors
from flowkit.distributions import DiagGaussian
from flowkit.flow import Flow
from flowkit.presets import build, realnvp

__all__ = ["DiagGaussian", "Flow", "bijectors", "build", "realnvp"]
__version__ = "0.1.0"
