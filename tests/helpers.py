"""Small datasets, a hand-computed reference step and checkpoint helpers shared by the trainer tests."""

from __future__ import annotations

import io

import torch

from trainer import Dataset, MLPConfig
from trainer.loop import EpochMetrics, TrainState
from trainer.model import build_mlp


def tiny(n: int = 64, features: int = 5, classes: int = 3, seed: int = 0) -> Dataset:
    """A small multiclass problem (labels from the first two features)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return Dataset("tiny", x, y, x[:16], y[:16], x[16:32], y[16:32], tuple(str(i) for i in range(classes)))


def tiny_regression(n: int = 64, features: int = 4, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = 2 * x[:, 0] - x[:, 1] + 0.1 * torch.randn(n, generator=g)
    return Dataset("tiny-reg", x, y, x[:16], y[:16], x[16:32], y[16:32], (), task="regression")


def initial_model(config: MLPConfig, data: Dataset) -> torch.nn.Sequential:
    """The model ``train`` starts from (same seed, same construction order)."""
    torch.manual_seed(config.seed)
    return build_mlp(config, data.n_features, data.n_outputs)


def data_gradient(model: torch.nn.Module, data: Dataset) -> list[torch.Tensor]:
    """Gradient of the mean cross-entropy on the whole training split."""
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
    return [p.grad.clone() for p in model.parameters()]


def curves(history: list[EpochMetrics]) -> list[dict[str, float]]:
    """A run's learning curves without the wall-clock ``epoch_seconds``: what reruns must reproduce."""
    return [{k: v for k, v in m.as_dict().items() if k != "epoch_seconds"} for m in history]


def roundtrip(state: TrainState) -> TrainState:
    """Through bytes, as a checkpoint on disk is: torch.save, then the safe loader."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)
