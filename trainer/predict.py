"""Outputs of a trained model for later evaluation: logits, probabilities, embeddings.

All functions run in eval mode (no dropout, batchnorm running statistics), without
gradients, in chunks, and leave the model's train/eval mode as they found it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from trainer.config import Task

EVAL_CHUNK = 8192  # rows per forward pass when evaluating a whole split


@torch.no_grad()  # not inference_mode: callers may feed the outputs into autograd later
def _chunked(module: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device  # a model on a GPU gets its chunks there; outputs come back
    try:
        return torch.cat([module(x[s : s + EVAL_CHUNK].to(device)).to(x.device)
                          for s in range(0, max(len(x), 1), EVAL_CHUNK)])
    finally:
        model.train(was_training)


def logits(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Raw outputs: (n, K) logits for multiclass, (n, 1) for binary (a logit) and regression."""
    return _chunked(model, model, x)


def predict(model: nn.Sequential, x: torch.Tensor, task: Task = "multiclass") -> torch.Tensor:
    """Class probabilities (n, K) for multiclass, P(y=1) (n,) for binary, predictions (n,) for regression.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3))
        >>> predict(m, torch.zeros(4, 2)).sum(dim=1).allclose(torch.ones(4))
        True
    """
    return _outputs(logits(model, x), task)


def _outputs(out: torch.Tensor, task: Task) -> torch.Tensor:
    if task == "multiclass":
        return torch.softmax(out, dim=1)
    if task == "binary":
        return torch.sigmoid(out[:, 0])
    return out[:, 0]


def embed(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Activations of the last hidden layer (after activation and, in eval, no dropout): (n, width).

    Without hidden layers this is the input itself.
    """
    return _chunked(model[:-1], model, x)


def predict_and_embed(model: nn.Sequential, x: torch.Tensor, task: Task = "multiclass") -> tuple[torch.Tensor, torch.Tensor]:
    """``(predict(model, x, task), embed(model, x))`` from one pass through the hidden layers.

    The output layer runs on the embedding, chunk by chunk as :func:`predict` runs the whole
    model, so both tensors equal those of the two separate calls.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
        >>> x = torch.randn(5, 2)
        >>> out, hidden = predict_and_embed(m, x)
        >>> bool(torch.equal(out, predict(m, x)) and torch.equal(hidden, embed(m, x)))
        True
    """
    hidden = embed(model, x)
    return _outputs(_chunked(model[-1], model, hidden), task), hidden
