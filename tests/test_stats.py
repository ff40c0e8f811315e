"""Statistics for repeats, checked against scipy and the textbook formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sweeps.stats import holm, summarize, welch


def test_summary_matches_the_formulas() -> None:
    xs = [0.881, 0.902, 0.893, 0.887, 0.910, 0.899, 0.895, 0.885, 0.906, 0.890]
    s = summarize(xs)
    n = len(xs)
    assert s.n == n
    assert s.mean == pytest.approx(np.mean(xs))
    assert s.std == pytest.approx(np.std(xs, ddof=1))
    assert s.se == pytest.approx(np.std(xs, ddof=1) / math.sqrt(n))
    lo, hi = stats.t.interval(0.95, n - 1, loc=np.mean(xs), scale=stats.sem(xs))
    assert (s.ci_low, s.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert s.as_metrics("test_accuracy")["test_accuracy_se"] == s.se


def test_other_confidence_levels_widen_and_narrow() -> None:
    xs = [1.0, 2.0, 3.0, 4.0]
    assert summarize(xs, 0.99).ci_high > summarize(xs, 0.95).ci_high > summarize(xs, 0.80).ci_high


def test_one_value_has_unknown_spread_not_zero() -> None:
    s = summarize([0.9])
    assert s.mean == 0.9 and math.isnan(s.se) and math.isnan(s.ci_low)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="values=\\[\\]"):
        summarize([])
    with pytest.raises(ValueError, match="confidence=1.5"):
        summarize([1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="at least 2 values"):
        welch([1.0], [1.0, 2.0])


def test_welch_matches_scipy_and_hedges_g() -> None:
    a = [0.91, 0.92, 0.93, 0.92, 0.925]
    b = [0.88, 0.90, 0.89, 0.87, 0.90, 0.885]
    c = welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert c.t == pytest.approx(ref.statistic) and c.p_value == pytest.approx(ref.pvalue)
    na, nb = len(a), len(b)
    pooled = math.sqrt(((na - 1) * np.var(a, ddof=1) + (nb - 1) * np.var(b, ddof=1)) / (na + nb - 2))
    d = (np.mean(a) - np.mean(b)) / pooled
    assert c.hedges_g == pytest.approx(d * (1 - 3 / (4 * (na + nb) - 9)))
    assert c.mean_difference == pytest.approx(np.mean(a) - np.mean(b))


def test_holm_step_down_by_hand() -> None:
    # sorted: 0.01 (x4 = 0.04), 0.03 (x3 = 0.09), 0.04 (x2 = 0.08 -> 0.09, monotone), 0.2 (x1)
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    # capped at 1; one test is its own correction; NaN stays out of the family
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == pytest.approx([0.02])
    adjusted = holm([0.01, float("nan"), 0.02])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    assert holm([]) == []


def test_holm_lies_between_raw_and_bonferroni() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        ps = rng.uniform(0, 0.2, size=int(rng.integers(1, 9)))
        adjusted = np.array(holm(ps))
        assert np.all(adjusted >= ps - 1e-15) and np.all(adjusted <= np.minimum(1, len(ps) * ps) + 1e-15)


def test_holm_refuses_a_value_outside_zero_one() -> None:
    with pytest.raises(ValueError, match=r"p_values=\[1.5\].*\[0, 1\]"):
        holm([0.1, 1.5])
