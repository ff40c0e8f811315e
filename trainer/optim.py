"""Optimizers by name.

Update rules (g: gradient, eta: ``lr``, alpha: ``momentum``):

- ``sgd``: w <- w - eta * g
- ``momentum``: v <- alpha * v - eta * g; w <- w + v  (PyTorch's form is equivalent for constant eta)
- ``nesterov``: momentum evaluated at the look-ahead point
- ``adam``: bias-corrected first and second moments (beta1=0.9, beta2=0.999, eps=1e-8)
- ``adamw``: Adam with decoupled weight decay ``weight_decay``
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from trainer.config import MLPConfig


def build_optimizer(config: MLPConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Instantiate the optimizer named by ``config.optimizer``."""
    params = list(params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr)
    if config.optimizer == "momentum":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "nesterov":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"optimizer={config.optimizer!r}: must be one of sgd, momentum, nesterov, adam, adamw")
