"""End-of-trial evaluation on real (small) tasks: metrics equal scikit-learn's, plots are PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from tracking.artifacts import trial_artifacts
from tracking.plots import FIGURE_PIXELS, png_dimensions
from trainer import DataConfig, MLPConfig, StopTraining, load_dataset, train
from trainer.diagnosis import VERDICTS
from trainer.evaluation import evaluate_trial


@pytest.fixture(scope="module")
def digits_trial():
    data = load_dataset(DataConfig(dataset="digits"))
    result = train(MLPConfig(epochs=4, hidden_size=32, lr=3e-3), data, threads=1)
    return data, result, evaluate_trial(result, data)


def test_multiclass_metrics_match_scikit_learn(digits_trial) -> None:
    data, result, ev = digits_trial
    proba = result.predict(data.x_test).numpy()
    y = data.y_test.numpy()
    pred = proba.argmax(axis=1)
    m = ev.metrics
    assert m["test_accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["test_f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["test_mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert m["test_log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=list(range(10))), rel=1e-5)
    assert m["test_roc_auc_ovr_macro"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"), rel=1e-6)
    assert m["test_accuracy"] == pytest.approx(result.test["test_accuracy"])
    assert {"val_accuracy", "val_cohen_kappa", "test_top3_accuracy"} <= set(m)


def test_diagnosis_is_recorded(digits_trial) -> None:
    data, result, ev = digits_trial
    m = ev.metrics
    assert m["diag_variance"] == pytest.approx(m["diag_val_error"] - m["diag_train_error"])
    assert m["diag_val_error"] == pytest.approx(1 - m["val_accuracy"])
    assert ev.tags["sweep.diagnosis"] in VERDICTS
    assert ev.tags["sweep.beats_baseline"] == "true"
    assert m["diag_baseline_error"] > 0.8  # predicting the majority digit is wrong about 90% of the time


def test_classification_artifacts_are_pngs_of_the_documented_size(digits_trial) -> None:
    data, result, ev = digits_trial
    files = trial_artifacts(ev)
    assert set(files) == {"learning_curves.png", "confusion_matrix.png", "roc_pr_curves.png", "hidden_pca.png",
                          "classification_report.json", "diagnosis.json"}
    for name, content in files.items():
        if name.endswith(".png"):
            assert content.startswith(b"\x89PNG")
    assert png_dimensions(files["confusion_matrix.png"]) == FIGURE_PIXELS["confusion_matrix"]
    report = json.loads(files["classification_report.json"])
    assert report["accuracy"] == pytest.approx(ev.metrics["test_accuracy"])


def test_binary_task_gets_counts_and_likelihood_ratios() -> None:
    data = load_dataset(DataConfig(dataset="breast_cancer"))
    result = train(MLPConfig(epochs=3, hidden_size=16, lr=3e-3), data, threads=1)
    ev = evaluate_trial(result, data)
    m = ev.metrics
    p = result.predict(data.x_test).numpy()
    y = data.y_test.numpy()
    tn, fp, fn, tp = skm.confusion_matrix(y, (p >= 0.5).astype(int), labels=[0, 1]).ravel()
    assert (m["test_tp"], m["test_fp"], m["test_tn"], m["test_fn"]) == (tp, fp, tn, fn)
    assert m["test_brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert "test_lr_plus" in m and "test_lr_minus" in m
    assert "roc_pr_curves.png" in trial_artifacts(ev)


def test_regression_task_gets_error_metrics_and_residuals() -> None:
    data = load_dataset(DataConfig(dataset="diabetes"))
    result = train(MLPConfig(epochs=3, hidden_size=16, lr=1e-2), data, threads=1)
    ev = evaluate_trial(result, data)
    pred = result.predict(data.x_test).numpy()
    y = data.y_test.numpy()
    assert ev.metrics["test_mse"] == pytest.approx(skm.mean_squared_error(y, pred), rel=1e-5)
    assert ev.metrics["test_r2"] == pytest.approx(skm.r2_score(y, pred), rel=1e-5)
    assert ev.metrics["diag_val_error"] == pytest.approx(ev.metrics["val_mse"], rel=1e-5)
    files = trial_artifacts(ev)
    assert "residuals.png" in files and "confusion_matrix.png" not in files


def test_stopped_trials_are_evaluated_too() -> None:
    data = load_dataset(DataConfig(dataset="digits"))

    def stop_after_two(m) -> None:
        if m.epoch == 2:
            raise StopTraining

    result = train(MLPConfig(epochs=10, hidden_size=16), data, stop_after_two, threads=1)
    ev = evaluate_trial(result, data)
    assert len(ev.history) == 2 and "test_f1_macro" in ev.metrics
    assert np.isfinite(ev.metrics["test_log_loss"])


def test_a_searched_evaluation_metric_is_reported_every_epoch() -> None:
    from trainer.evaluation import val_metric

    data = load_dataset(DataConfig(dataset="digits"))
    seen = []
    result = train(MLPConfig(epochs=3, hidden_size=16), data, lambda m: seen.append(m.as_dict()), threads=1,
                   epoch_metrics=val_metric("val_f1_macro", data))
    assert [round(d["epoch"]) for d in seen] == [1, 2, 3]
    pred = result.predict(data.x_val).numpy().argmax(axis=1)
    assert seen[-1]["val_f1_macro"] == pytest.approx(skm.f1_score(data.y_val.numpy(), pred, average="macro"))


def test_one_pass_gives_outputs_embedding_and_the_curves_the_plot_reuses(digits_trial) -> None:
    data, result, ev = digits_trial
    assert np.array_equal(ev.test_output, result.predict(data.x_test).numpy())  # same bits as two passes
    assert np.array_equal(ev.test_hidden, result.embed(data.x_test).numpy())
    assert [cv.index for cv in ev.test_curves] == list(range(10))
    assert ev.metrics["test_roc_auc_ovr_macro"] == np.mean([cv.auc for cv in ev.test_curves])
    assert ev.metrics["test_average_precision_macro"] == np.mean([cv.ap for cv in ev.test_curves])
    from tracking.plots import roc_pr_png

    assert trial_artifacts(ev)["roc_pr_curves.png"] == roc_pr_png(ev.y_test, ev.test_output, data.class_names)
