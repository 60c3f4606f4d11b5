"""Bijectors: the contract, structures, transformers and simple layers."""

from flowkit.bijectors.base import Bijector, Chain, Inverse
from flowkit.bijectors.coupling import Coupling
from flowkit.bijectors.linear import Permutation
from flowkit.bijectors.normalization import ActNorm
from flowkit.bijectors.transformers import Additive, Affine, Transformer

__all__ = ["ActNorm", "Additive", "Affine", "Bijector", "Chain", "Coupling", "Inverse",
           "Permutation", "Transformer"]
