"""Bias-variance diagnosis of one trained model, as the course material teaches it.

Given the training error, the validation ("dev") error and optionally an
estimate of the reference (Bayes / human-level) error and a naive baseline's
error, :func:`diagnose` reports:

* ``avoidable_bias = train_error - reference_error`` (just ``train_error`` when
  no reference is given, i.e. a reference of 0): how far the model is from the
  best achievable error *on the data it was trained on*;
* ``variance = val_error - train_error``: how much worse it does on unseen data;
* a verdict: ``high_bias`` when the avoidable bias is above
  :attr:`DiagnosisThresholds.high_bias`, ``high_variance`` when the variance is
  above :attr:`DiagnosisThresholds.high_variance`, ``high_bias_high_variance``
  for both, ``good_fit`` for neither, and ``no_better_than_baseline`` (checked
  first) when a baseline error is given and the validation error does not beat it.

The course's table (reference error ~0%, default thresholds of 5 points):

==============  ===========  =========================
train error     dev error    verdict
==============  ===========  =========================
1%              12%          high_variance
12%             13%          high_bias
12%             20%          high_bias_high_variance
1%              2%           good_fit
==============  ===========  =========================

Errors are fractions (0.12, not 12). For classification the error is
``1 - accuracy``; for regression it is the mean squared error (so thresholds
are in squared target units there and should be set per problem).
:func:`baseline_error` computes the naive baseline's error in the same units;
:func:`overfitting_onset` finds where the learning curves start to diverge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Verdict = Literal["good_fit", "high_bias", "high_variance", "high_bias_high_variance", "no_better_than_baseline"]
VERDICTS: tuple[str, ...] = (
    "good_fit",
    "high_bias",
    "high_variance",
    "high_bias_high_variance",
    "no_better_than_baseline",
)
DIAGNOSIS_TAG = "sweep.diagnosis"  # tag holding the verdict
BEATS_BASELINE_TAG = "sweep.beats_baseline"  # tag: "true" / "false"
TASKS: tuple[str, ...] = ("multiclass", "binary", "regression")
_EPS = 1e-9  # comparisons tolerate float rounding: 0.07 - 0.02 is not "above" 0.05

# What the course material recommends for each verdict.
ADVICE: dict[str, str] = {
    "good_fit": "Low bias and low variance: keep this model; check the test error once.",
    "high_bias": "High bias (underfitting): bigger network, train longer, better optimizer, less regularization.",
    "high_variance": "High variance (overfitting): more data, more regularization (L2, dropout), early stopping.",
    "high_bias_high_variance": "High bias and high variance: reduce bias first (bigger model), then variance.",
    "no_better_than_baseline": "No better than the naive baseline: check the labels, the data and the learning rate.",
}


def _show(value: object) -> str:
    """``repr`` without numpy's ``np.float64(...)`` wrapper."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _check_number(name: str, value: object, *, allow_none: bool = False, nonneg: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}={_show(value)}: must be a finite number")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}={_show(value)}: must be a finite number")
    if nonneg and v < 0:
        raise ValueError(f"{name}={_show(value)}: must be >= 0")
    return v


@dataclass(frozen=True)
class DiagnosisThresholds:
    """When a gap counts as "high". All in error units (fractions for classification).

    Attributes:
        high_bias: avoidable bias (train - reference) above this is high bias.
            Default 0.05: 5 percentage points of classification error.
        high_variance: variance (val - train) above this is high variance.
            Default 0.05: 5 percentage points.
        baseline_margin: the validation error must be more than this below the
            baseline's error to beat it. Default 0.0: any strict improvement.

    Example:
        >>> DiagnosisThresholds(high_variance=0.02).high_variance
        0.02
        >>> DiagnosisThresholds(high_bias=-1)
        Traceback (most recent call last):
        ...
        ValueError: high_bias=-1: must be >= 0
    """

    high_bias: float = 0.05
    high_variance: float = 0.05
    baseline_margin: float = 0.0

    def __post_init__(self) -> None:
        for name in ("high_bias", "high_variance", "baseline_margin"):
            _check_number(name, getattr(self, name))


@dataclass(frozen=True)
class Diagnosis:
    """The outcome of :func:`diagnose`. Build it with :func:`diagnose`, not directly."""

    train_error: float
    val_error: float
    variance: float  # val_error - train_error
    avoidable_bias: float  # train_error - reference_error (or train_error without a reference)
    verdict: Verdict
    reference_error: float | None = None
    baseline_error: float | None = None
    beats_baseline: bool | None = None  # None without a baseline
    test_error: float | None = None
    thresholds: DiagnosisThresholds = field(default_factory=DiagnosisThresholds)

    @property
    def high_bias(self) -> bool:
        """Avoidable bias above the threshold (whatever the baseline says)."""
        return self.avoidable_bias > self.thresholds.high_bias + _EPS

    @property
    def high_variance(self) -> bool:
        """Variance above the threshold (whatever the baseline says)."""
        return self.variance > self.thresholds.high_variance + _EPS

    @property
    def advice(self) -> str:
        """The course material's next step for this verdict."""
        return ADVICE[self.verdict]

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """Numbers to log as MLflow metrics; ``prefix`` is joined with ``_`` when given.

        Optional values (test, reference, baseline errors) appear only when known.

        Example:
            >>> d = diagnose(0.01, 0.12, test_error=0.13)
            >>> d.as_metrics()["diag_variance"], sorted(d.as_metrics("final"))[0]
            (0.11, 'final_diag_avoidable_bias')
        """
        values: dict[str, float | None] = {
            "diag_train_error": self.train_error,
            "diag_val_error": self.val_error,
            "diag_test_error": self.test_error,
            "diag_variance": self.variance,
            "diag_avoidable_bias": self.avoidable_bias,
            "diag_reference_error": self.reference_error,
            "diag_baseline_error": self.baseline_error,
        }
        head = f"{prefix}_" if prefix else ""
        return {f"{head}{k}": float(v) for k, v in values.items() if v is not None}

    def as_tags(self) -> dict[str, str]:
        """Tags to set on the trial's run: the verdict and, with a baseline, whether it beats it.

        Example:
            >>> diagnose(0.12, 0.13, baseline_error=0.9).as_tags()
            {'sweep.diagnosis': 'high_bias', 'sweep.beats_baseline': 'true'}
        """
        tags = {DIAGNOSIS_TAG: self.verdict}
        if self.beats_baseline is not None:
            tags[BEATS_BASELINE_TAG] = "true" if self.beats_baseline else "false"
        return tags


def diagnose(
    train_error: float,
    val_error: float,
    *,
    test_error: float | None = None,
    reference_error: float | None = None,
    baseline_error: float | None = None,
    thresholds: DiagnosisThresholds = DiagnosisThresholds(),
) -> Diagnosis:
    """Diagnose bias and variance from train / validation errors (see the module docstring).

    Args:
        train_error: error on the training split (``1 - accuracy``, or MSE).
        val_error: error on the validation (dev) split.
        test_error: optional; reported only, never used for the verdict.
        reference_error: optional Bayes / human-level error estimate; 0 when omitted.
        baseline_error: optional error of a naive baseline (:func:`baseline_error`).
        thresholds: what counts as high bias / variance.

    Example:
        >>> diagnose(0.01, 0.12).verdict
        'high_variance'
        >>> diagnose(0.12, 0.20).verdict
        'high_bias_high_variance'
        >>> diagnose(0.85, 0.90, baseline_error=0.88).verdict
        'no_better_than_baseline'
    """
    if not isinstance(thresholds, DiagnosisThresholds):
        raise ValueError(f"thresholds={thresholds!r}: must be a DiagnosisThresholds")
    train = _check_number("train_error", train_error)
    val = _check_number("val_error", val_error)
    test = _check_number("test_error", test_error, allow_none=True)
    ref = _check_number("reference_error", reference_error, allow_none=True)
    base = _check_number("baseline_error", baseline_error, allow_none=True)
    assert train is not None and val is not None

    variance = val - train
    avoidable_bias = train - (ref if ref is not None else 0.0)
    beats = None if base is None else bool(base - val > thresholds.baseline_margin + _EPS)
    high_bias = avoidable_bias > thresholds.high_bias + _EPS
    high_var = variance > thresholds.high_variance + _EPS
    verdict: Verdict
    if beats is False:
        verdict = "no_better_than_baseline"
    elif high_bias and high_var:
        verdict = "high_bias_high_variance"
    elif high_bias:
        verdict = "high_bias"
    elif high_var:
        verdict = "high_variance"
    else:
        verdict = "good_fit"
    return Diagnosis(
        train_error=train,
        val_error=val,
        variance=variance,
        avoidable_bias=avoidable_bias,
        verdict=verdict,
        reference_error=ref,
        baseline_error=base,
        beats_baseline=beats,
        test_error=test,
        thresholds=thresholds,
    )


def baseline_error(
    y_train: np.ndarray | Sequence,
    y_eval: np.ndarray | Sequence,
    task: str,
) -> float:
    """Error of the naive baseline fitted on ``y_train``, evaluated on ``y_eval``.

    * ``"multiclass"`` / ``"binary"``: always predict the majority class of
      ``y_train`` (ties: the smallest label, as scikit-learn's
      ``DummyClassifier(strategy="most_frequent")``); error = ``1 - accuracy``.
    * ``"regression"``: always predict the mean of ``y_train``; error = MSE
      (as ``DummyRegressor(strategy="mean")`` scored with ``mean_squared_error``).

    Example:
        >>> baseline_error([0, 1, 1, 2], [1, 1, 0, 2], "multiclass")
        0.5
        >>> baseline_error([1.0, 3.0], [2.0, 4.0], "regression")
        2.0
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}: must be one of {list(TASKS)}")
    yt = np.asarray(y_train)
    ye = np.asarray(y_eval)
    for name, arr in (("y_train", yt), ("y_eval", ye)):
        if arr.ndim != 1:
            raise ValueError(f"{name}.shape={arr.shape}: must be 1-D")
        if arr.size == 0:
            raise ValueError(f"{name} has 0 samples: need at least 1")
    if task == "regression":
        yt_f, ye_f = yt.astype(np.float64), ye.astype(np.float64)
        if not (np.all(np.isfinite(yt_f)) and np.all(np.isfinite(ye_f))):
            raise ValueError("y_train or y_eval contains NaN or inf: must be finite")
        return float(np.mean((ye_f - yt_f.mean()) ** 2))
    classes, counts = np.unique(yt, return_counts=True)
    majority = classes[int(np.argmax(counts))]
    return float(np.mean(ye != majority))


def overfitting_onset(
    train_losses: Sequence[float],
    val_losses: Sequence[float],
    patience: int = 3,
) -> int | None:
    """First epoch (1-based) after which validation loss rises while training loss falls.

    Epoch ``e`` is the onset when, for each of the ``patience`` epochs after it
    (``e+1 .. e+patience``), the validation loss is strictly above the epoch
    before and the training loss strictly below the epoch before. The onset is
    the last "good" epoch, where early stopping would have kept the weights.
    ``None`` when that never happens (including curves shorter than
    ``patience + 1`` epochs).

    Example:
        >>> overfitting_onset([1.0, .8, .6, .5, .4, .3], [1.0, .8, .6, .7, .8, .9])
        3
        >>> overfitting_onset([1.0, .8, .6, .5, .4], [1.0, .8, .6, .7, .8]) is None
        True
    """
    if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
        raise ValueError(f"patience={_show(patience)}: must be an integer >= 1")
    tr = np.asarray(train_losses, dtype=np.float64)
    va = np.asarray(val_losses, dtype=np.float64)
    if tr.ndim != 1 or va.ndim != 1 or tr.shape != va.shape:
        raise ValueError(
            f"train_losses has shape {tr.shape} and val_losses {va.shape}: must be 1-D with one value per epoch each"
        )
    for name, arr in (("train_losses", tr), ("val_losses", va)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(f"{name}[{int(bad[0])}]={_show(arr[bad[0]])}: losses must be finite")
    diverging = (np.diff(va) > 0) & (np.diff(tr) < 0)  # diverging[i]: epoch i+2 vs epoch i+1 (1-based)
    run = 0
    for i, flag in enumerate(diverging):
        run = run + 1 if flag else 0
        if run == patience:
            return i + 2 - patience  # 1-based epoch just before the run started
    return None
