"""PyTorch trainer: datasets, model, optimizers, regularizers and the training loop.

Nothing in this package knows about Ray or MLflow: the training loop is a plain
function that takes a typed config, a dataset and a reporting callback.
"""

from trainer.config import MLPConfig
from trainer.crossval import CVResult, cross_validate, fold_datasets, train_cv, train_folds
from trainer.data import DataConfig, Dataset, load_dataset
from trainer.loop import (
    EpochMetrics,
    StopTraining,
    TrainingDiverged,
    TrainResult,
    drive,
    epoch_metric_names,
    evaluate,
    flush_denormals,
    train,
    train_epochs,
)
from trainer.predict import embed, logits, predict

__all__ = [
    "CVResult",
    "DataConfig",
    "Dataset",
    "EpochMetrics",
    "MLPConfig",
    "StopTraining",
    "TrainResult",
    "TrainingDiverged",
    "cross_validate",
    "drive",
    "embed",
    "epoch_metric_names",
    "evaluate",
    "flush_denormals",
    "fold_datasets",
    "load_dataset",
    "logits",
    "predict",
    "train",
    "train_cv",
    "train_epochs",
    "train_folds",
]
