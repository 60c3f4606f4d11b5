"""Conditioner networks: a plain MLP (coupling layers).

Every conditioner's output layer starts at zero, so the transformer it feeds starts at its
identity parameters and every layer starts as the identity map.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


def hidden_sizes(hidden_features: int | Sequence[int]) -> list[int]:
    """An int means two hidden layers of that width; a sequence gives each width."""
    if isinstance(hidden_features, int):
        return [hidden_features, hidden_features]
    sizes = [int(h) for h in hidden_features]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"hidden_features must be positive widths, got {hidden_features}")
    return sizes


class MLP(nn.Module):
    """Fully connected network with a zero-initialised output layer.

    Args:
        in_features: input width.
        out_features: output width.
        hidden_features: an int (two layers of that width) or a sequence of widths.
        activation: activation module class placed after each hidden layer.

    Example:
        >>> import torch
        >>> net = MLP(3, 4, hidden_features=8)
        >>> net(torch.randn(2, 3)).abs().sum().item()
        0.0
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int | Sequence[int] = 64,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden_sizes(hidden_features):
            layers += [nn.Linear(width, size), activation()]
            width = size
        output = nn.Linear(width, out_features)
        nn.init.zeros_(output.weight)
        nn.init.zeros_(output.bias)
        layers.append(output)
        self.network = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)
