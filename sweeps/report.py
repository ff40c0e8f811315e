"""A self-contained report of one sweep, read back from MLflow: HTML, Markdown and PNGs.

Everything is computed from the runs of one sweep execution (tag ``sweep.id``), read once:

- the question (the sweep's description) and its resolved spec;
- the budget spent: search trials by status, repeat runs, epochs trained, summed epoch time
  and the parent's wall time;
- per variant (a sweep without variants is one variant, ``main``): the best configuration
  (the ``rank1`` summary of the repeats, else the best completed search trial), mean ± SE and
  the confidence interval of the primary test metric, Welch's t-test against the baseline
  variant, the bias-variance numbers and the most common diagnosis;
- figures (seeds, learning curves, bias-variance, optimization history, fANOVA importance,
  parallel coordinates) and findings written from those numbers.

Example:
    >>> paths = write_report("sqlite:///mlflow.db", sweep="20261122-021500-a1b2c3")  # doctest: +SKIP

The primary metric is ``test_accuracy`` when the runs have it (classification), else the
test twin of the sweep's metric (``val_mse`` -> ``test_mse``), else ``test_mse``.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import optuna
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from sweeps.resume import VARIANTS_ADDED_TAG
from sweeps.stats import Comparison, holm, summarize, welch
from tracking import client_for, resolve_tracking_uri
from tracking import tags as T
from tracking.artifacts import read_text_artifact
from tracking.plots import _colors, _figure, _render

logger = logging.getLogger(__name__)

DIAGNOSIS_TAG = "sweep.diagnosis"
MAIN = "main"  # the variant name of a sweep without variants
ALPHA = 0.05  # significance level of the findings
MIN_SEEDS = 5  # fewer seeds than this draws a caution
DIAG_KEYS = ("diag_train_error", "diag_val_error", "diag_variance")


# ---- the report's data --------------------------------------------------------------------------
@dataclass
class BiasVariance:
    """Mean diagnosis errors over a variant's runs and its most common verdict."""

    source: str  # "repeat runs" or "completed search runs"
    n_runs: int
    train_error: float
    val_error: float
    variance: float
    verdict: str | None
    verdict_count: int
    verdict_total: int


@dataclass
class VariantResult:
    """One variant's best configuration and how it compares with the baseline."""

    name: str
    is_baseline: bool
    source: str  # "repeats (rank1 summary)" or "best search trial"
    run_id: str | None
    source_trial: str | None
    mean: float
    se: float
    ci_low: float
    ci_high: float
    n: int
    values: list[float]  # the primary metric per seed (rank1 repeats)
    seeds: list[str]
    params: dict[str, str]  # shown: the searched parameters and those that differ from the baseline's
    differs: list[str]  # params whose best value differs from the baseline's
    run_params: dict[str, str] = field(default_factory=dict)  # every parameter of the run (seed left out)
    comparison: Comparison | None = None
    comparison_note: str = ""
    bias_variance: BiasVariance | None = None
    search_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Budget:
    """What the sweep actually spent."""

    planned_trials: int | None
    search_by_status: dict[str, int]
    repeat_by_status: dict[str, int]
    summary_runs: int
    total_epochs: int
    epoch_seconds: float  # sum of every run's per-epoch time (train + validation), all runs
    cpu_seconds: float  # sum of the trial runs' CPU seconds (tags.CPU_SECONDS), where recorded
    cpu_runs: int  # trial runs that recorded their CPU seconds
    trial_runs: int  # search and repeat runs
    wall_seconds: float | None
    still_running: bool


@dataclass
class ReportFigure:
    """One PNG of the report."""

    name: str  # file stem
    title: str
    caption: str
    png: bytes

    @property
    def filename(self) -> str:
        return f"{self.name}.png"


@dataclass
class Report:
    """Everything ``render_html`` and ``render_markdown`` show."""

    sweep_name: str
    sweep_id: str
    experiment_id: str
    parent_run_id: str
    status: str
    description: str
    spec_yaml: str
    metric: str
    goal: str
    primary_metric: str
    primary_goal: str
    confidence: float
    baseline: str
    variants: list[VariantResult]
    budget: Budget
    findings: list[str]
    notes: list[str]
    figures: list[ReportFigure]
    generated_at: str


# ---- reading MLflow -----------------------------------------------------------------------------
def _client(client_or_uri: MlflowClient | str | None) -> MlflowClient:
    if isinstance(client_or_uri, MlflowClient):
        return client_or_uri
    return client_for(resolve_tracking_uri(client_or_uri))


def _search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str,
                order_by: list[str] | None = None, limit: int | None = None) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, order_by=order_by,
                                  max_results=min(limit or 10_000, 10_000), page_token=token)
        runs.extend(page)
        token = page.token
        if not token or (limit is not None and len(runs) >= limit):
            return runs[:limit] if limit else runs


def find_parent(client: MlflowClient, sweep: str | None = None, experiment: str | None = None) -> Run:
    """The parent run of ``sweep`` (a sweep id, else a sweep name: its newest execution), or the
    newest parent run of ``experiment``."""
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise LookupError(f"experiment={experiment!r}: no such MLflow experiment")
        exp_ids = [exp.experiment_id]
    else:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
    if not exp_ids:
        raise LookupError("the tracking store has no experiments")
    parent_filter = f"tags.`{T.ROLE}` = 'parent'"
    order = ["attributes.start_time DESC"]
    if sweep is not None:
        quoted = sweep.replace("'", "\\'")
        for key in (T.SWEEP_ID, T.SWEEP_NAME):
            found = _search_all(client, exp_ids, f"{parent_filter} and tags.`{key}` = '{quoted}'", order, 1)
            if found:
                return found[0]
        if experiment is None:  # a sweep's experiment has its name unless tracking.experiment says otherwise
            exp = client.get_experiment_by_name(sweep)
            found = _search_all(client, [exp.experiment_id], parent_filter, order, 1) if exp else []
            if found:
                return found[0]
        raise LookupError(f"sweep={sweep!r}: no parent run has that sweep id or sweep name")
    found = _search_all(client, exp_ids, parent_filter, order, 1)
    if not found:
        raise LookupError(f"experiment={experiment!r}: no sweep parent run found")
    return found[0]


class _Histories:
    """Per-run metric histories, each fetched at most once."""

    def __init__(self, client: MlflowClient):
        self.client = client
        self._cache: dict[tuple[str, str], list[tuple[int, float]]] = {}

    def get(self, run: Run, key: str) -> list[tuple[int, float]]:
        if key not in run.data.metrics:
            return []
        ck = (run.info.run_id, key)
        if ck not in self._cache:
            hist = self.client.get_metric_history(run.info.run_id, key)
            self._cache[ck] = sorted((int(m.step), float(m.value)) for m in hist)
        return self._cache[ck]


# ---- helpers ------------------------------------------------------------------------------------
def _variant(run: Run) -> str:
    return run.data.tags.get(T.VARIANT, MAIN)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _fmt(x: float | None, digits: int = 4) -> str:
    return f"{x:.{digits}g}" if _finite(x) else "–"


def _fmt_p(p: float | None) -> str:
    if not _finite(p):
        return "–"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _rank_key(config_id: str) -> int:
    digits = "".join(c for c in config_id if c.isdigit())
    return int(digits) if digits else 10**6


def _primary_metric(runs: list[Run], metric: str, goal: str) -> tuple[str, str]:
    present = {k for r in runs for k in r.data.metrics}
    if "test_accuracy" in present:
        return "test_accuracy", "maximize"
    twin = "test_" + metric.removeprefix("val_")
    if metric.startswith("val_") and twin in present:
        return twin, goal
    if "test_mse" in present:
        return "test_mse", "minimize"
    return metric, goal


def _parse_spec(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        logger.warning("spec.resolved.yaml is not valid YAML: %s", e)
        return {}
    return data if isinstance(data, dict) else {}


def _variant_parameters(spec: dict[str, Any], variant: str) -> dict[str, Any]:
    """The raw parameter specs a variant ran: the file's parameters with the variant's over them."""
    params = dict(spec.get("parameters") or {})
    params.update((spec.get("variants") or {}).get(variant) or {})
    return params


def _distribution(raw: Any) -> optuna.distributions.BaseDistribution | None:
    """Optuna's distribution for one searched parameter of the resolved spec; None when fixed."""
    if not isinstance(raw, dict):
        return None
    kind = raw.get("distribution") or ("categorical" if "values" in raw else None)
    if kind in ("uniform", "log_uniform"):
        return optuna.distributions.FloatDistribution(float(raw["min"]), float(raw["max"]),
                                                      log=kind == "log_uniform")
    if kind in ("int_uniform", "int_log_uniform"):
        log = kind == "int_log_uniform"
        return optuna.distributions.IntDistribution(int(raw["min"]), int(raw["max"]), log=log,
                                                    step=1 if log else int(raw.get("step") or 1))
    if kind in ("categorical", "grid"):
        return optuna.distributions.CategoricalDistribution(list(raw["values"]))
    return None


def _param_value(text: str, dist: optuna.distributions.BaseDistribution) -> Any:
    """A param read back from MLflow (a string) as the distribution's type; ValueError if outside it."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        for choice in dist.choices:
            if str(choice) == text:
                return choice
        raise ValueError(f"{text!r} is not one of {dist.choices}")
    value: Any = int(float(text)) if isinstance(dist, optuna.distributions.IntDistribution) else float(text)
    if not dist._contains(dist.to_internal_repr(value)):
        raise ValueError(f"{value!r} is outside {dist}")
    return value


# ---- building the report ------------------------------------------------------------------------
class _Builder:
    def __init__(self, client: MlflowClient, parent: Run):
        self.client = client
        self.parent = parent
        self.notes: list[str] = []
        ptags = parent.data.tags
        self.sweep_id = ptags.get(T.SWEEP_ID, "")
        self.sweep_name = ptags.get(T.SWEEP_NAME, parent.info.run_name or "")
        metric_tag = ptags.get(T.METRIC, "val_accuracy:maximize")
        self.metric, _, goal = metric_tag.partition(":")
        self.goal = goal or "maximize"
        self.sign = 1.0 if self.goal == "maximize" else -1.0
        self.runs = [r for r in _search_all(client, [parent.info.experiment_id],
                                            f"tags.`{T.SWEEP_ID}` = '{self.sweep_id}'")
                     if r.info.run_id != parent.info.run_id]
        self.hist = _Histories(client)
        self.spec_yaml = read_text_artifact(client, parent.info.run_id, "spec.resolved.yaml") or ""
        if not self.spec_yaml:
            self.notes.append("The parent run has no spec.resolved.yaml artifact: the spec is not shown "
                              "and hyperparameter importance cannot be computed.")
        self.spec = _parse_spec(self.spec_yaml)
        self.confidence = float((self.spec.get("repeats") or {}).get("confidence", 0.95))
        self.primary, self.primary_goal = _primary_metric(self.runs, self.metric, self.goal)
        self.psign = 1.0 if self.primary_goal == "maximize" else -1.0
        found = {_variant(r) for r in self.runs}
        self.declared = list(self.spec.get("variants") or {})
        self.variant_names = [v for v in self.declared if v in found] + sorted(found - set(self.declared)) or [MAIN]
        # a study stopped (or still running) part-way: its later variants have no runs yet
        unstarted = [v for v in self.declared if v not in found]
        if unstarted:
            self.notes.append(
                f"Not started yet: {len(unstarted)} of the {len(self.declared)} variants in the spec have no runs "
                f"({', '.join(unstarted)}); they are not in the tables or figures.")
        self.baseline = (ptags.get(T.BASELINE_VARIANT) or self.spec.get("baseline_variant")
                         or self.variant_names[0])
        added = [v for v in ptags.get(VARIANTS_ADDED_TAG, "").split(",") if v]
        if added:
            self.notes.append(
                f"Added on resume, after the study had started: {', '.join(added)}. They had the same trial "
                "budget and search seed as the others, but were chosen when earlier variants' results could "
                "be seen: weigh their comparison with that in mind.")
        if self.baseline not in self.variant_names:
            self.notes.append(f"The baseline variant {self.baseline!r} has no runs; "
                              f"{self.variant_names[0]!r} is used instead.")
            self.baseline = self.variant_names[0]

    def of(self, variant: str, stage: str, role: str = "trial") -> list[Run]:
        return [r for r in self.runs if _variant(r) == variant and r.data.tags.get(T.ROLE) == role
                and r.data.tags.get(T.STAGE, "search" if role == "trial" else "") == stage]

    # -- pieces
    def budget(self) -> Budget:
        search = [r for r in self.runs if r.data.tags.get(T.ROLE) == "trial"
                  and r.data.tags.get(T.STAGE, "search") == "search"]
        repeats = [r for r in self.runs if r.data.tags.get(T.STAGE) == "repeat"]
        epochs, seconds = 0, 0.0
        cpu = [c for r in search + repeats if _finite(c := r.data.metrics.get(T.CPU_SECONDS))]
        for run in search + repeats:
            timing = self.hist.get(run, "epoch_seconds")
            history = timing or next((h for k in ("train_loss", "val_loss", self.metric)
                                      if (h := self.hist.get(run, k))), [])
            if history:
                epochs += max(max(s for s, _ in history), len(history))
            seconds += sum(v for _, v in timing if math.isfinite(v))
        trials = self.parent.data.params.get("search.trials")
        # every variant the spec declares (run or not yet), plus any found without a declaration
        n_variants = len(set(self.declared) | set(self.variant_names) - {MAIN}) or 1
        planned = int(trials) * n_variants if trials and trials.isdigit() else None
        end = self.parent.info.end_time
        start = self.parent.info.start_time
        wall = ((end if end else time.time() * 1000) - start) / 1000 if start else None
        return Budget(
            planned_trials=planned,
            search_by_status=dict(Counter(r.data.tags.get(T.TRIAL_STATUS, "unknown") for r in search)),
            repeat_by_status=dict(Counter(r.data.tags.get(T.TRIAL_STATUS, "unknown") for r in repeats)),
            summary_runs=sum(1 for r in self.runs if r.data.tags.get(T.ROLE) == "summary"),
            total_epochs=epochs, epoch_seconds=seconds, cpu_seconds=float(sum(cpu)), cpu_runs=len(cpu),
            trial_runs=len(search) + len(repeats), wall_seconds=wall, still_running=not end,
        )

    def best_search(self, variant: str) -> Run | None:
        trials = [r for r in self.of(variant, "search") if _finite(r.data.metrics.get(self.metric))]
        completed = [r for r in trials if r.data.tags.get(T.TRIAL_STATUS) == T.COMPLETED]
        pool = completed or trials
        return max(pool, key=lambda r: self.sign * r.data.metrics[self.metric]) if pool else None

    def rank1(self, variant: str) -> tuple[Run | None, list[Run]]:
        summaries = sorted(self.of(variant, "summary", role="summary"),
                           key=lambda r: _rank_key(r.data.tags.get(T.CONFIG_ID, "")))
        repeats = [r for r in self.of(variant, "repeat") if r.data.tags.get(T.TRIAL_STATUS) == T.COMPLETED]
        config_ids = sorted({r.data.tags.get(T.CONFIG_ID, "") for r in repeats}, key=_rank_key)
        top = summaries[0].data.tags.get(T.CONFIG_ID) if summaries else (config_ids[0] if config_ids else None)
        chosen = [r for r in repeats if r.data.tags.get(T.CONFIG_ID) == top]
        chosen.sort(key=lambda r: (int(r.data.tags.get(T.SEED, "0") or 0)))
        return (summaries[0] if summaries else None), chosen

    def variant_result(self, variant: str) -> VariantResult:
        summary, repeats = self.rank1(variant)
        values = [r.data.metrics[self.primary] for r in repeats if _finite(r.data.metrics.get(self.primary))]
        m = summary.data.metrics if summary else {}
        p = self.primary
        if summary is not None and _finite(m.get(f"{p}_mean")):
            mean, se, lo, hi = (m.get(f"{p}_{k}", math.nan) for k in ("mean", "se", "ci_low", "ci_high"))
            n = int(m.get(f"{p}_n", len(values)))
            source, run = "repeats (rank1 summary run)", summary
            if n != len(values):
                self.notes.append(f"Variant {variant}: the summary run counts {n} seeds but {len(values)} "
                                  f"completed rank1 repeat runs have {p}.")
        elif values:
            s = summarize(values, self.confidence)
            mean, se, lo, hi, n = s.mean, s.se, s.ci_low, s.ci_high, s.n
            source, run = "repeats (rank1, recomputed: no summary run)", repeats[0]
        else:
            run = self.best_search(variant)
            value = run.data.metrics.get(p, math.nan) if run else math.nan
            mean, se, lo, hi, n = value, math.nan, math.nan, math.nan, 1 if run else 0
            source = "best search trial (no repeats)"
        params = dict(run.data.params) if run else {}
        params.pop("seed", None)
        return VariantResult(
            name=variant, is_baseline=variant == self.baseline, source=source,
            run_id=run.info.run_id if run else None,
            source_trial=(run.data.tags.get(T.SOURCE_TRIAL) or run.data.tags.get(T.TRIAL_ID)) if run else None,
            mean=mean, se=se, ci_low=lo, ci_high=hi, n=n, values=values,
            seeds=[r.data.tags.get(T.SEED, "") for r in repeats if _finite(r.data.metrics.get(p))],
            params=params, differs=[], run_params=dict(params),
            search_counts=dict(Counter(r.data.tags.get(T.TRIAL_STATUS, "unknown")
                                       for r in self.of(variant, "search"))),
        )

    def bias_variance(self, variant: str) -> BiasVariance | None:
        runs, source = self.of(variant, "repeat"), "repeat runs"
        runs = [r for r in runs if any(k in r.data.metrics for k in DIAG_KEYS)]
        if not runs:
            # trials that ran their full budget: an ASHA-stopped trial's errors are those of a
            # partly trained model and would read as high bias
            source = "completed search runs"
            runs = [r for r in self.of(variant, "search") if any(k in r.data.metrics for k in DIAG_KEYS)
                    and r.data.tags.get(T.TRIAL_STATUS) == T.COMPLETED]
        if not runs:
            return None

        def mean_of(key: str) -> float:
            vals = [r.data.metrics[key] for r in runs if _finite(r.data.metrics.get(key))]
            return float(np.mean(vals)) if vals else math.nan

        verdicts = Counter(r.data.tags[DIAGNOSIS_TAG] for r in runs if DIAGNOSIS_TAG in r.data.tags)
        top = verdicts.most_common(1)[0] if verdicts else (None, 0)
        return BiasVariance(source, len(runs), mean_of("diag_train_error"), mean_of("diag_val_error"),
                            mean_of("diag_variance"), top[0], top[1], sum(verdicts.values()))

    def searched_names(self) -> list[str]:
        names: list[str] = []
        for v in self.variant_names:
            for k, raw in _variant_parameters(self.spec, v).items():
                if _distribution(raw) is not None and k not in names:
                    names.append(k)
        return names

    def build(self) -> Report:
        variants = [self.variant_result(v) for v in self.variant_names]
        base = next(v for v in variants if v.is_baseline)
        base_params = dict(base.params)
        searched = self.searched_names()
        for v in variants:
            v.bias_variance = self.bias_variance(v.name)
            # shown: the searched parameters, plus any other that differs from the baseline's best
            v.params = {k: v.params[k] for k in searched if k in v.params} | {
                k: val for k, val in sorted(v.params.items()) if k not in searched and base_params.get(k) != val}
            v.differs = [] if v.is_baseline else [k for k, val in v.params.items() if base_params.get(k) != val]
            if v.is_baseline:
                continue
            if len(v.values) >= 2 and len(base.values) >= 2:
                v.comparison = welch(v.values, base.values)
            else:
                v.comparison_note = (f"no test: needs ≥2 seeds in both groups (have {len(v.values)} and "
                                     f"{len(base.values)})")
        status = self.parent.data.tags.get(T.SWEEP_STATUS, self.parent.info.status)
        description = self.parent.data.tags.get(T.NOTE) or str(self.spec.get("description") or "")
        figures = _Figures(self, variants).all()
        budget = self.budget()
        report = Report(
            sweep_name=self.sweep_name, sweep_id=self.sweep_id, experiment_id=self.parent.info.experiment_id,
            parent_run_id=self.parent.info.run_id, status=status, description=description,
            spec_yaml=self.spec_yaml, metric=self.metric, goal=self.goal, primary_metric=self.primary,
            primary_goal=self.primary_goal, confidence=self.confidence, baseline=self.baseline,
            variants=variants, budget=budget, findings=[], notes=self.notes, figures=figures,
            generated_at=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        )
        report.findings = findings(report)
        return report


def build_report(client_or_uri: MlflowClient | str | None, sweep: str | None = None,
                 experiment: str | None = None) -> Report:
    """Read one sweep's runs and compute its report.

    Args:
        client_or_uri: an ``MlflowClient`` or a tracking URI (None: ``$MLFLOW_TRACKING_URI`` or
            ``./mlflow.db``).
        sweep: a sweep id, or a sweep name (its newest execution). None: the newest sweep of
            ``experiment`` (or of the whole store).
        experiment: restrict the search to this MLflow experiment.
    """
    client = _client(client_or_uri)
    parent = find_parent(client, sweep, experiment)
    logger.info("building the report of sweep %s (parent run %s)",
                parent.data.tags.get(T.SWEEP_ID), parent.info.run_id)
    return _Builder(client, parent).build()


# ---- findings -----------------------------------------------------------------------------------
def _difference(metric: str, a: float, b: float) -> str:
    """'+1.23 percentage points (+1.4% relative)' for a - b."""
    diff = a - b
    absolute = f"{diff * 100:+.2f} percentage points" if "accuracy" in metric else f"{diff:+.4g}"
    relative = f"{diff / abs(b) * 100:+.1f}% relative" if b else "relative change undefined"
    return f"{absolute} ({relative})"


def holm_adjusted(report: Report) -> dict[str, float]:
    """Each tested variant's Welch p-value after Holm's correction for all the variants tested
    against the baseline (the family: every variant with a comparison)."""
    tested = [v for v in report.variants if v.comparison is not None]
    return dict(zip([v.name for v in tested], holm([v.comparison.p_value for v in tested])))  # type: ignore[union-attr]


def findings(report: Report) -> list[str]:
    """Sentences computed from the report's numbers (no sentence is written without data behind it)."""
    out: list[str] = []
    p, sign = report.primary_metric, (1.0 if report.primary_goal == "maximize" else -1.0)
    scored = [v for v in report.variants if _finite(v.mean)]
    base = next((v for v in report.variants if v.is_baseline), None)
    if not scored:
        return [f"No run of this sweep recorded {p}: nothing to compare."]
    ranked = sorted(scored, key=lambda v: -sign * v.mean)
    win = ranked[0]
    what = "higher" if sign > 0 else "lower"
    if len(scored) == 1:
        out.append(f"Variant {win.name} reached {p} = {_fmt(win.mean)} ({win.source}, n = {win.n}).")
    else:
        other = base if base is not None and base is not win and _finite(base.mean) else ranked[1]
        role = "the baseline" if other.is_baseline else "the runner-up"
        out.append(f"Best {p} ({what} is better): variant {win.name} with {_fmt(win.mean)}"
                   f"{f' ± {_fmt(win.se, 2)} SE' if _finite(win.se) else ''} over n = {win.n}, vs {role} "
                   f"{other.name} with {_fmt(other.mean)}: {_difference(p, win.mean, other.mean)}.")
    adjusted = holm_adjusted(report)
    several = len(adjusted) > 1
    for v in report.variants:
        c = v.comparison
        if c is None:
            if not v.is_baseline and v.comparison_note and base is not None:
                out.append(f"Variant {v.name} vs baseline {base.name}: {v.comparison_note}.")
            continue
        sig = c.p_value < ALPHA
        better = sign * c.mean_difference > 0
        out.append(
            f"Variant {v.name} vs baseline {report.baseline}: mean difference {c.mean_difference:+.4g} "
            f"({'better' if better else 'worse'}), Welch's two-sided t-test on per-seed {p} "
            f"(n = {len(v.values)} vs {len(base.values) if base else 0}): p = {_fmt_p(c.p_value)}, "
            f"Hedges' g = {_fmt(c.hedges_g, 3)}: {'significant' if sig else 'not significant'} at {ALPHA}"
            + (f" (Holm-adjusted p = {_fmt_p(adjusted[v.name])})." if several else "."))
    out.extend(_budget_differences(report.variants, base))
    if several:
        kept = [name for name, q in adjusted.items() if q < ALPHA]
        raw = [v.name for v in report.variants if v.comparison is not None and v.comparison.p_value < ALPHA]
        lost = [name for name in raw if name not in kept]
        out.append(
            f"{len(adjusted)} variants were tested against the same baseline. After Holm's correction for "
            f"{len(adjusted)} comparisons (family-wise error rate {ALPHA}), "
            + (f"{len(kept)} remain{'s' if len(kept) == 1 else ''} significant: {', '.join(kept)}" if kept
               else "none remains significant")
            + (f"; no longer significant: {', '.join(lost)}." if lost else "."))
    labels = {"high_bias": "under-fits (high bias)", "high_variance": "over-fits (high variance)",
              "high_bias_high_variance": "both under- and over-fits (high bias and high variance)",
              "good_fit": "fits well (good_fit)", "no_better_than_baseline": "is no better than a naive baseline"}
    for v in report.variants:
        bv = v.bias_variance
        if bv is not None and bv.verdict:
            out.append(f"Variant {v.name} {labels.get(bv.verdict, bv.verdict)}: {bv.verdict_count} of "
                       f"{bv.verdict_total} {bv.source} say {bv.verdict}; mean train error "
                       f"{_fmt(bv.train_error)}, validation error {_fmt(bv.val_error)}, gap {_fmt(bv.variance)}.")
    gaps = [v for v in report.variants if v.bias_variance and _finite(v.bias_variance.variance)]
    if len(gaps) > 1:
        hi = max(gaps, key=lambda v: v.bias_variance.variance)  # type: ignore[union-attr]
        lo = min(gaps, key=lambda v: v.bias_variance.variance)  # type: ignore[union-attr]
        out.append(f"Largest generalization gap (validation − train error): {hi.name} "
                   f"({_fmt(hi.bias_variance.variance)}); smallest: {lo.name} "  # type: ignore[union-attr]
                   f"({_fmt(lo.bias_variance.variance)}).")  # type: ignore[union-attr]
    few = [f"{v.name} (n = {v.n})" for v in scored if v.n < MIN_SEEDS]
    if few:
        out.append(f"Caution: fewer than {MIN_SEEDS} seeds for {', '.join(few)}; means and p-values are fragile.")
    if len(scored) > 1 and _finite(win.ci_low):
        overlap = [v.name for v in ranked[1:] if _finite(v.ci_low)
                   and v.ci_low <= win.ci_high and win.ci_low <= v.ci_high]
        if overlap:
            out.append(f"Caution: the {report.confidence:.0%} CI of {win.name} [{_fmt(win.ci_low)}, "
                       f"{_fmt(win.ci_high)}] overlaps that of {', '.join(overlap)}.")
    failed = report.budget.search_by_status.get(T.FAILED, 0)
    if failed:
        total = sum(report.budget.search_by_status.values())
        out.append(f"{failed} of {total} search trials failed; they are left out of the results and figures (their epochs count in the budget).")
    return out


def _budget_differences(variants: list[VariantResult], base: VariantResult | None) -> list[str]:
    """A variant trained for another number of epochs than the baseline is not compared on
    regularization alone: say so next to its test."""
    if base is None or "epochs" not in base.run_params:
        return []
    out = []
    for v in variants:
        mine, theirs = v.run_params.get("epochs"), base.run_params["epochs"]
        if v is base or mine is None or mine == theirs:
            continue
        try:
            gap = float(mine) - float(theirs)
            budget = f"its {abs(gap):g} {'more' if gap > 0 else 'fewer'} epochs"
        except ValueError:
            budget = "its other epoch budget"
        out.append(f"Variant {v.name} trained for {mine} epochs, the baseline {base.name} for {theirs}: "
                   f"part of its difference may come from {budget}, not from its regularization.")
    return out


# ---- figures ------------------------------------------------------------------------------------
class _Figures:
    def __init__(self, b: _Builder, variants: list[VariantResult]):
        self.b = b
        self.variants = variants
        self.colors = dict(zip(b.variant_names, _colors(len(b.variant_names))))

    def all(self) -> list[ReportFigure]:
        out = []
        for make in (self.seeds, self.curves, self.bias_variance, self.history, self.importance, self.parallel):
            try:
                fig = make()
            except Exception as e:  # noqa: BLE001 - one broken figure must not lose the report
                logger.warning("figure %s failed: %s", make.__name__, e, exc_info=True)
                self.b.notes.append(f"Figure {make.__name__} could not be drawn: {type(e).__name__}: {e}")
                continue
            if fig is not None:
                out.append(fig)
        return out

    def seeds(self) -> ReportFigure | None:
        have = [v for v in self.variants if v.values]
        if not have:
            self.b.notes.append("No repeat runs: the variance-across-seeds figure is omitted.")
            return None
        fig = _figure((max(5.0, 1.6 * len(have) + 2), 4.5), left=0.14, right=0.97, bottom=0.14, top=0.9)
        ax = fig.subplots()
        rng = np.random.default_rng(0)
        for i, v in enumerate(have):
            xs = i + rng.uniform(-0.12, 0.12, len(v.values))
            ax.scatter(xs, v.values, color=self.colors[v.name], alpha=0.6, s=22, label=None)
            ax.errorbar([i + 0.28], [v.mean], yerr=[[v.mean - v.ci_low], [v.ci_high - v.mean]]
                        if _finite(v.ci_low) else None, fmt="none", ecolor="grey", capsize=3, lw=1)
            ax.errorbar([i + 0.28], [v.mean], yerr=v.se if _finite(v.se) else None, fmt="o", color="black",
                        capsize=5, lw=2)
        ax.set_xticks(range(len(have)), [v.name + (" (baseline)" if v.is_baseline else "") for v in have])
        ax.set_ylabel(self.b.primary)
        ax.set_title(f"{self.b.primary}: seeds, mean ± SE, {self.b.confidence:.0%} CI", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        return ReportFigure("seeds", "Variance across seeds",
                            f"Each dot is one seed of a variant's best configuration (rank1 repeats); "
                            f"black: mean ± SE, grey: {self.b.confidence:.0%} CI.", _render(fig))

    def curves(self) -> ReportFigure | None:
        fig = _figure((12.0, 4.5), left=0.06, right=0.98, bottom=0.12, top=0.9, wspace=0.2)
        axes = fig.subplots(1, 2)
        drawn = 0
        for v in self.variants:
            _, repeats = self.b.rank1(v.name)
            runs = repeats or ([r] if (r := self.b.best_search(v.name)) else [])
            for ax, key in zip(axes, ("train_loss", "val_loss")):
                by_step: dict[int, list[float]] = defaultdict(list)
                for run in runs:
                    for step, value in self.b.hist.get(run, key):
                        if math.isfinite(value):
                            by_step[step].append(value)
                if by_step:
                    steps = sorted(by_step)
                    ax.plot(steps, [np.mean(by_step[s]) for s in steps], color=self.colors[v.name],
                            marker="o" if len(steps) <= 30 else None, ms=3, label=f"{v.name} (n={len(runs)})")
                    drawn += 1
        if not drawn:
            self.b.notes.append("No train_loss/val_loss histories: the learning-curve figure is omitted.")
            fig.clear()
            return None
        for ax, key in zip(axes, ("train loss", "validation loss")):
            ax.set_title(f"{key}, mean over seeds")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        return ReportFigure("learning_curves", "Learning curves of each variant's best configuration",
                            "Train and validation loss per epoch, averaged over the seeds of each variant's best "
                            "configuration (the best search trial when there are no repeats).", _render(fig))

    def bias_variance(self) -> ReportFigure | None:
        fig = _figure((6.5, 5.5), left=0.13, right=0.97, bottom=0.11, top=0.92)
        ax = fig.subplots()
        lim, drawn = [], 0
        for name in self.b.variant_names:
            for stage, marker in (("search", "o"), ("repeat", "x")):
                pts = [(r.data.metrics["diag_train_error"], r.data.metrics["diag_val_error"])
                       for r in self.b.of(name, stage)
                       if _finite(r.data.metrics.get("diag_train_error"))
                       and _finite(r.data.metrics.get("diag_val_error"))]
                if pts:
                    x, y = zip(*pts)
                    ax.scatter(x, y, color=self.colors[name], marker=marker, s=28, alpha=0.75,
                               label=f"{name} {stage}")
                    lim.extend(x + y)
                    drawn += 1
        if not drawn:
            self.b.notes.append("No diag_train_error/diag_val_error metrics: the bias-variance figure is omitted.")
            fig.clear()
            return None
        lo, hi = min(lim), max(lim)
        pad = (hi - lo) * 0.05 or 0.01
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", ls="--", lw=1, label="val = train")
        ax.set_xlabel("train error (diag_train_error)")
        ax.set_ylabel("validation error (diag_val_error)")
        ax.set_title("Bias-variance: above the diagonal = generalization gap")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        return ReportFigure("bias_variance", "Bias-variance per trial",
                            "Train vs validation error of every evaluated run (o: search, x: repeat); distance "
                            "above the diagonal is the variance, distance from 0 along x the bias.", _render(fig))

    def history(self) -> ReportFigure | None:
        fig = _figure((10.0, 4.5), left=0.09, right=0.98, bottom=0.12, top=0.9)
        ax = fig.subplots()
        drawn = 0
        for name in self.b.variant_names:
            runs = sorted(self.b.of(name, "search"),
                          key=lambda r: (r.info.start_time or 0, r.data.tags.get(T.TRIAL_ID, "")))
            points: dict[str, list[tuple[int, float]]] = defaultdict(list)
            best_x, best_y, best = [], [], None
            for i, r in enumerate(runs, start=1):
                value = r.data.metrics.get(self.b.metric)
                if not _finite(value):
                    continue
                status = r.data.tags.get(T.TRIAL_STATUS, "unknown")
                points[status].append((i, value))
                if status == T.COMPLETED and (best is None or self.b.sign * value > self.b.sign * best):
                    best = value
                if best is not None:
                    best_x.append(i), best_y.append(best)
            if not points:
                continue
            c = self.colors[name]
            styles = {T.COMPLETED: {"color": c}, T.STOPPED_EARLY: {"facecolors": "none", "edgecolors": c},
                      T.FAILED: {"color": c, "marker": "x"}}
            for status, pts in points.items():
                ax.scatter(*zip(*pts), s=30, label=f"{name}: {status}",
                           **styles.get(status, {"color": c, "marker": "^"}))
            ax.step(best_x, best_y, where="post", color=c, lw=1.5, label=f"{name}: best so far")
            drawn += 1
        if not drawn:
            self.b.notes.append(f"No search trial recorded {self.b.metric}: the optimization history is omitted.")
            fig.clear()
            return None
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("search trial (in start order)")
        ax.set_ylabel(self.b.metric)
        ax.set_title(f"Optimization history ({self.b.goal} {self.b.metric})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        return ReportFigure("optimization_history", "Optimization history",
                            f"Last reported {self.b.metric} of each search trial in start order; hollow: stopped "
                            "early (partial budget), x: failed; the line is the best completed trial so far.",
                            _render(fig))

    def _trials(self, name: str) -> tuple[dict[str, Any], list[tuple[dict[str, Any], float]], list[str]]:
        """(distributions, [(params, value)], dropped params) of a variant's completed search trials.

        Conditional parameters (absent from some trials) are dropped, so every trial has every
        parameter: fANOVA needs one common search space.
        """
        dists = {k: d for k, raw in _variant_parameters(self.b.spec, name).items()
                 if (d := _distribution(raw)) is not None and not d.single()}
        runs = [r for r in self.b.of(name, "search") if r.data.tags.get(T.TRIAL_STATUS) == T.COMPLETED
                and _finite(r.data.metrics.get(self.b.metric))]
        common = [k for k in dists if runs and all(k in r.data.params for r in runs)]
        dropped = [k for k in dists if k not in common]
        rows = []
        for r in runs:
            try:
                rows.append(({k: _param_value(r.data.params[k], dists[k]) for k in common},
                             float(r.data.metrics[self.b.metric])))
            except ValueError as e:
                logger.warning("trial %s left out of the importance: %s", r.data.tags.get(T.TRIAL_ID), e)
        return {k: dists[k] for k in common}, rows, dropped

    def importance(self) -> ReportFigure | None:
        results: dict[str, dict[str, float]] = {}
        counts: dict[str, int] = {}
        for name in self.b.variant_names:
            dists, rows, dropped = self._trials(name)
            if dropped:
                self.b.notes.append(f"Importance ({name}): conditional parameters {', '.join(dropped)} are "
                                    "left out (not present in every completed trial).")
            if len(rows) < 2 or len(dists) < 2:
                self.b.notes.append(
                    f"Importance ({name}): not computed: fANOVA needs ≥2 completed search trials and ≥2 "
                    f"searched parameters (have {len(rows)} trials, {len(dists)} parameters: "
                    f"{', '.join(dists) or 'none'}).")
                continue
            verbosity = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line
            try:
                study = optuna.create_study(direction=self.b.goal)
            finally:
                optuna.logging.set_verbosity(verbosity)
            study.add_trials([optuna.trial.create_trial(params=p, distributions=dists, value=v) for p, v in rows])
            counts[name] = len(rows)
            results[name] = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        if not results:
            return None
        fig = _figure((6.0 * len(results), 0.5 * max(len(r) for r in results.values()) + 2.0),
                      left=0.2, right=0.97, bottom=0.15, top=0.85, wspace=0.5)
        axes = fig.subplots(1, len(results), squeeze=False)[0]
        for ax, (name, imp) in zip(axes, results.items()):
            names = list(imp)[::-1]
            ax.barh(names, [imp[k] for k in names], color=self.colors[name])
            ax.set_xlim(0, 1)
            ax.set_title(f"{name} (n={counts[name]} trials)")
            ax.set_xlabel("fANOVA importance (normalized)")
        few = [f"{n} ({c})" for n, c in counts.items() if c < 10]
        caution = (f" Few trials for {', '.join(few)}: with fewer than 10 points the forest's importances "
                   "are rough." if few else "")
        return ReportFigure("importance", "Hyperparameter importance (fANOVA)",
                            f"Optuna's fANOVA evaluator (seed 0) on the completed search trials' final "
                            f"{self.b.metric}, per variant; stopped-early and failed trials are left out."
                            + caution, _render(fig))

    def parallel(self) -> ReportFigure | None:
        panels = [(name, *self._trials(name)[:2]) for name in self.b.variant_names]
        panels = [(n, d, rows) for n, d, rows in panels if d and rows]
        if not panels:
            self.b.notes.append("No completed search trial with searched parameters: the parallel-coordinates "
                                "figure is omitted.")
            return None
        fig = _figure((10.0, 3.6 * len(panels)), left=0.07, right=0.9, bottom=0.08, top=0.94, hspace=0.55)
        axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
        values = [v for _, _, rows in panels for _, v in rows]
        vmin, vmax = min(values), max(values)
        cmap = matplotlib.colormaps["viridis"]
        norm = matplotlib.colors.Normalize(vmin, vmax if vmax > vmin else vmin + 1e-12)
        for ax, (name, dists, rows) in zip(axes, panels):
            names = list(dists)
            for params, value in rows:
                ys = [self._unit(params[k], dists[k]) for k in names] + [norm(value)]
                ax.plot(range(len(names) + 1), ys, color=cmap(norm(value)), alpha=0.8, lw=1.5)
            labels = []
            for k in names:
                d = dists[k]
                if isinstance(d, optuna.distributions.CategoricalDistribution):
                    labels.append(f"{k}\n[{', '.join(map(str, d.choices))}]")
                else:
                    labels.append(f"{k}{' (log)' if d.log else ''}\n[{_fmt(d.low, 3)}, {_fmt(d.high, 3)}]")
            ax.set_xticks(range(len(names) + 1), labels + [f"{self.b.metric}\n[{_fmt(vmin)}, {_fmt(vmax)}]"],
                          fontsize=8)
            ax.set_ylim(-0.05, 1.05)
            ax.set_yticks([0, 1], ["min", "max"])
            for x in range(len(names) + 1):
                ax.axvline(x, color="grey", lw=0.8)
            ax.set_title(f"{name}: {len(rows)} completed search trials")
        sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, ax=list(axes), label=self.b.metric, fraction=0.03)
        return ReportFigure("parallel_coordinates", "Parallel coordinates",
                            "Each line is a completed search trial; axes are scaled to each parameter's range "
                            "(log axes for log-uniform, categorical choices as evenly spaced indices); colour: "
                            f"final {self.b.metric}.", _render(fig))

    @staticmethod
    def _unit(value: Any, d: optuna.distributions.BaseDistribution) -> float:
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            return d.choices.index(value) / max(len(d.choices) - 1, 1)
        lo, hi, x = float(d.low), float(d.high), float(value)  # type: ignore[attr-defined]
        if d.log:  # type: ignore[attr-defined]
            lo, hi, x = math.log(lo), math.log(hi), math.log(x)
        return (x - lo) / (hi - lo) if hi > lo else 0.5


# ---- rendering ----------------------------------------------------------------------------------
def _tables(report: Report) -> dict[str, tuple[list[str], list[list[str]], list[list[bool]]]]:
    """Each table: header, rows of cell texts, and which cells to highlight (differs from the baseline)."""
    p, ci = report.primary_metric, f"{report.confidence:.0%} CI"
    adjusted = holm_adjusted(report)
    res_rows, res_marks = [], []
    for v in report.variants:
        c = v.comparison
        params = ", ".join(f"{k}={_short(val)}" + ("*" if k in v.differs else "") for k, val in v.params.items())
        res_rows.append([
            v.name + (" (baseline)" if v.is_baseline else ""), f"{_fmt(v.mean)} ± {_fmt(v.se, 2)}",
            f"[{_fmt(v.ci_low)}, {_fmt(v.ci_high)}]", str(v.n),
            f"{c.mean_difference:+.4g}" if c else "–", _fmt_p(c.p_value) if c else "–",
            _fmt_p(adjusted[v.name]) if c else "–", _fmt(c.hedges_g, 3) if c else "–", params or "–", v.source,
        ])
        res_marks.append([False] * 8 + [bool(v.differs), False])
    b = report.budget
    budget_rows = [[f"search trials: {s}", str(n)] for s, n in sorted(b.search_by_status.items())]
    budget_rows += [
        ["search trials: total (planned)", f"{sum(b.search_by_status.values())} ({b.planned_trials or '?'})"],
        ["repeat runs", ", ".join(f"{n} {s}" for s, n in sorted(b.repeat_by_status.items())) or "0"],
        ["summary runs", str(b.summary_runs)],
        ["epochs trained (all search and repeat runs)", str(b.total_epochs)],
        ["≈ compute time: sum of epoch_seconds over all runs (train + validation epochs, per trial; "
         "concurrent trials add up; evaluation and start-up excluded)", f"{b.epoch_seconds:.1f} s"],
        ["CPU time: every trial process's CPU seconds, all threads (start-up, epochs, evaluation)"
         + (f" — recorded by {b.cpu_runs} of {b.trial_runs} runs" if b.cpu_runs < b.trial_runs else ""),
         f"{b.cpu_seconds:.1f} s" if b.cpu_runs else "– (not recorded by these runs)"],
        ["wall time (parent run start → end)" + (" — still running" if b.still_running else ""),
         f"{b.wall_seconds:.1f} s" if b.wall_seconds is not None else "–"],
    ]
    bv_rows = []
    for v in report.variants:
        bv = v.bias_variance
        bv_rows.append([v.name, bv.source if bv else "–", str(bv.n_runs) if bv else "0",
                        _fmt(bv.train_error) if bv else "–", _fmt(bv.val_error) if bv else "–",
                        _fmt(bv.variance) if bv else "–",
                        f"{bv.verdict} ({bv.verdict_count}/{bv.verdict_total})" if bv and bv.verdict else "–"])
    return {
        "results": (["variant", f"{p} mean ± SE", ci, "n seeds", "Δ vs baseline", "Welch p", "Holm p", "Hedges' g",
                     "best hyperparameters (* differs from baseline)", "source"], res_rows, res_marks),
        "budget": (["budget", "value"], budget_rows, [[False, False]] * len(budget_rows)),
        "bias-variance": (["variant", "over", "runs", "mean diag_train_error", "mean diag_val_error",
                           "mean diag_variance", "most common sweep.diagnosis"], bv_rows,
                          [[False] * 7] * len(bv_rows)),
    }


def _short(value: str) -> str:
    try:
        x = float(value)
    except ValueError:
        return value
    return value if x.is_integer() and "e" not in value.lower() else f"{x:.4g}"


def _title(report: Report) -> str:
    return f"Sweep report: {report.sweep_name} ({report.sweep_id})"


def _meta(report: Report) -> list[str]:
    return [f"Status: {report.status}; parent run {report.parent_run_id} (experiment {report.experiment_id}).",
            f"Search metric: {report.metric} ({report.goal}). Primary test metric: {report.primary_metric} "
            f"({report.primary_goal}); baseline variant: {report.baseline}.",
            f"Generated {report.generated_at}."]


def render_html(report: Report) -> str:
    """A self-contained HTML page: tables, findings, the spec and the figures as data URIs."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(_title(report))}</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
        "th{background:#f0f0f0}td.mark{background:#fff3c4}img{max-width:100%;border:1px solid #eee}"
        "pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:0.85em}.note{color:#666}",
        "</style></head><body>",
        f"<h1>{e(_title(report))}</h1>",
        *(f"<p class='meta'>{e(m)}</p>" for m in _meta(report)),
        "<h2>Question</h2>", f"<p>{e(report.description) or '<em>(no description)</em>'}</p>",
        "<h2>Findings</h2><ul id='findings'>", *(f"<li>{e(f)}</li>" for f in report.findings), "</ul>",
    ]
    titles = {"results": "Results per variant", "budget": "Budget spent", "bias-variance": "Bias and variance"}
    for key, (header, rows, marks) in _tables(report).items():
        parts.append(f"<h2>{titles[key]}</h2><table id='{key}'><thead><tr>")
        parts.extend(f"<th>{e(h)}</th>" for h in header)
        parts.append("</tr></thead><tbody>")
        for row, mark in zip(rows, marks):
            parts.append("<tr>" + "".join(f"<td{' class=mark' if m else ''}>{e(c)}</td>"
                                          for c, m in zip(row, mark)) + "</tr>")
        parts.append("</tbody></table>")
    parts.append("<h2>Figures</h2>")
    for f in report.figures:
        data = base64.b64encode(f.png).decode("ascii")
        parts.append(f"<figure id='fig-{e(f.name)}'><h3>{e(f.title)}</h3>"
                     f"<img alt='{e(f.title)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{e(f.caption)}</figcaption></figure>")
    if report.notes:
        parts.append("<h2>Notes</h2><ul id='notes'>")
        parts.extend(f"<li class='note'>{e(n)}</li>" for n in report.notes)
        parts.append("</ul>")
    parts.append(f"<h2>Spec (resolved)</h2><pre id='spec'>{e(report.spec_yaml or '(not recorded)')}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, image_dir: str = "report") -> str:
    """The same content as Markdown; images are referenced as ``{image_dir}/<name>.png``."""
    lines = [f"# {_title(report)}", "", *(f"{m}  " for m in _meta(report)), "", "## Question", "",
             report.description or "_(no description)_", "", "## Findings", "",
             *(f"- {f}" for f in report.findings), ""]
    titles = {"results": "Results per variant", "budget": "Budget spent", "bias-variance": "Bias and variance"}
    for key, (header, rows, marks) in _tables(report).items():
        lines += [f"## {titles[key]}", "", "| " + " | ".join(map(_md_cell, header)) + " |",
                  "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(f"**{_md_cell(c)}**" if m else _md_cell(c) for c, m in zip(row, mark)) + " |"
                  for row, mark in zip(rows, marks)]
        lines.append("")
    lines += ["## Figures", ""]
    for f in report.figures:
        lines += [f"### {f.title}", "", f"![{f.title}]({image_dir}/{f.filename})", "", f.caption, ""]
    if report.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    lines += ["## Spec (resolved)", "", "```yaml", report.spec_yaml.rstrip() or "(not recorded)", "```", ""]
    return "\n".join(lines)


def write_report(client_or_uri: MlflowClient | str | None, sweep: str | None = None,
                 out_dir: str | Path | None = None, log_to_parent: bool = True,
                 experiment: str | None = None) -> tuple[Path, Path]:
    """Write ``report.html``, ``report.md`` and ``report/*.png`` to ``out_dir``; log them on the parent.

    ``out_dir`` defaults to ``sweep_reports/<name>-<sweep id>``. On the parent run the files land
    as artifacts ``report.html``, ``report.md`` and ``report/<figure>.png`` (the Markdown's links
    work there too). Returns ``(html_path, markdown_path)``.
    """
    client = _client(client_or_uri)
    report = build_report(client, sweep, experiment)
    out = Path(out_dir) if out_dir is not None else Path("sweep_reports") / f"{report.sweep_name}-{report.sweep_id}"
    images = out / "report"
    images.mkdir(parents=True, exist_ok=True)
    for f in report.figures:
        (images / f.filename).write_bytes(f.png)
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(render_html(report), encoding="utf-8")
    md_path.write_text(render_markdown(report, "report"), encoding="utf-8")
    if log_to_parent:
        client.log_artifact(report.parent_run_id, str(html_path))
        client.log_artifact(report.parent_run_id, str(md_path))
        if report.figures:
            client.log_artifacts(report.parent_run_id, str(images), "report")
    logger.info("report of sweep %s written to %s", report.sweep_id, out)
    return html_path, md_path


__all__ = ["Report", "VariantResult", "Budget", "BiasVariance", "ReportFigure", "build_report", "find_parent",
           "findings", "render_html", "render_markdown", "write_report"]
