"""Bijectors: the contract, structures, transformers and simple layers."""

from flowkit.bijectors.autoregressive import MaskedAutoregressive
from flowkit.bijectors.base import Bijector, Chain, Inverse
from flowkit.bijectors.coupling import Coupling
from flowkit.bijectors.elementwise import Logit, Sigmoid, Softplus
from flowkit.bijectors.linear import LULinear, Permutation, Whitening
from flowkit.bijectors.normalization import ActNorm, BatchNorm
from flowkit.bijectors.transformers import Additive, Affine, RationalQuadraticSpline, Transformer
from flowkit.bijectors.unconditional import Unconditional

__all__ = [
    "ActNorm", "Additive", "Affine", "BatchNorm", "Bijector", "Chain", "Coupling", "Inverse", "LULinear", "Logit",
    "MaskedAutoregressive", "Permutation", "RationalQuadraticSpline", "Sigmoid", "Softplus", "Transformer",
    "Unconditional", "Whitening",
]
