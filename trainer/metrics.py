"""End-of-trial evaluation metrics, computed with scikit-learn on numpy arrays.

Pure functions: numpy in, ``dict[str, float]`` out. Nothing here knows about
Ray, MLflow or torch, so the same code scores validation and test predictions
of any trial.

Every metric is named ``{prefix}_{name}`` (``prefix`` is the split: ``val``,
``test``, ...). **Names are stable**: sweep files select them as the search
metric and users filter on them in the MLflow UI, so a name is never renamed
or removed; :func:`metric_names` lists exactly the names the functions below
produce, and :func:`metric_mode` says whether each is maximized or minimized.

Classification (``proba`` is ``(n, C)``; ``C == 2`` is the binary task, where
``(n,)`` positive-class probabilities are also accepted). Hard predictions are
``argmax(proba)`` for multiclass and ``proba[:, 1] >= threshold`` for binary.
Macro averages run over all ``C`` classes (``labels=range(C)`` is passed to
every scikit-learn call), so a class missing from ``y_true`` never shifts
columns; ``zero_division=0`` where a precision/recall is 0/0.

=============================  ==========  ===================================================
name                           task        definition (``sklearn.metrics`` function)
=============================  ==========  ===================================================
``accuracy``                   both        ``accuracy_score``: mean(y_pred == y_true)
``balanced_accuracy``          both        ``balanced_accuracy_score``: mean recall over classes in y_true
``precision_macro``            both        ``precision_score(average="macro")``: mean_c TP/(TP+FP)
``precision_weighted``         both        ``precision_score(average="weighted")``: support-weighted
``recall_macro``               both        ``recall_score(average="macro")``: mean_c TP/(TP+FN) (sensitivity)
``recall_weighted``            both        ``recall_score(average="weighted")``
``f1_macro`` / ``f1_weighted`` both        ``f1_score``: 2PR/(P+R) per class, then averaged
``fbeta_macro``                both        ``fbeta_score(beta=beta, average="macro")``:
                                           (1+b^2)PR/(b^2 P+R); default beta=2 weighs recall higher
``specificity_macro``          both        mean_c TN/(TN+FP), one-vs-rest, from
                                           ``multilabel_confusion_matrix``; classes with
                                           TN+FP = 0 are skipped (NaN if none is defined)
``mcc``                        both        ``matthews_corrcoef`` (multiclass generalization)
``cohen_kappa``                both        ``cohen_kappa_score``: (p_o - p_e)/(1 - p_e); NaN if undefined
``log_loss``                   both        ``log_loss``: -mean log p(y_true) (cross-entropy, nats)
``hamming_loss``               both        ``hamming_loss``: share of wrong labels (= 1 - accuracy here)
``zero_one_loss``              both        ``zero_one_loss``: share of wrong samples (= 1 - accuracy)
``roc_auc_ovr_macro``          both        ``roc_auc_score(multi_class="ovr", average="macro")``; binary:
                                           plain ``roc_auc_score`` of p1 (OvR macro equals it for C=2);
                                           NaN when any class is absent from y_true
``average_precision_macro``    both        mean_c ``average_precision_score`` (one-vs-rest, area under
                                           the PR curve as sum (R_n - R_n-1) P_n); NaN when any
                                           class is absent from y_true. Both ranking metrics come
                                           from :func:`one_vs_rest_curves` (bit for bit scikit-learn's
                                           values), whose curves the ROC / PR plot reuses
``top{k}_accuracy``            multiclass  ``top_k_accuracy_score(k=k)``, for each k in ``top_k`` with k < C
``brier``                      binary      ``brier_score_loss``: mean (p1 - y)^2
``roc_auc``                    binary      ``roc_auc_score`` of p1 (same value as roc_auc_ovr_macro)
``average_precision``          binary      ``average_precision_score`` of the positive class
``precision`` / ``recall``     binary      positive class: TP/(TP+FP), TP/(TP+FN) (sensitivity, TPR)
``specificity``                binary      positive class: TN/(TN+FP) (TNR); NaN if TN+FP = 0
``f1``                         binary      positive class F1
``tp`` ``fp`` ``tn`` ``fn``    binary      ``confusion_matrix(labels=[0, 1])`` at ``threshold``
``lr_plus`` / ``lr_minus``     binary      ``class_likelihood_ratios``: LR+ = TPR/FPR,
                                           LR- = FNR/TNR; NaN when undefined (e.g. FPR = 0)
=============================  ==========  ===================================================

Regression (``y_pred`` is ``(n,)`` or ``(n, 1)``):

=============================  ===================================================
``mse``                        ``mean_squared_error``: mean (y - y_hat)^2
``rmse``                       ``root_mean_squared_error``: sqrt(mse)
``mae``                        ``mean_absolute_error``: mean |y - y_hat|
``medae``                      ``median_absolute_error``: median |y - y_hat|
``r2``                         ``r2_score``: 1 - SS_res / SS_tot
``explained_variance``         ``explained_variance_score``: 1 - Var(y - y_hat) / Var(y)
``max_error``                  ``max_error``: max |y - y_hat|
``mape``                       ``mean_absolute_percentage_error``: mean |y - y_hat| / max(|y|, eps)
                               (a fraction, not percent; huge when y has zeros)
=============================  ===================================================
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Literal

import numpy as np
from sklearn import metrics as skm

Task = Literal["multiclass", "binary", "regression"]
TASKS: tuple[str, ...] = ("multiclass", "binary", "regression")
DEFAULT_TOP_K: tuple[int, ...] = (3, 5)
DEFAULT_BETA = 2.0
PROBA_SUM_TOLERANCE = 1e-3  # rows of proba must sum to 1 within this (float32 softmax is ~1e-6 off)

# Names shared by the binary and the multiclass task, in the order they are produced.
_COMMON_CLASSIFICATION = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "precision_weighted",
    "recall_macro",
    "recall_weighted",
    "f1_macro",
    "f1_weighted",
    "fbeta_macro",
    "specificity_macro",
    "mcc",
    "cohen_kappa",
    "log_loss",
    "hamming_loss",
    "zero_one_loss",
    "roc_auc_ovr_macro",
    "average_precision_macro",
)
_BINARY_ONLY = (
    "brier",
    "roc_auc",
    "average_precision",
    "precision",
    "recall",
    "specificity",
    "f1",
    "tp",
    "fp",
    "tn",
    "fn",
    "lr_plus",
    "lr_minus",
)
_REGRESSION = ("mse", "rmse", "mae", "medae", "r2", "explained_variance", "max_error", "mape")

# Metrics where smaller is better; every other metric is maximized. Counts (tp...) have no direction.
_MINIMIZED = frozenset(
    {"log_loss", "hamming_loss", "zero_one_loss", "brier", "lr_minus"}
    | {"mse", "rmse", "mae", "medae", "max_error", "mape"}
)
_NO_DIRECTION = frozenset({"tp", "fp", "tn", "fn"})
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")
_TOP_K_RE = re.compile(r"^top(\d+)_accuracy$")


# --------------------------------------------------------------------------- validation


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise ValueError(
            f"prefix={prefix!r}: must be a non-empty string of letters, digits, '_', '.', '-' or '/' "
            "starting with a letter or digit (e.g. 'val', 'test')"
        )


def _check_top_k(top_k: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(top_k)
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"top_k={ks!r}: every k must be an integer >= 1")
    return tuple(sorted({int(k) for k in ks}))


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task={task!r}: must be one of {list(TASKS)}")


def _labels_1d(y_true: np.ndarray | Sequence[int], n_classes: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true.shape={y.shape}: must be 1-D (n,) integer class indices")
    if y.size == 0:
        raise ValueError("y_true has 0 samples: need at least 1")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError("y_true has non-integer values: must be integer class indices 0..C-1")
        y = y.astype(np.int64)
    elif y.dtype.kind not in "iu" and y.dtype.kind != "b":
        raise ValueError(f"y_true.dtype={y.dtype}: must be integer class indices 0..C-1")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise ValueError(
            f"y_true contains label {int(y[bad][0])}: must be in 0..{n_classes - 1} (C={n_classes} from proba.shape)"
        )
    return y


def _proba_2d(proba: np.ndarray, n: int) -> np.ndarray:
    """Validate ``proba`` and return it as float64 ``(n, C)`` with rows summing exactly to 1."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:
        p = np.column_stack([1.0 - p, p])  # binary positive-class probabilities
    elif p.ndim != 2:
        raise ValueError(f"proba.shape={np.shape(proba)}: must be (n, C) class probabilities or (n,) for binary")
    if p.shape[0] != n:
        raise ValueError(f"proba.shape={np.shape(proba)}: first dimension must equal len(y_true)={n}")
    if p.shape[1] < 2:
        raise ValueError(f"proba.shape={np.shape(proba)}: need C >= 2 columns (use (n,) for binary)")
    if not np.all(np.isfinite(p)):
        raise ValueError("proba contains NaN or inf: must be finite probabilities")
    if p.min() < -PROBA_SUM_TOLERANCE or p.max() > 1.0 + PROBA_SUM_TOLERANCE:
        raise ValueError(f"proba has values in [{p.min():g}, {p.max():g}]: must lie in [0, 1]")
    sums = p.sum(axis=1)
    worst = float(np.max(np.abs(sums - 1.0)))
    if worst > PROBA_SUM_TOLERANCE:
        raise ValueError(
            f"proba rows sum to values up to {worst:g} away from 1: each row must sum to 1 "
            f"(within {PROBA_SUM_TOLERANCE:g}); pass softmax probabilities, not logits"
        )
    p = np.clip(p, 0.0, 1.0)
    return p / p.sum(axis=1, keepdims=True)


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


# --------------------------------------------------------------------------- ranking curves


@dataclass(frozen=True)
class ClassCurves:
    """One class's one-vs-rest ROC and precision-recall curves, as scikit-learn returns them.

    ``auc`` and ``ap`` are computed from these very arrays exactly as ``roc_auc_score`` and
    ``average_precision_score`` compute them, so one pass gives both the metrics and the plot.
    """

    index: int  # the class's column in proba
    fpr: np.ndarray  # roc_curve(drop_intermediate=True), the curve roc_auc_score integrates
    tpr: np.ndarray
    precision: np.ndarray  # precision_recall_curve at every threshold, recall decreasing
    recall: np.ndarray
    auc: float  # auc(fpr, tpr): roc_auc_score of this class against the rest
    ap: float  # max(0, -sum(diff(recall) * precision[:-1])): average_precision_score of this class


def one_vs_rest_curves(
    y_true: np.ndarray, proba: np.ndarray, classes: Sequence[int] | None = None
) -> list[ClassCurves]:
    """The ROC and PR curves of each class (default: every column of ``proba``) against the rest.

    Classes without both positives and negatives in ``y_true`` are left out (ROC is undefined
    there). ``y_true`` holds integer class indices, ``proba`` is ``(n, C)``.

    Example:
        >>> import numpy as np
        >>> y = np.array([0, 1, 2, 2]); p = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .2, .7], [.5, .1, .4]])
        >>> [(c.index, c.auc) for c in one_vs_rest_curves(y, p)]
        [(0, 1.0), (1, 1.0), (2, 1.0)]
    """
    y = np.asarray(y_true)
    p = np.asarray(proba)
    if y.ndim != 1 or p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"y_true.shape={y.shape}, proba.shape={p.shape}: must be (n,) and (n, C)")
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(p.shape[1]) if classes is None else classes:
            positive = y == k
            if not positive.any() or positive.all():
                continue
            fpr, tpr, _ = skm.roc_curve(positive, p[:, k])
            precision, recall, _ = skm.precision_recall_curve(positive, p[:, k])
            ap = max(0.0, float(-np.sum(np.diff(recall) * precision[:-1])))  # the step integral of sklearn's AP
            out.append(ClassCurves(int(k), fpr, tpr, precision, recall, float(skm.auc(fpr, tpr)), ap))
    return out


# --------------------------------------------------------------------------- classification


def classification_metrics(
    y_true: np.ndarray | Sequence[int],
    proba: np.ndarray,
    *,
    prefix: str,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.5,
    beta: float = DEFAULT_BETA,
    top_k: Sequence[int] = DEFAULT_TOP_K,
) -> dict[str, float]:
    """All classification metrics of one split, as ``{f"{prefix}_{name}": value}``.

    Args:
        y_true: ``(n,)`` integer class indices in ``0..C-1``.
        proba: ``(n, C)`` class probabilities (softmax output). ``C == 2`` is the
            binary task; there ``(n,)`` positive-class probabilities also work.
        prefix: the split, e.g. ``"val"`` or ``"test"``.
        class_names: optional names of the ``C`` classes; only checked for length
            here (names never enter metric names, which stay stable).
        threshold: binary only: predict the positive class when ``p1 >= threshold``.
            Every hard-prediction metric of a binary task uses it.
        beta: the F-beta weight of recall over precision (``fbeta_macro``);
            2.0 (F2) favours recall, 0.5 favours precision, 1.0 is F1.
        top_k: the ``k`` of ``top{k}_accuracy`` (multiclass; only ``k < C`` are kept).

    Returns:
        Floats keyed by the names of :func:`metric_names`; undefined values are NaN
        (never an exception), e.g. ROC AUC when a class is absent from ``y_true``.

    Example:
        >>> import numpy as np
        >>> y = np.array([0, 1, 2, 2])
        >>> p = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .2, .7], [.5, .1, .4]])
        >>> m = classification_metrics(y, p, prefix="test")
        >>> m["test_accuracy"], m["test_recall_macro"]
        (0.75, 0.8333333333333334)
        >>> sorted(m) == sorted(metric_names("multiclass", 3, splits=("test",)))
        True
    """
    return classification_metrics_and_curves(
        y_true, proba, prefix=prefix, class_names=class_names, threshold=threshold, beta=beta, top_k=top_k
    )[0]


def classification_metrics_and_curves(
    y_true: np.ndarray | Sequence[int],
    proba: np.ndarray,
    *,
    prefix: str,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.5,
    beta: float = DEFAULT_BETA,
    top_k: Sequence[int] = DEFAULT_TOP_K,
) -> tuple[dict[str, float], list[ClassCurves]]:
    """:func:`classification_metrics` and the :func:`one_vs_rest_curves` its ROC AUC and AP come from.

    The end-of-trial evaluation keeps the test split's curves for the ROC / PR plot, so
    scikit-learn's curves are computed once per class, not once for the metrics and again
    for the plot.
    """
    _check_prefix(prefix)
    ks = _check_top_k(top_k)
    if isinstance(threshold, bool) or not (isinstance(threshold, Real) and 0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold={threshold!r}: must be a number in [0, 1]")
    if isinstance(beta, bool) or not (isinstance(beta, Real) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta={beta!r}: must be a finite number > 0")
    p_raw = np.asarray(proba)
    n = int(np.asarray(y_true).shape[0]) if np.ndim(y_true) >= 1 else 0
    p = _proba_2d(p_raw, n)
    n_classes = p.shape[1]
    y = _labels_1d(y_true, n_classes)
    if class_names is not None and len(class_names) != n_classes:
        raise ValueError(
            f"class_names has {len(class_names)} names: must have one per column of proba (C={n_classes})"
        )
    binary = n_classes == 2
    labels = list(range(n_classes))
    y_pred = (p[:, 1] >= threshold).astype(np.int64) if binary else p.argmax(axis=1)

    out: dict[str, float] = {}
    with warnings.catch_warnings():
        # Degenerate splits (one class present...) make scikit-learn warn; the values are NaN/0 as documented.
        warnings.simplefilter("ignore")
        prf = {}
        for avg in ("macro", "weighted"):
            prec, rec, f1, _ = skm.precision_recall_fscore_support(
                y, y_pred, labels=labels, average=avg, zero_division=0
            )
            prf[avg] = (prec, rec, f1)
        mcm = skm.multilabel_confusion_matrix(y, y_pred, labels=labels)  # (C, 2, 2): [[tn, fp], [fn, tp]]
        spec = [_safe_div(c[0, 0], c[0, 0] + c[0, 1]) for c in mcm]
        spec_defined = [s for s in spec if not math.isnan(s)]
        all_present = np.unique(y).size == n_classes

        out["accuracy"] = skm.accuracy_score(y, y_pred)
        out["balanced_accuracy"] = skm.balanced_accuracy_score(y, y_pred)
        out["precision_macro"], out["recall_macro"], out["f1_macro"] = prf["macro"]
        out["precision_weighted"], out["recall_weighted"], out["f1_weighted"] = prf["weighted"]
        out["fbeta_macro"] = skm.fbeta_score(
            y, y_pred, beta=float(beta), labels=labels, average="macro", zero_division=0
        )
        out["specificity_macro"] = float(np.mean(spec_defined)) if spec_defined else math.nan
        out["mcc"] = skm.matthews_corrcoef(y, y_pred)
        out["cohen_kappa"] = skm.cohen_kappa_score(y, y_pred, labels=labels, replace_undefined_by=np.nan)
        out["log_loss"] = skm.log_loss(y, p, labels=labels)
        out["hamming_loss"] = skm.hamming_loss(y, y_pred)
        out["zero_one_loss"] = skm.zero_one_loss(y, y_pred)
        # roc_auc_score(multi_class="ovr", average="macro") and the mean of average_precision_score
        # per class, from one pass of scikit-learn's curves (binary: roc_auc_score of p1).
        curves = one_vs_rest_curves(y, p)
        by_class = {cv.index: cv for cv in curves}
        if binary:
            out["roc_auc_ovr_macro"] = by_class[1].auc if all_present else math.nan
        else:
            out["roc_auc_ovr_macro"] = float(np.mean([cv.auc for cv in curves])) if all_present else math.nan
        out["average_precision_macro"] = float(np.mean([cv.ap for cv in curves])) if all_present else math.nan

        if binary:
            tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, y_pred, labels=labels).ravel())
            out["brier"] = skm.brier_score_loss(y, p[:, 1], pos_label=1, labels=labels)
            out["roc_auc"] = out["roc_auc_ovr_macro"]
            if 1 in by_class:
                out["average_precision"] = by_class[1].ap
            else:  # no negatives (AP is 1) or no positives (undefined)
                out["average_precision"] = skm.average_precision_score(y, p[:, 1]) if (y == 1).any() else math.nan
            out["precision"] = skm.precision_score(y, y_pred, labels=labels, pos_label=1, zero_division=0)
            out["recall"] = skm.recall_score(y, y_pred, labels=labels, pos_label=1, zero_division=0)
            out["specificity"] = _safe_div(tn, tn + fp)
            out["f1"] = skm.f1_score(y, y_pred, labels=labels, pos_label=1, zero_division=0)
            out["tp"], out["fp"], out["tn"], out["fn"] = tp, fp, tn, fn
            try:
                lr_plus, lr_minus = skm.class_likelihood_ratios(
                    y, y_pred, labels=labels, replace_undefined_by=np.nan
                )
            except ValueError:  # defensive: undefined ratios are NaN, never an exception
                lr_plus, lr_minus = math.nan, math.nan
            out["lr_plus"], out["lr_minus"] = lr_plus, lr_minus
        else:
            for k in ks:
                if k < n_classes:
                    out[f"top{k}_accuracy"] = skm.top_k_accuracy_score(y, p, k=k, labels=labels)

    return {f"{prefix}_{name}": float(value) for name, value in out.items()}, curves


# --------------------------------------------------------------------------- regression


def regression_metrics(
    y_true: np.ndarray | Sequence[float],
    y_pred: np.ndarray | Sequence[float],
    *,
    prefix: str,
) -> dict[str, float]:
    """All regression metrics of one split, as ``{f"{prefix}_{name}": value}``.

    Example:
        >>> m = regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 5.0], prefix="val")
        >>> m["val_mse"], m["val_max_error"], m["val_medae"]
        (1.3333333333333333, 2.0, 0.0)
    """
    _check_prefix(prefix)
    yt = np.asarray(y_true, dtype=np.float64)
    yp = np.asarray(y_pred, dtype=np.float64)
    for name, arr, raw in (("y_true", yt, y_true), ("y_pred", yp, y_pred)):
        if arr.ndim == 2 and arr.shape[1] == 1:
            continue
        if arr.ndim != 1:
            raise ValueError(f"{name}.shape={np.shape(raw)}: must be (n,) or (n, 1) (one target)")
    yt, yp = yt.reshape(-1), yp.reshape(-1)
    if yt.shape != yp.shape:
        raise ValueError(f"y_pred has {yp.size} values: must have as many as y_true ({yt.size})")
    if yt.size == 0:
        raise ValueError("y_true has 0 samples: need at least 1")
    if not (np.all(np.isfinite(yt)) and np.all(np.isfinite(yp))):
        raise ValueError("y_true or y_pred contains NaN or inf: must be finite")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # r2 of a single sample warns and is NaN
        out = {
            "mse": skm.mean_squared_error(yt, yp),
            "rmse": skm.root_mean_squared_error(yt, yp),
            "mae": skm.mean_absolute_error(yt, yp),
            "medae": skm.median_absolute_error(yt, yp),
            "r2": skm.r2_score(yt, yp),
            "explained_variance": skm.explained_variance_score(yt, yp),
            "max_error": skm.max_error(yt, yp),
            "mape": skm.mean_absolute_percentage_error(yt, yp),
        }
    return {f"{prefix}_{name}": float(value) for name, value in out.items()}


# --------------------------------------------------------------------------- names


def metric_names(
    task: str,
    n_classes: int | None = None,
    splits: Sequence[str] = ("val", "test"),
    *,
    top_k: Sequence[int] = DEFAULT_TOP_K,
) -> list[str]:
    """Every metric name :func:`classification_metrics` / :func:`regression_metrics` produce.

    Names are stable (see the module docstring): the sweep validator checks a sweep
    file's ``metric:`` against this list. ``n_classes`` is required for
    ``"multiclass"`` (the ``top{k}_accuracy`` names depend on it; must be >= 3,
    as ``C == 2`` is the binary task), must be ``None`` or 2 for ``"binary"`` and
    is ignored for ``"regression"``. ``top_k`` must match the one passed to
    :func:`classification_metrics`.

    Example:
        >>> metric_names("regression", splits=("val",))[:3]
        ['val_mse', 'val_rmse', 'val_mae']
        >>> "test_top3_accuracy" in metric_names("multiclass", 10)
        True
    """
    _check_task(task)
    if isinstance(splits, str):
        raise ValueError(f"splits={splits!r}: must be a sequence of prefixes, e.g. ('val', 'test')")
    for s in splits:
        _check_prefix(s)
    ks = _check_top_k(top_k)
    if task == "regression":
        names = list(_REGRESSION)
    elif task == "binary":
        if n_classes not in (None, 2):
            raise ValueError(f"n_classes={n_classes!r}: must be None or 2 for task='binary'")
        names = list(_COMMON_CLASSIFICATION) + list(_BINARY_ONLY)
    else:
        if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 3:
            raise ValueError(
                f"n_classes={n_classes!r}: task='multiclass' needs an integer >= 3 "
                "(top-k names depend on it; 2 classes is task='binary')"
            )
        names = list(_COMMON_CLASSIFICATION) + [f"top{k}_accuracy" for k in ks if k < n_classes]
    return [f"{split}_{name}" for split in splits for name in names]


def metric_mode(name: str) -> Literal["max", "min"] | None:
    """Whether a metric (with or without its split prefix) is maximized or minimized.

    ``None`` for the raw confusion counts (``tp``, ``fp``, ``tn``, ``fn``), which
    have no direction. Raises ``ValueError`` for a name this module never produces.

    Example:
        >>> metric_mode("val_log_loss"), metric_mode("test_f1_macro"), metric_mode("test_tp")
        ('min', 'max', None)
    """
    known = set(_COMMON_CLASSIFICATION) | set(_BINARY_ONLY) | set(_REGRESSION)
    base = None
    for candidate in [name] + [name.split("_", i)[-1] for i in range(1, name.count("_") + 1)]:
        if candidate in known or _TOP_K_RE.match(candidate):
            base = candidate
            break
    if base is None:
        raise ValueError(f"name={name!r}: not a metric of trainer.metrics (see metric_names())")
    if base in _NO_DIRECTION:
        return None
    return "min" if base in _MINIMIZED else "max"
