"""PyTorch trainer: datasets, model, optimizers and the training loop.

Nothing in this package knows about Ray or MLflow: the training loop is a plain
function that takes a typed config, a dataset and a reporting callback.
"""

from trainer.config import MLPConfig
from trainer.data import DataConfig, Dataset, load_dataset
from trainer.loop import EpochMetrics, StopTraining, TrainingDiverged, TrainResult, evaluate, train

__all__ = [
    "DataConfig",
    "Dataset",
    "EpochMetrics",
    "MLPConfig",
    "StopTraining",
    "TrainResult",
    "TrainingDiverged",
    "evaluate",
    "load_dataset",
    "train",
]
