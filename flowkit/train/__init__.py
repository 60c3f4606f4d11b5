"""Training: the one loop, maximum likelihood, reverse KL, checkpoints, progress, DDP."""

from flowkit.train.checkpoint import load_checkpoint, save_checkpoint
from flowkit.train.density import fit_density
from flowkit.train.loop import LoopConfig, train_loop
from flowkit.train.losses import negative_log_likelihood
from flowkit.train.result import FitResult
from flowkit.train.variational import fit_variational

__all__ = [
    "FitResult", "LoopConfig", "fit_density", "fit_variational", "load_checkpoint",
    "negative_log_likelihood", "save_checkpoint", "train_loop",
]
