"""Statistics for repeated runs: mean, standard error, Student-t intervals, Welch's t-test,
and Holm's correction when several variants are tested against one baseline.

Example:
    >>> s = summarize([0.90, 0.92, 0.91, 0.93])
    >>> round(s.mean, 3), round(s.se, 4), s.n
    (0.915, 0.0065, 4)
    >>> round(s.ci_low, 4), round(s.ci_high, 4)
    (0.8945, 0.9355)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _st


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1), standard error and a Student-t interval."""

    n: int
    mean: float
    std: float
    se: float
    ci_low: float
    ci_high: float
    confidence: float

    def as_metrics(self, name: str) -> dict[str, float]:
        """``{name}_mean``, ``_std``, ``_se``, ``_ci_low``, ``_ci_high`` and ``_n``."""
        return {f"{name}_mean": self.mean, f"{name}_std": self.std, f"{name}_se": self.se,
                f"{name}_ci_low": self.ci_low, f"{name}_ci_high": self.ci_high, f"{name}_n": float(self.n)}


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Summarize independent measurements (one per seed).

    The interval is mean ± t_{(1+confidence)/2, n-1} · s/√n. With one value the spread is
    unknown: std, se and the interval are NaN rather than a misleading zero.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r}: must be between 0 and 1 (exclusive)")
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        raise ValueError("values=[]: need at least one finite value to summarize")
    mean = math.fsum(xs) / n
    if n == 1:
        nan = float("nan")
        return Summary(1, mean, nan, nan, nan, nan, confidence)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    se = std / math.sqrt(n)
    half = float(_st.t.ppf((1 + confidence) / 2, n - 1)) * se
    return Summary(n, mean, std, se, mean - half, mean + half, confidence)


@dataclass(frozen=True)
class Comparison:
    """Welch's unequal-variance t-test of ``a`` against ``b`` and the effect size."""

    t: float
    p_value: float
    mean_difference: float  # mean(a) - mean(b)
    hedges_g: float  # standardized mean difference, small-sample corrected


def welch(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """Two-sided Welch t-test; Hedges' g uses the pooled standard deviation.

    Example:
        >>> c = welch([0.91, 0.92, 0.93, 0.92], [0.88, 0.89, 0.90, 0.89])
        >>> c.p_value < 0.01, round(c.mean_difference, 3)
        (True, 0.03)
    """
    xa = [float(v) for v in a]
    xb = [float(v) for v in b]
    if len(xa) < 2 or len(xb) < 2:
        raise ValueError(f"welch: each group needs at least 2 values (got {len(xa)} and {len(xb)})")
    res = _st.ttest_ind(xa, xb, equal_var=False)
    sa, sb = summarize(xa), summarize(xb)
    na, nb = len(xa), len(xb)
    pooled = math.sqrt(((na - 1) * sa.std**2 + (nb - 1) * sb.std**2) / (na + nb - 2))
    d = (sa.mean - sb.mean) / pooled if pooled > 0 else float("nan")
    g = d * (1 - 3 / (4 * (na + nb) - 9))
    return Comparison(float(res.statistic), float(res.pvalue), sa.mean - sb.mean, g)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given.

    With the m finite p-values sorted, p_(1) <= ... <= p_(m), the adjusted value of the i-th is

        max_{j <= i} min(1, (m - j + 1) p_(j)),

    so rejecting where the adjusted p is below alpha keeps the family-wise error rate at alpha
    for any dependence between the tests (each variant is compared with the same baseline
    seeds), while rejecting at least as much as Bonferroni (m p). A NaN p-value (a test
    that could not be computed) stays NaN and is not counted in m. scipy has no Holm step
    (``scipy.stats.false_discovery_control`` controls the false discovery rate, a weaker
    guarantee), so it is written out here.

    Example:
        >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03, 0.2])]
        [0.04, 0.09, 0.09, 0.2]
    """
    ps = [float(p) for p in p_values]
    bad = [p for p in ps if not math.isnan(p) and not 0.0 <= p <= 1.0]
    if bad:
        raise ValueError(f"p_values={bad!r}: each p-value must be in [0, 1] (or NaN)")
    order = sorted((i for i, p in enumerate(ps) if not math.isnan(p)), key=lambda i: ps[i])
    m = len(order)
    out = [float("nan")] * len(ps)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out
