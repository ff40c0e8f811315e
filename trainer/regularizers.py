"""Regularizers that act on gradients, weights and inputs, and early stopping.

The L1 / L2 penalties never enter the autograd graph: their gradients are added
directly after ``backward()`` (same result, no extra graph), which keeps them cheap:

    d/dw (l1 sum|w| + l2 sum w^2) = l1 sign(w) + 2 l2 w
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn


@torch.no_grad()
def add_penalty_gradients(params: Sequence[torch.Tensor], l1: float, l2: float) -> None:
    """g += l1 sign(w) + 2 l2 w for every ``w`` in ``params`` that has a gradient.

    Example:
        >>> w = torch.tensor([-2.0, 0.0, 3.0], requires_grad=True); w.grad = torch.zeros(3)
        >>> add_penalty_gradients([w], l1=0.5, l2=0.25); w.grad
        tensor([-1.5000,  0.0000,  2.0000])
    """
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return
    grads = [p.grad for p in with_grad]
    if l2 > 0:
        torch._foreach_add_(grads, with_grad, alpha=2.0 * l2)
    if l1 > 0:
        torch._foreach_add_(grads, torch._foreach_sign(with_grad), alpha=l1)


def penalty_value(params: Sequence[torch.Tensor], l1: float, l2: float) -> torch.Tensor:
    """l1 sum|w| + l2 sum w^2 (the loss term whose gradient :func:`add_penalty_gradients` adds)."""
    total = torch.zeros(())
    for p in params:
        if l1 > 0:
            total = total + l1 * p.abs().sum()
        if l2 > 0:
            total = total + l2 * (p * p).sum()
    return total


class WeightNoise:
    """Gaussian noise on weights for one training forward/backward pass.

    ``perturb()`` keeps a copy of the clean weights and adds eps ~ N(0, sigma^2) in place;
    ``restore()`` copies the clean weights back (exactly: no (w + eps) - eps rounding), so
    the gradient is taken at w + eps and the optimizer updates the clean w.
    """

    def __init__(self, weights: Sequence[torch.Tensor], sigma: float, generator: torch.Generator):
        self.weights = list(weights)
        self.sigma = sigma
        self.generator = generator
        self._clean: list[torch.Tensor] = []

    @torch.no_grad()
    def perturb(self) -> None:
        self._clean = [w.clone() for w in self.weights]
        for w in self.weights:
            w.add_(torch.randn(w.shape, generator=self.generator).to(w.device), alpha=self.sigma)

    @torch.no_grad()
    def restore(self) -> None:
        torch._foreach_copy_(self.weights, self._clean)
        self._clean = []


@torch.no_grad()
def add_gradient_noise(params: Sequence[torch.Tensor], sigma: float, generator: torch.Generator) -> None:
    """g += N(0, sigma^2), independently per element."""
    for p in params:
        if p.grad is not None:
            p.grad.add_(torch.randn(p.grad.shape, generator=generator).to(p.device), alpha=sigma)


class EarlyStopping:
    """Counts epochs without improvement of a monitored value (lower is better).

    An epoch improves when ``value < best - min_delta``. :meth:`update` returns True
    once ``patience`` epochs in a row failed to improve.

    Example:
        >>> es = EarlyStopping(patience=2)
        >>> [es.update(v) for v in [1.0, 0.8, 0.9, 0.85]]
        [False, False, False, True]
        >>> es.best_epoch
        2
    """

    def __init__(self, patience: int, min_delta: float = 0.0):
        if patience < 1:
            raise ValueError(f"patience={patience}: must be >= 1")
        if min_delta < 0:
            raise ValueError(f"min_delta={min_delta}: must be >= 0")
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.epoch = 0

    @property
    def improved(self) -> bool:
        """Whether the last value fed was a new best."""
        return self.epoch > 0 and self.best_epoch == self.epoch

    def update(self, value: float) -> bool:
        """Feed the next epoch's value; True when patience has run out."""
        self.epoch += 1
        if value < self.best - self.min_delta:
            self.best = value
            self.best_epoch = self.epoch
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience


class BestWeights:
    """A copy of a model's state at its lowest validation loss, to restore before testing.

    Example:
        >>> m = torch.nn.Linear(1, 1); keeper = BestWeights()
        >>> keeper.offer(m, 1, 0.5); keeper.offer(m, 2, 0.7); keeper.epoch
        1
    """

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None
        self.value = math.inf
        self.epoch = 0

    def offer(self, model: nn.Module, epoch: int, value: float) -> None:
        """Keep a copy of ``model`` when ``value`` is the lowest so far."""
        if value < self.value:
            self.value, self.epoch = value, epoch
            self.state = copy.deepcopy(model.state_dict())

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)
