"""trainer.diagnosis: the course's bias/variance table, baselines and the overfitting onset."""

from __future__ import annotations

import dataclasses
import doctest

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.metrics import accuracy_score, mean_squared_error

from trainer import diagnosis as D
from trainer.diagnosis import Diagnosis, DiagnosisThresholds, baseline_error, diagnose, overfitting_onset


def test_doctests() -> None:
    assert doctest.testmod(D, raise_on_error=False).failed == 0


@pytest.mark.parametrize(
    ("train", "dev", "verdict"),
    [
        (0.01, 0.12, "high_variance"),
        (0.12, 0.13, "high_bias"),
        (0.12, 0.20, "high_bias_high_variance"),
        (0.01, 0.02, "good_fit"),
    ],
)
def test_course_table_with_default_thresholds(train: float, dev: float, verdict: str) -> None:
    """The course material's four models, Bayes error ~0%."""
    for reference in (None, 0.0):
        d = diagnose(train, dev, reference_error=reference)
        assert d.verdict == verdict
        assert d.variance == pytest.approx(dev - train)
        assert d.avoidable_bias == pytest.approx(train)
        assert d.beats_baseline is None
        assert d.high_bias == ("bias" in verdict)
        assert d.high_variance == ("variance" in verdict)


def test_reference_error_changes_the_verdict() -> None:
    # 8% train error is high bias against 0% Bayes error, but fine against 7.5% human-level error.
    assert diagnose(0.08, 0.10).verdict == "high_bias"
    d = diagnose(0.08, 0.10, reference_error=0.075)
    assert d.verdict == "good_fit"
    assert d.avoidable_bias == pytest.approx(0.005)
    assert diagnose(0.08, 0.14, reference_error=0.075).verdict == "high_variance"


def test_threshold_boundaries_are_not_high() -> None:
    # Exactly at the threshold is not "above" it, despite float rounding (0.07 - 0.02 = 0.05000000000000001).
    assert diagnose(0.02, 0.07).verdict == "good_fit"
    assert diagnose(0.05, 0.06).verdict == "good_fit"
    assert diagnose(0.0501, 0.06).verdict == "high_bias"
    assert diagnose(0.02, 0.0701).verdict == "high_variance"


def test_custom_thresholds() -> None:
    strict = DiagnosisThresholds(high_bias=0.005, high_variance=0.005)
    assert diagnose(0.01, 0.02, thresholds=strict).verdict == "high_bias_high_variance"
    lax = DiagnosisThresholds(high_bias=0.2, high_variance=0.2)
    assert diagnose(0.12, 0.20, thresholds=lax).verdict == "good_fit"


@pytest.mark.parametrize(
    ("kwargs", "quoted"),
    [
        ({"high_bias": -0.1}, "high_bias=-0.1"),
        ({"high_variance": float("nan")}, "high_variance=nan"),
        ({"baseline_margin": "0.1"}, "baseline_margin='0.1'"),
        ({"high_bias": True}, "high_bias=True"),
    ],
)
def test_thresholds_are_validated(kwargs: dict, quoted: str) -> None:
    with pytest.raises(ValueError) as err:
        DiagnosisThresholds(**kwargs)
    assert quoted in str(err.value)


@pytest.mark.parametrize(
    ("args", "kwargs", "quoted"),
    [
        ((-0.1, 0.2), {}, "train_error=-0.1"),
        ((0.1, float("inf")), {}, "val_error=inf"),
        ((0.1, 0.2), {"baseline_error": None, "test_error": "x"}, "test_error='x'"),
        ((0.1, 0.2), {"thresholds": {"high_bias": 0.1}}, "thresholds="),
    ],
)
def test_diagnose_validates(args: tuple, kwargs: dict, quoted: str) -> None:
    with pytest.raises(ValueError) as err:
        diagnose(*args, **kwargs)
    assert quoted in str(err.value)


def test_baseline_takes_precedence_and_tags() -> None:
    d = diagnose(0.85, 0.90, baseline_error=0.88)  # worse than majority vote
    assert d.verdict == "no_better_than_baseline" and d.beats_baseline is False
    assert d.as_tags() == {"sweep.diagnosis": "no_better_than_baseline", "sweep.beats_baseline": "false"}
    assert diagnose(0.1, 0.88, baseline_error=0.88).beats_baseline is False  # equal is not better
    d = diagnose(0.01, 0.12, baseline_error=0.9)
    assert d.verdict == "high_variance" and d.beats_baseline is True
    assert d.as_tags() == {"sweep.diagnosis": "high_variance", "sweep.beats_baseline": "true"}
    assert diagnose(0.01, 0.02).as_tags() == {"sweep.diagnosis": "good_fit"}
    margin = DiagnosisThresholds(baseline_margin=0.1)
    assert diagnose(0.7, 0.8, baseline_error=0.85, thresholds=margin).verdict == "no_better_than_baseline"


def test_as_metrics_and_frozen() -> None:
    d = diagnose(0.01, 0.12, test_error=0.13, reference_error=0.0, baseline_error=0.9)
    assert d.as_metrics() == pytest.approx(
        {
            "diag_train_error": 0.01,
            "diag_val_error": 0.12,
            "diag_test_error": 0.13,
            "diag_variance": 0.11,
            "diag_avoidable_bias": 0.01,
            "diag_reference_error": 0.0,
            "diag_baseline_error": 0.9,
        }
    )
    assert set(diagnose(0.1, 0.2).as_metrics("val")) == {
        "val_diag_train_error",
        "val_diag_val_error",
        "val_diag_variance",
        "val_diag_avoidable_bias",
    }
    assert d.advice.startswith("High variance")
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.verdict = "good_fit"  # type: ignore[misc]
    assert isinstance(d, Diagnosis) and d.verdict in D.VERDICTS


def test_baseline_error_matches_dummy_estimators() -> None:
    rng = np.random.default_rng(0)
    y_train = rng.choice(4, size=200, p=[0.1, 0.5, 0.3, 0.1])
    y_eval = rng.choice(4, size=100)
    dummy = DummyClassifier(strategy="most_frequent").fit(np.zeros((200, 1)), y_train)
    expected = 1 - accuracy_score(y_eval, dummy.predict(np.zeros((100, 1))))
    assert baseline_error(y_train, y_eval, "multiclass") == pytest.approx(expected)
    assert baseline_error([0, 0, 1, 1], [1, 1, 1, 0], "binary") == 0.75  # tie -> smallest label (0)
    assert baseline_error(["cat", "dog", "dog"], ["cat", "dog"], "multiclass") == 0.5

    yr_train, yr_eval = rng.normal(2, 1, 50), rng.normal(2, 1, 30)
    reg = DummyRegressor(strategy="mean").fit(np.zeros((50, 1)), yr_train)
    assert baseline_error(yr_train, yr_eval, "regression") == pytest.approx(
        mean_squared_error(yr_eval, reg.predict(np.zeros((30, 1))))
    )


@pytest.mark.parametrize(
    ("call", "quoted"),
    [
        (lambda: baseline_error([0, 1], [0, 1], "ranking"), "task='ranking'"),
        (lambda: baseline_error([], [0, 1], "binary"), "y_train has 0"),
        (lambda: baseline_error([[0, 1]], [0, 1], "binary"), "y_train.shape=(1, 2)"),
        (lambda: baseline_error([1.0, np.nan], [0.0], "regression"), "NaN"),
    ],
)
def test_baseline_error_validates(call, quoted: str) -> None:
    with pytest.raises(ValueError) as err:
        call()
    assert quoted in str(err.value)


FALLING = [1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]


@pytest.mark.parametrize(
    ("train", "val", "patience", "onset"),
    [
        # val minimum at epoch 3, then rises for exactly 3 epochs (4, 5, 6): onset 3
        (FALLING[:6], [1.0, 0.8, 0.6, 0.7, 0.8, 0.9], 3, 3),
        # only 2 rising epochs at the end: not yet
        (FALLING[:5], [1.0, 0.8, 0.6, 0.7, 0.8], 3, None),
        # same curve with patience 2: onset 3
        (FALLING[:5], [1.0, 0.8, 0.6, 0.7, 0.8], 2, 3),
        # a plateau (equal loss) is not a rise
        (FALLING[:6], [1.0, 0.8, 0.6, 0.6, 0.7, 0.8], 3, None),
        # the rise is interrupted at epoch 5 and restarts: onset is epoch 5
        (FALLING, [1.0, 0.8, 0.7, 0.8, 0.75, 0.8, 0.9, 1.0], 3, 5),
        # val rises while train rises too (divergence, not overfitting): never
        ([1.0, 0.8, 0.9, 1.0, 1.1, 1.2], [1.0, 0.8, 0.9, 1.0, 1.1, 1.2], 3, None),
        # patience 1: first epoch followed by any rise with falling train loss
        (FALLING[:4], [1.0, 1.1, 1.0, 0.9], 1, 1),
        # rise right from epoch 1 for the whole run of length patience + 1
        (FALLING[:4], [0.5, 0.6, 0.7, 0.8], 3, 1),
        # curves too short for the patience
        (FALLING[:3], [0.5, 0.6, 0.7], 3, None),
        ([1.0], [1.0], 1, None),
        ([], [], 3, None),
        # monotone decreasing validation loss: never
        (FALLING, FALLING, 3, None),
    ],
)
def test_overfitting_onset(train: list, val: list, patience: int, onset: int | None) -> None:
    assert overfitting_onset(train, val, patience=patience) == onset


@pytest.mark.parametrize(
    ("args", "quoted"),
    [
        (([1.0, 0.9], [1.0], 3), "must be 1-D with one value per epoch"),
        (([1.0, 0.9], [1.0, 0.8], 0), "patience=0"),
        (([1.0, 0.9], [1.0, 0.8], 1.5), "patience=1.5"),
        (([1.0, float("nan")], [1.0, 0.8], 1), "train_losses[1]=nan"),
    ],
)
def test_overfitting_onset_validates(args: tuple, quoted: str) -> None:
    with pytest.raises(ValueError) as err:
        overfitting_onset(*args)
    assert quoted in str(err.value)
