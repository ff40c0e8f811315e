"""The training loop: a plain function over in-memory tensors.

``train`` knows nothing of Ray or MLflow. It calls ``report(metrics)`` after
every epoch; a caller that wants to stop the run early (a scheduler, a pruner)
raises :class:`StopTraining` from ``report`` and still gets the test metrics of
the model as it stood.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import MLPConfig
from trainer.data import Dataset, default_threads
from trainer.model import build_mlp, weight_matrices
from trainer.optim import build_optimizer

logger = logging.getLogger(__name__)

EVAL_CHUNK = 8192  # rows per forward pass when evaluating a whole split


class StopTraining(Exception):
    """Raised by a ``report`` callback to end training after the current epoch."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch measured. ``epoch`` counts from 1."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    epoch_seconds: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass
class TrainResult:
    """The trained model, its learning curves and its test metrics."""

    model: nn.Module
    history: list[EpochMetrics] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    stopped_epoch: int | None = None  # set when report() raised StopTraining

    @property
    def completed(self) -> bool:
        return self.stopped_epoch is None


Report = Callable[[EpochMetrics], None]


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on (x, y), in eval mode."""
    was_training = model.training
    model.eval()
    total_loss = 0.0
    correct = 0
    for start in range(0, len(x), EVAL_CHUNK):
        logits = model(x[start : start + EVAL_CHUNK])
        target = y[start : start + EVAL_CHUNK]
        total_loss += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    model.train(was_training)
    n = max(len(x), 1)
    return {"loss": total_loss / n, "accuracy": correct / n}


def train(
    config: MLPConfig,
    data: Dataset,
    report: Report | None = None,
    *,
    threads: int | None = None,
) -> TrainResult:
    """Train the built-in MLP on ``data`` and evaluate it on the test split.

    Args:
        config: hyperparameters.
        data: in-memory train / val / test tensors.
        report: called after every epoch; may raise :class:`StopTraining`.
        threads: torch intra-op threads (default: the CPUs this process may use).

    Raises:
        TrainingDiverged: the training loss became NaN or infinite.

    Example:
        >>> from trainer.data import DataConfig, load_dataset
        >>> result = train(MLPConfig(epochs=2, hidden_size=16), load_dataset(DataConfig()))
        >>> len(result.history), sorted(result.test)
        (2, ['test_accuracy', 'test_loss'])
    """
    torch.set_num_threads(threads or default_threads())
    torch.manual_seed(config.seed)  # weight init and dropout masks
    order = torch.Generator().manual_seed(config.seed)  # data order
    model = build_mlp(config, data.n_features, data.n_classes)
    optimizer = build_optimizer(config, model.parameters())
    penalized = weight_matrices(model)
    x, y = data.x_train, data.y_train
    n = len(x)
    result = TrainResult(model=model)

    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros(())
        correct = torch.zeros((), dtype=torch.long)
        perm = torch.randperm(n, generator=order)
        for start in range(0, n, config.batch_size):
            idx = perm[start : start + config.batch_size]
            xb, yb = x[idx], y[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            objective = loss
            if config.l2 > 0:
                objective = objective + config.l2 * sum((w * w).sum() for w in penalized)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(dim=1) == yb).sum()
        train_loss = float(loss_sum) / n
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"epoch {epoch}: training loss is {train_loss} (lr={config.lr:g})")
        val = evaluate(model, data.x_val, data.y_val)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=int(correct) / n,
            val_loss=val["loss"],
            val_accuracy=val["accuracy"],
            lr=optimizer.param_groups[0]["lr"],
            epoch_seconds=time.perf_counter() - started,
        )
        result.history.append(metrics)
        if report is not None:
            try:
                report(metrics)
            except StopTraining:
                result.stopped_epoch = epoch
                logger.debug("training stopped by the caller after epoch %d", epoch)
                break

    test = evaluate(model, data.x_test, data.y_test)
    result.test = {f"test_{k}": v for k, v in test.items()}
    return result
