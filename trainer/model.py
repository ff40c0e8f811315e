"""The built-in multilayer perceptron."""

from __future__ import annotations

import torch
from torch import nn

from trainer.config import MLPConfig

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def build_mlp(config: MLPConfig, n_features: int, n_outputs: int) -> nn.Sequential:
    """Linear -> activation -> dropout for each hidden layer, then a linear output layer.

    Example:
        >>> m = build_mlp(MLPConfig(hidden_sizes=(8, 4)), n_features=3, n_outputs=2)
        >>> [layer.out_features for layer in m if isinstance(layer, torch.nn.Linear)]
        [8, 4, 2]
    """
    layers: list[nn.Module] = []
    width_in = n_features
    for width in config.widths():
        layers.append(nn.Linear(width_in, width))
        layers.append(_ACTIVATIONS[config.activation]())
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        width_in = width
    layers.append(nn.Linear(width_in, n_outputs))
    return nn.Sequential(*layers)


def weight_matrices(model: nn.Module) -> list[torch.Tensor]:
    """The weights that penalties apply to: every Linear layer's weight, never a bias."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
