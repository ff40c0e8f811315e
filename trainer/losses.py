"""Losses per task: what training minimizes and what evaluation reports.

- multiclass: softmax + cross-entropy over K logits
- binary: one logit, sigmoid + binary cross-entropy
- regression: one output; ``mse`` (y - f)^2, ``mae`` |y - f|, ``huber``
  0.5 r^2 for |r| <= delta else delta (|r| - 0.5 delta)

Class weights w_k make the training loss sum_i w_{y_i} l_i / sum_i w_{y_i} (PyTorch's
convention for weighted cross-entropy, used for binary too). Label smoothing eps
trains against (1 - eps) onehot + eps / K (K = 2 for binary).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.config import MLPConfig, Task


def class_weights(config: MLPConfig, y_train: torch.Tensor, n_classes: int) -> torch.Tensor | None:
    """Per-class loss weights: None, explicit, or balanced n / (K n_k) (scikit-learn's rule).

    Example:
        >>> class_weights(MLPConfig(class_weight="balanced"), torch.tensor([0, 0, 0, 1]), 2)
        tensor([0.6667, 2.0000])
    """
    if config.class_weight == "none":
        return None
    if isinstance(config.class_weight, tuple):
        if len(config.class_weight) != n_classes:
            raise ValueError(f"class_weight={list(config.class_weight)!r}: has {len(config.class_weight)} "
                             f"weights; the dataset has {n_classes} classes")
        return torch.tensor(config.class_weight, dtype=torch.float32)
    counts = torch.bincount(y_train.long(), minlength=n_classes).float()
    return len(y_train) / (n_classes * counts.clamp(min=1.0))


def per_sample_loss(
    task: Task,
    out: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str = "auto",
    huber_delta: float = 1.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The unweighted loss of every sample: shape (n,). ``out`` is the model's raw output."""
    if task == "multiclass":
        return F.cross_entropy(out, y, reduction="none", label_smoothing=label_smoothing)
    pred = out[:, 0]
    if task == "binary":
        target = y.to(pred.dtype)
        if label_smoothing > 0:
            target = target * (1 - label_smoothing) + label_smoothing / 2
        return F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    target = y.to(pred.dtype)
    if loss == "mae":
        return F.l1_loss(pred, target, reduction="none")
    if loss == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=huber_delta)
    return F.mse_loss(pred, target, reduction="none")


class TrainingLoss:
    """The mean training loss of a batch for ``config`` on a ``task`` (penalties excluded).

    Example:
        >>> f = TrainingLoss(MLPConfig(), "binary")
        >>> round(float(f(torch.zeros(2, 1), torch.tensor([0, 1]))), 4)
        0.6931
    """

    def __init__(self, config: MLPConfig, task: Task, weights: torch.Tensor | None = None):
        self.config = config
        self.task = task
        self.weights = weights

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.config
        if self.task == "multiclass":  # PyTorch's fused path, weights and smoothing included
            return F.cross_entropy(out, y, weight=self.weights, label_smoothing=c.label_smoothing)
        losses = per_sample_loss(self.task, out, y, loss=c.loss, huber_delta=c.huber_delta,
                                 label_smoothing=c.label_smoothing)
        if self.weights is None:
            return losses.mean()
        w = self.weights[y.long()]
        return (w * losses).sum() / w.sum()
