"""A trial's plots and reports as MLflow artifacts, written once when the trial ends."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from tracking import plots

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"  # artifact folder of a trial's PNGs and JSON reports
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def read_text_artifact(client: MlflowClient, run_id: str, path: str) -> str | None:
    """The text of one small artifact of a run, or None when the run has no such artifact.

    MLflow's download progress bar is off for the call: it would print two bars on stderr
    for a file of a few kilobytes (``sweep resume`` and ``sweep report`` read specs this way).
    """
    previous = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        with tempfile.TemporaryDirectory() as folder:
            return Path(client.download_artifacts(run_id, path, folder)).read_text(encoding="utf-8")
    except Exception as e:  # noqa: BLE001 - a missing artifact reads as None
        logger.info("run %s has no artifact %s (%s)", run_id, path, e)
        return None
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = previous


def trial_artifacts(evaluation: Any, *, early_stop_epoch: int | None = None, stopped_epoch: int | None = None,
                    embedding: str = "pca") -> dict[str, bytes]:
    """File name -> contents for one trial: learning curves, confusion matrix, ROC/PR curves,
    the last hidden layer in 2-D and the per-class report (classification), or residuals (regression)."""
    files: dict[str, bytes] = {
        "learning_curves.png": plots.learning_curves_png(evaluation.history, early_stop_epoch=early_stop_epoch,
                                                         stopped_epoch=stopped_epoch),
    }
    names = list(evaluation.class_names)
    if evaluation.task == "regression":
        files["residuals.png"] = plots.residuals_png(evaluation.y_test, evaluation.test_output)
    else:
        predicted = evaluation.test_labels
        files["confusion_matrix.png"] = plots.confusion_matrix_png(evaluation.y_test, predicted, names)
        files["roc_pr_curves.png"] = plots.roc_pr_png(evaluation.y_test, evaluation.test_output, names,
                                                      curves=getattr(evaluation, "test_curves", None))
        files["classification_report.json"] = plots.classification_report_json(
            evaluation.y_test, predicted, names).encode()
        if evaluation.test_hidden.ndim == 2 and evaluation.test_hidden.shape[1] >= 2:
            files[f"hidden_{embedding}.png"] = plots.embedding_png(
                evaluation.test_hidden, evaluation.y_test, names, method=embedding)
    files["diagnosis.json"] = json.dumps(
        {"tags": evaluation.tags, "advice": evaluation.advice,
         "metrics": {k: v for k, v in evaluation.metrics.items() if k.startswith("diag_")}}, indent=2).encode()
    return files


def log_files(client: MlflowClient, run_id: str, files: dict[str, bytes], artifact_path: str = PLOTS_DIR) -> None:
    """Write the files to a temporary folder and upload them in one call."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content)
        client.log_artifacts(run_id, tmp, artifact_path=artifact_path)
