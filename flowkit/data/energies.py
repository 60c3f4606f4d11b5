"""Unnormalised 2-D energies: the U1-U4 of Rezende and Mohamed (2015) and a two-moons energy.

Their ``log_z`` is None (not known in closed form); ``flowkit.data.grid`` computes it on a grid,
accurately for these smooth, confined 2-D densities.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkit.data.target_base import Target


class RezendeEnergy(Target):
    """The 2-D energies U1-U4 of Rezende and Mohamed (2015, Table 1); ``log_prob = -U``.

    U2-U4 do not confine ``z_1`` (they are periodic in it, so improper), so by default a steep
    quadratic wall outside ``[-wall, wall]^2`` is added; it is zero inside the square the paper
    plots. ``wall=None`` gives the energies exactly as published. Unnormalised: ``log_z`` is None.

    Example:
        >>> import torch
        >>> RezendeEnergy(2)(torch.zeros(1, 2)).item()  # U2(0) = (0 - sin 0)^2 / (2 0.4^2)
        -0.0
    """

    def __init__(self, index: int, wall: float | None = 4.0) -> None:
        super().__init__()
        if index not in (1, 2, 3, 4):
            raise ValueError(f"Rezende-Mohamed energies are U1-U4, got index {index}")
        self.features, self.index, self.wall = 2, index, wall

    def energy(self, z: Tensor) -> Tensor:
        """``U(z)`` exactly as in the paper, shape ``(n,)``."""
        z1, z2 = z[:, 0], z[:, 1]
        w1 = torch.sin(2 * math.pi * z1 / 4)
        if self.index == 1:
            ring = 0.5 * ((z.norm(dim=1) - 2) / 0.4).square()
            modes = torch.stack([-0.5 * ((z1 - 2) / 0.6).square(), -0.5 * ((z1 + 2) / 0.6).square()])
            return ring - torch.logsumexp(modes, dim=0)
        if self.index == 2:
            return 0.5 * ((z2 - w1) / 0.4).square()
        if self.index == 3:
            w2 = 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6).square())
            branches = torch.stack([(z2 - w1) / 0.35, (z2 - w1 + w2) / 0.35])
            return -torch.logsumexp(-0.5 * branches.square(), dim=0)
        w3 = 3 * torch.sigmoid((z1 - 1) / 0.3)
        branches = torch.stack([(z2 - w1) / 0.4, (z2 - w1 + w3) / 0.35])
        return -torch.logsumexp(-0.5 * branches.square(), dim=0)

    def _log_prob(self, x: Tensor) -> Tensor:
        log_density = -self.energy(x)
        if self.wall is not None:
            outside = F.relu(x.abs() - self.wall)
            log_density = log_density - 0.5 * (outside / 0.1).square().sum(-1)
        return log_density


class TwoMoonsEnergy(Target):
    """A two-moons energy: a ring of radius 2 cut into two crescents at ``z_1 = +-2``, the 2-D
    benchmark of Stimper et al. (normflows, 2023)::

        log p(z) = -((|z| - 2) / 0.2)^2 / 2 - ((|z_1| - 2) / 0.3)^2 / 2 + log(1 + exp(-4 |z_1| / 0.09))

    Proper (the ring term confines every direction) but unnormalised: ``log_z`` is None.

    Example:
        >>> import torch
        >>> target = TwoMoonsEnergy()
        >>> bool(target(torch.tensor([[2.0, 0.0]])) > target(torch.tensor([[0.0, 2.0]])))  # a crescent's centre
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = 2

    def _log_prob(self, x: Tensor) -> Tensor:
        across = x[:, 0].abs()
        ring = -0.5 * ((x.norm(dim=1) - 2) / 0.2).square()
        # softplus(-4a / 0.09) is log(1 + exp(-4a / 0.09)) without overflow; it fills the gap at z_1 = 0
        return ring - 0.5 * ((across - 2) / 0.3).square() + F.softplus(-4 * across / 0.09)
