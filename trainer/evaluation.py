"""The end-of-trial evaluation: every metric on validation and test, and a bias-variance diagnosis.

Made once when a trial ends (never per epoch), from the model as it stands: the completed
model, the best weights when early stopping restored them, or the model at the epoch a
scheduler stopped it. Plots are made from :class:`TrialEvaluation` by ``tracking.artifacts``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from trainer.data import Dataset
from trainer.diagnosis import DiagnosisThresholds, baseline_error, diagnose, overfitting_onset
from trainer.loop import TrainResult
from trainer.metrics import (
    ClassCurves,
    classification_metrics,
    classification_metrics_and_curves,
    regression_metrics,
)
from trainer.predict import predict, predict_and_embed


TRAIN_ERROR_SAMPLES = 10_000  # the diagnosis's train error is measured on at most this many train samples


@dataclass
class TrialEvaluation:
    """Metrics, diagnosis tags, and the test-split arrays the plots are drawn from."""

    task: str
    metrics: dict[str, float]
    tags: dict[str, str]
    class_names: tuple[str, ...]
    y_test: np.ndarray
    test_output: np.ndarray  # class probabilities (n, K), P(y=1) (n,), or predictions (n,)
    test_hidden: np.ndarray  # last-hidden-layer activations on the test split
    advice: str = ""
    history: list[dict[str, float]] = field(default_factory=list)
    test_curves: list[ClassCurves] | None = None  # the test split's ROC / PR curves (classification)

    @property
    def test_labels(self) -> np.ndarray:
        """Predicted classes (classification only)."""
        if self.task == "binary":
            return (self.test_output >= 0.5).astype(np.int64)
        return self.test_output.argmax(axis=1)


def val_metric(name: str, data: Dataset) -> Callable[[nn.Module], dict[str, float]]:
    """A per-epoch hook computing one evaluation metric (e.g. ``val_mcc``) on the validation split."""
    y = data.y_val.numpy()

    def compute(model: nn.Module) -> dict[str, float]:
        output = predict(model, data.x_val, data.task).numpy()
        if data.task == "regression":
            values = regression_metrics(y, output, prefix="val")
        else:
            values = classification_metrics(y, output, prefix="val", class_names=list(data.class_names))
        return {name: values[name]}

    return compute


def _split_error(task: str, output: np.ndarray, y: np.ndarray) -> float:
    """1 - accuracy for classification, MSE for regression (the diagnosis's units)."""
    if task == "regression":
        return float(np.mean((output - y) ** 2))
    predicted = (output >= 0.5).astype(np.int64) if task == "binary" else output.argmax(axis=1)
    return float(np.mean(predicted != y))


def evaluate_trial(
    result: TrainResult,
    data: Dataset,
    *,
    reference_error: float | None = None,
    thresholds: DiagnosisThresholds = DiagnosisThresholds(),
    overfit_patience: int = 3,
) -> TrialEvaluation:
    """Evaluate a trained model on every split and diagnose its fit.

    Metrics: scikit-learn's, named ``val_*`` and ``test_*`` (see :mod:`trainer.metrics`), plus
    ``diag_*`` (train / validation / test error, variance, avoidable bias, the naive baseline's
    error) and ``overfit_onset_epoch`` when the learning curves show one.
    """
    task = data.task
    x_train, y_train = data.x_train, data.y_train
    if len(x_train) > TRAIN_ERROR_SAMPLES:  # the train error of a fixed random subset: ±0.5% at most
        keep = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:TRAIN_ERROR_SAMPLES]
        x_train, y_train = x_train[keep], y_train[keep]
    inputs = {"train": (x_train, y_train), "val": (data.x_val, data.y_val), "test": (data.x_test, data.y_test)}
    outputs = {split: result.predict(x).numpy() for split, (x, _) in inputs.items() if split != "test"}
    test_output, test_hidden = predict_and_embed(result.model, data.x_test, task)  # one pass for both
    outputs["test"] = test_output.numpy()
    labels = {split: y.numpy() for split, (_, y) in inputs.items()}
    metrics: dict[str, float] = {}
    curves = None
    if task == "regression":
        for split in ("val", "test"):
            metrics.update(regression_metrics(labels[split], outputs[split], prefix=split))
    else:
        names = list(data.class_names)
        metrics.update(classification_metrics(labels["val"], outputs["val"], prefix="val", class_names=names))
        # The test split's ROC / PR curves are kept for the plot: computed once per class.
        test_metrics, curves = classification_metrics_and_curves(labels["test"], outputs["test"], prefix="test",
                                                                 class_names=names)
        metrics.update(test_metrics)
    errors = {split: _split_error(task, outputs[split], labels[split]) for split in outputs}
    diagnosis = diagnose(
        errors["train"], errors["val"], test_error=errors["test"], reference_error=reference_error,
        baseline_error=baseline_error(labels["train"], labels["val"], task), thresholds=thresholds,
    )
    metrics.update(diagnosis.as_metrics())
    onset = overfitting_onset([h.train_loss for h in result.history], [h.val_loss for h in result.history],
                              patience=overfit_patience)
    if onset is not None:
        metrics["overfit_onset_epoch"] = float(onset)
    return TrialEvaluation(
        task=task, metrics=metrics, tags=diagnosis.as_tags(), class_names=tuple(data.class_names),
        y_test=labels["test"], test_output=outputs["test"], test_hidden=test_hidden.numpy(),
        advice=diagnosis.advice, history=[h.as_dict() for h in result.history], test_curves=curves,
    )
