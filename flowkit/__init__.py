"""flowkit: normalizing flows on PyTorch."""

from flowkit import bijectors, interop  # interop registers the nflows_* presets
from flowkit.distributions import DiagGaussian
from flowkit.flow import Flow
from flowkit.importance import ImportanceResult, ImportanceWarning, importance_sample
from flowkit.presets import build, iaf, maf, nsf, nsf_coupling, realnvp
from flowkit.torch_distribution import FlowDistribution
from flowkit.train import FitResult, fit_density, fit_variational

__all__ = [
    "DiagGaussian", "FitResult", "Flow", "FlowDistribution", "ImportanceResult", "ImportanceWarning", "bijectors",
    "build", "fit_density", "fit_variational", "iaf", "importance_sample", "interop", "maf", "nsf", "nsf_coupling",
    "realnvp",
]
__version__ = "0.1.0"
