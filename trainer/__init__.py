"""PyTorch trainer: datasets, model, optimizers, regularizers and the training loop.

Nothing in this package knows about Ray or MLflow: the training loop is a plain
function that takes a typed config, a dataset and a reporting callback.
"""

from trainer.config import MLPConfig
from trainer.crossval import cross_validate
from trainer.data import DataConfig, Dataset, load_dataset
from trainer.loop import (
    EpochMetrics,
    StopTraining,
    TrainingDiverged,
    TrainResult,
    epoch_metric_names,
    evaluate,
    train,
)
from trainer.predict import embed, logits, predict

__all__ = [
    "DataConfig",
    "Dataset",
    "EpochMetrics",
    "MLPConfig",
    "StopTraining",
    "TrainResult",
    "TrainingDiverged",
    "cross_validate",
    "embed",
    "epoch_metric_names",
    "evaluate",
    "load_dataset",
    "logits",
    "predict",
    "train",
]
