"""trainer.metrics: values equal scikit-learn's, names are stable, degenerate inputs never raise."""

from __future__ import annotations

import doctest
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from trainer import metrics as M
from trainer.metrics import classification_metrics, metric_mode, metric_names, regression_metrics


def _softmax_data(n: int, c: int, seed: int = 0, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c  # every class present
    rng.shuffle(y)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += signal
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


@pytest.fixture(autouse=True)
def _no_warning_escapes():
    """The metric functions swallow scikit-learn's undefined-metric warnings themselves."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # sklearn's UndefinedMetricWarning is a UserWarning
        warnings.simplefilter("error", RuntimeWarning)  # numpy's 0/0
        yield


def test_doctests() -> None:
    assert doctest.testmod(M, raise_on_error=False).failed == 0


@pytest.mark.parametrize("c", [3, 4, 10])
def test_multiclass_matches_sklearn(c: int) -> None:
    y, p = _softmax_data(400, c, seed=c)
    pred = p.argmax(axis=1)
    labels = list(range(c))
    m = classification_metrics(y, p, prefix="test")
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "precision_macro": skm.precision_score(y, pred, average="macro", labels=labels, zero_division=0),
        "precision_weighted": skm.precision_score(y, pred, average="weighted", labels=labels, zero_division=0),
        "recall_macro": skm.recall_score(y, pred, average="macro", labels=labels, zero_division=0),
        "recall_weighted": skm.recall_score(y, pred, average="weighted", labels=labels, zero_division=0),
        "f1_macro": skm.f1_score(y, pred, average="macro", labels=labels, zero_division=0),
        "f1_weighted": skm.f1_score(y, pred, average="weighted", labels=labels, zero_division=0),
        "fbeta_macro": skm.fbeta_score(y, pred, beta=2.0, average="macro", labels=labels, zero_division=0),
        "mcc": skm.matthews_corrcoef(y, pred),
        "cohen_kappa": skm.cohen_kappa_score(y, pred),
        "log_loss": skm.log_loss(y, p, labels=labels),
        "hamming_loss": skm.hamming_loss(y, pred),
        "zero_one_loss": skm.zero_one_loss(y, pred),
        "roc_auc_ovr_macro": skm.roc_auc_score(y, p, multi_class="ovr", average="macro"),
        "average_precision_macro": np.mean([skm.average_precision_score(y == k, p[:, k]) for k in labels]),
    }
    for k in (3, 5):
        if k < c:
            expected[f"top{k}_accuracy"] = skm.top_k_accuracy_score(y, p, k=k, labels=labels)
    mcm = skm.multilabel_confusion_matrix(y, pred)
    expected["specificity_macro"] = np.mean([cm[0, 0] / (cm[0, 0] + cm[0, 1]) for cm in mcm])
    assert set(m) == {f"test_{k}" for k in expected}
    for name, value in expected.items():
        assert m[f"test_{name}"] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    assert all(isinstance(v, float) for v in m.values())


def test_beta_and_top_k_are_configurable() -> None:
    y, p = _softmax_data(300, 10)
    pred = p.argmax(axis=1)
    m = classification_metrics(y, p, prefix="val", beta=0.5, top_k=(2, 9, 10, 12))
    assert m["val_fbeta_macro"] == pytest.approx(skm.fbeta_score(y, pred, beta=0.5, average="macro"))
    assert {k for k in m if k.startswith("val_top")} == {"val_top2_accuracy", "val_top9_accuracy"}
    assert sorted(m) == sorted(metric_names("multiclass", 10, splits=("val",), top_k=(2, 9, 10, 12)))


def test_specificity_hand_checked() -> None:
    # true:  0 0 1 1 2 2 ; pred: 0 1 1 1 2 0
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    p = np.eye(3)[pred] * 0.9 + 0.1 / 3
    m = classification_metrics(y, p, prefix="test")
    # class 0: negatives {2,3,4,5}, FP = 1 (sample 5) -> 3/4; class 1: FP = 1 (sample 1) -> 3/4; class 2: FP = 0 -> 1
    assert m["test_specificity_macro"] == pytest.approx((0.75 + 0.75 + 1.0) / 3)
    assert m["test_recall_macro"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)  # sensitivity


def test_binary_hand_checked_counts_and_likelihood_ratios() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p1 = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.1, 0.3, 0.2, 0.4, 0.1])
    m = classification_metrics(y, p1, prefix="test")
    assert (m["test_tp"], m["test_fn"], m["test_fp"], m["test_tn"]) == (3.0, 1.0, 1.0, 5.0)
    tpr, fpr = 3 / 4, 1 / 6
    assert m["test_recall"] == pytest.approx(tpr)
    assert m["test_specificity"] == pytest.approx(5 / 6)
    assert m["test_precision"] == pytest.approx(3 / 4)
    assert m["test_lr_plus"] == pytest.approx(tpr / fpr)  # 4.5
    assert m["test_lr_minus"] == pytest.approx((1 - tpr) / (1 - fpr))  # 0.3
    assert m["test_brier"] == pytest.approx(np.mean((p1 - y) ** 2))
    # binary OvR-macro specificity averages TNR and TPR: it is the balanced accuracy
    assert m["test_specificity_macro"] == pytest.approx((tpr + 5 / 6) / 2)
    assert m["test_specificity_macro"] == pytest.approx(m["test_balanced_accuracy"])
    # raising the threshold to 0.65 turns the 0.6 false positive into a true negative
    m2 = classification_metrics(y, p1, prefix="test", threshold=0.65)
    assert (m2["test_tp"], m2["test_fn"], m2["test_fp"], m2["test_tn"]) == (3.0, 1.0, 0.0, 6.0)
    assert math.isnan(m2["test_lr_plus"])  # FPR = 0: LR+ undefined -> NaN, not a crash
    assert m2["test_lr_minus"] == pytest.approx(0.25)


def test_binary_matches_sklearn_and_accepts_both_shapes() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p1 = np.clip(0.35 * y + 0.65 * rng.random(500), 0, 1)
    m1 = classification_metrics(y, p1, prefix="test")
    m2 = classification_metrics(y, np.column_stack([1 - p1, p1]), prefix="test")
    assert m1.keys() == m2.keys()
    for k in m1:
        assert m1[k] == pytest.approx(m2[k], nan_ok=True), k
    pred = (p1 >= 0.5).astype(int)
    lr_plus, lr_minus = skm.class_likelihood_ratios(y, pred)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert m1["test_roc_auc"] == pytest.approx(skm.roc_auc_score(y, p1))
    assert m1["test_roc_auc_ovr_macro"] == pytest.approx(m1["test_roc_auc"])
    assert m1["test_average_precision"] == pytest.approx(skm.average_precision_score(y, p1))
    assert m1["test_average_precision_macro"] == pytest.approx(
        (skm.average_precision_score(y, p1) + skm.average_precision_score(1 - y, 1 - p1)) / 2
    )
    assert m1["test_brier"] == pytest.approx(skm.brier_score_loss(y, p1))
    assert m1["test_log_loss"] == pytest.approx(skm.log_loss(y, p1))
    assert m1["test_f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m1["test_mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert (m1["test_tp"], m1["test_fp"], m1["test_tn"], m1["test_fn"]) == (tp, fp, tn, fn)
    assert m1["test_lr_plus"] == pytest.approx(lr_plus)
    assert m1["test_lr_minus"] == pytest.approx(lr_minus)
    assert sorted(m1) == sorted(metric_names("binary", splits=("test",)))


@pytest.mark.parametrize("c", [2, 3, 10])
def test_single_class_present_does_not_raise(c: int) -> None:
    y = np.zeros(20, dtype=int)
    _, p = _softmax_data(20, c)
    m = classification_metrics(y, p, prefix="val")
    names = metric_names("binary" if c == 2 else "multiclass", c, splits=("val",))
    assert sorted(m) == sorted(names)
    assert math.isnan(m["val_roc_auc_ovr_macro"])
    assert math.isnan(m["val_average_precision_macro"])
    assert all(isinstance(v, float) for v in m.values())
    assert 0.0 <= m["val_accuracy"] <= 1.0


def test_binary_all_negative_and_perfect_predictions() -> None:
    y = np.zeros(6, dtype=int)
    m = classification_metrics(y, np.full(6, 0.1), prefix="test")
    assert (m["test_tp"], m["test_fp"], m["test_tn"], m["test_fn"]) == (0.0, 0.0, 6.0, 0.0)
    assert math.isnan(m["test_lr_plus"]) and math.isnan(m["test_lr_minus"])
    assert math.isnan(m["test_roc_auc"]) and math.isnan(m["test_average_precision"])
    y = np.array([0, 1, 0, 1])
    m = classification_metrics(y, np.array([0.0, 1.0, 0.0, 1.0]), prefix="test")
    assert m["test_accuracy"] == 1.0 and m["test_roc_auc"] == 1.0
    assert math.isnan(m["test_lr_plus"]) and m["test_lr_minus"] == 0.0


def test_class_absent_from_y_true_keeps_columns_aligned() -> None:
    _, p = _softmax_data(40, 4, seed=5)
    y = np.arange(40) % 3  # class 3 never occurs
    m = classification_metrics(y, p, prefix="test")
    assert math.isnan(m["test_roc_auc_ovr_macro"])
    assert m["test_log_loss"] == pytest.approx(skm.log_loss(y, p, labels=[0, 1, 2, 3]))
    assert m["test_top3_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, p, k=3, labels=[0, 1, 2, 3]))
    pred = p.argmax(axis=1)
    assert m["test_recall_macro"] == pytest.approx(
        skm.recall_score(y, pred, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    )


def test_regression_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(3.0, 2.0, 200)
    yp = y + rng.normal(0.0, 0.5, 200)
    m = regression_metrics(y, yp.reshape(-1, 1), prefix="val")
    assert m == pytest.approx(
        {
            "val_mse": skm.mean_squared_error(y, yp),
            "val_rmse": skm.root_mean_squared_error(y, yp),
            "val_mae": skm.mean_absolute_error(y, yp),
            "val_medae": skm.median_absolute_error(y, yp),
            "val_r2": skm.r2_score(y, yp),
            "val_explained_variance": skm.explained_variance_score(y, yp),
            "val_max_error": skm.max_error(y, yp),
            "val_mape": skm.mean_absolute_percentage_error(y, yp),
        }
    )
    assert list(m) == metric_names("regression", splits=("val",))
    one = regression_metrics([1.0], [2.0], prefix="test")  # r2 undefined for one sample: NaN, no raise
    assert one["test_mse"] == 1.0 and math.isnan(one["test_r2"])


def test_metric_names_lists_and_is_stable() -> None:
    names = metric_names("multiclass", 10)
    assert len(names) == len(set(names)) == 2 * 19
    assert names[:3] == ["val_accuracy", "val_balanced_accuracy", "val_precision_macro"]
    assert {"test_top3_accuracy", "test_top5_accuracy", "test_specificity_macro", "test_log_loss"} <= set(names)
    assert "test_top3_accuracy" not in metric_names("multiclass", 3)
    assert "test_lr_plus" in metric_names("binary") and "test_brier" not in names
    assert metric_names("regression", splits=("train",))[-1] == "train_mape"


@pytest.mark.parametrize(
    ("call", "quoted"),
    [
        (lambda: metric_names("ranking"), "task='ranking'"),
        (lambda: metric_names("multiclass"), "n_classes=None"),
        (lambda: metric_names("multiclass", 2), "n_classes=2"),
        (lambda: metric_names("binary", 3), "n_classes=3"),
        (lambda: metric_names("binary", splits="val"), "splits='val'"),
        (lambda: classification_metrics([0, 1], np.full((3, 2), 0.5), prefix="test"), "proba.shape=(3, 2)"),
        (lambda: classification_metrics([0, 1], np.ones((2, 3)), prefix="test"), "sum to"),
        (lambda: classification_metrics([0, 3], np.full((2, 3), 1 / 3), prefix="test"), "label 3"),
        (lambda: classification_metrics([0, 1], np.full((2, 2), 0.5), prefix="test", class_names=["a"]), "class_names"),
        (lambda: classification_metrics([0, 1], np.full((2, 2), 0.5), prefix="test split"), "prefix='test split'"),
        (lambda: classification_metrics([0, 1], np.full((2, 2), 0.5), prefix="t", threshold=2), "threshold=2"),
        (lambda: classification_metrics([0, 1], np.full((2, 2), 0.5), prefix="t", top_k=(0,)), "top_k=(0,)"),
        (lambda: classification_metrics([0, 1], np.array([0.5, np.nan]), prefix="t"), "NaN"),
        (lambda: regression_metrics([1.0, 2.0], [1.0], prefix="t"), "y_pred has 1"),
        (lambda: regression_metrics(np.ones((2, 2)), np.ones((2, 2)), prefix="t"), "y_true.shape=(2, 2)"),
        (lambda: metric_mode("val_banana"), "name='val_banana'"),
    ],
)
def test_errors_quote_parameter_and_value(call, quoted: str) -> None:
    with pytest.raises(ValueError) as err:
        call()
    assert quoted in str(err.value)


def test_metric_mode() -> None:
    assert metric_mode("val_accuracy") == "max"
    assert metric_mode("test_top3_accuracy") == "max"
    assert metric_mode("val_log_loss") == "min"
    assert metric_mode("val_rmse") == "min"
    assert metric_mode("fn") is None
    for name in metric_names("multiclass", 10) + metric_names("binary") + metric_names("regression"):
        metric_mode(name)  # every produced name has a known direction (or None)


@pytest.mark.parametrize("c", [2, 3, 10])
def test_one_vs_rest_curves_give_scikit_learn_values_exactly(c: int) -> None:
    y, p = _softmax_data(1500, c, seed=c, signal=0.8)
    curves = M.one_vs_rest_curves(y, p)
    assert [cv.index for cv in curves] == list(range(c))
    for cv in curves:
        fpr, tpr, _ = skm.roc_curve(y == cv.index, p[:, cv.index])
        prec, rec, _ = skm.precision_recall_curve(y == cv.index, p[:, cv.index])
        assert np.array_equal(cv.fpr, fpr) and np.array_equal(cv.tpr, tpr)
        assert np.array_equal(cv.precision, prec) and np.array_equal(cv.recall, rec)
        assert cv.auc == skm.roc_auc_score(y == cv.index, p[:, cv.index])  # ==, not approx
        assert cv.ap == skm.average_precision_score(y == cv.index, p[:, cv.index])
    m, kept = M.classification_metrics_and_curves(y, p, prefix="test")
    assert m == classification_metrics(y, p, prefix="test")
    assert [cv.auc for cv in kept] == [cv.auc for cv in curves]
    if c == 2:
        assert m["test_roc_auc"] == skm.roc_auc_score(y, p[:, 1])
        assert m["test_average_precision"] == skm.average_precision_score(y, p[:, 1])
    else:
        assert m["test_roc_auc_ovr_macro"] == skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
    onehot = np.eye(c, dtype=np.int64)[y]
    assert m["test_average_precision_macro"] == float(np.mean(skm.average_precision_score(onehot, p, average=None)))


def test_one_vs_rest_curves_skip_classes_without_positives_or_negatives() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([[.6, .3, .1], [.5, .4, .1], [.2, .7, .1], [.3, .6, .1]])
    assert [cv.index for cv in M.one_vs_rest_curves(y, p)] == [0, 1]  # class 2 never occurs
    assert M.one_vs_rest_curves(np.zeros(3, int), np.full((3, 2), 0.5)) == []
    with pytest.raises(ValueError, match=r"proba.shape=\(4,\)"):
        M.one_vs_rest_curves(y, p[:, 0])
