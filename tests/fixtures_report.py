"""A fake sweep written straight to an MLflow store, the way ``sweeps.tune`` writes a real one.

Uses the production writers (``SweepTracker``, ``TrialRun``, ``finish_run``) and
``sweeps.stats.summarize`` for the summary runs, so the report is tested against the same
data contract as a real sweep, without Ray or training. Values are drawn from a seeded
generator with a known effect per variant, so the tests know the winner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from mlflow import MlflowClient

from sweeps.spec import SweepSpec
from sweeps.stats import summarize
from tracking import SweepTracker, TrialRun, TrialStatus, client_for
from tracking import tags as T

# variant -> (mean test accuracy of its best configuration over seeds, diagnosis, train error, val error)
CLASSIFICATION_EFFECTS: dict[str, tuple[float, str, float, float]] = {
    "none": (0.900, "high_variance", 0.010, 0.090),
    "dropout": (0.940, "good_fit", 0.030, 0.055),
    "main": (0.920, "good_fit", 0.020, 0.060),
}
SEED_SD = 0.01  # spread of the primary metric over seeds


@dataclass
class FakeSweep:
    """What the fixture wrote: ids to find it again and the values the report must agree with."""

    uri: str
    client: MlflowClient
    experiment_id: str
    experiment: str
    name: str
    sweep_id: str
    parent_run_id: str
    baseline: str
    variants: list[str]  # "main" for a sweep without variants
    primary: str
    search_statuses: dict[str, list[str]] = field(default_factory=dict)  # variant -> statuses in order
    epochs: int = 0  # total epochs logged over search and repeat runs
    epoch_seconds: float = 0.0
    cpu_seconds: float = 0.0  # sum of the trial runs' CPU seconds (tags.CPU_SECONDS)


def _spec(name: str, variants: Sequence[str | None], task: str, trials: int, seeds: int | None,
          conditional: bool, variant_epochs: Mapping[str, int]) -> dict:
    raw: dict = {
        "name": name,
        "description": f"Fake {task} sweep: does dropout help?" if len(variants) > 1 else f"Fake {task} sweep",
        "data": {"dataset": "digits" if task == "classification" else "california_housing"},
        "metric": {"name": "val_accuracy", "goal": "maximize"} if task == "classification"
        else {"name": "val_mse", "goal": "minimize"},
        "parameters": {"epochs": 5, "hidden_size": 32,
                       "lr": {"distribution": "log_uniform", "min": 1e-3, "max": 1e-2},
                       "optimizer": {"values": ["adam", "sgd"]}},
        "search": {"algorithm": "tpe", "trials": trials, "seed": 0},
    }
    if conditional:
        raw["parameters"]["momentum"] = {"distribution": "uniform", "min": 0.5, "max": 0.99,
                                         "condition": {"optimizer": "sgd"}}
    if seeds:
        raw["repeats"] = {"top_k": 1, "seeds": seeds}
    if len(variants) > 1:
        raw["variants"] = {v: ({} if i == 0 else {"dropout": {"distribution": "uniform", "min": 0.1, "max": 0.5}})
                           | ({"epochs": variant_epochs[v]} if v in variant_epochs else {})
                           for i, v in enumerate(variants)}
        raw["baseline_variant"] = variants[0]
    if task == "regression":
        raw["data"] = {"dataset": "csv", "path": "fake.csv", "target": "y", "task": "regression"}
    return SweepSpec.model_validate(raw).model_dump(mode="json")


def _history(rng: np.random.Generator, epochs: int, final_acc: float, task: str) -> list[dict[str, float]]:
    rows = []
    for e in range(1, epochs + 1):
        frac = e / epochs
        row = {"train_loss": 1.5 * (1 - 0.8 * frac) + rng.normal(0, 0.01),
               "val_loss": 1.6 * (1 - 0.7 * frac) + rng.normal(0, 0.01),
               "epoch_seconds": 0.25 + rng.uniform(0, 0.05), "lr": 0.005}
        if task == "classification":
            row |= {"train_accuracy": min(1.0, final_acc * frac + 0.05), "val_accuracy": final_acc * (0.6 + 0.4 * frac)}
        else:
            row |= {"train_mse": row["train_loss"], "val_mse": row["val_loss"], "val_mae": row["val_loss"] ** 0.5}
        rows.append(row)
    return rows


def _final(rng: np.random.Generator, variant: str, task: str, quality: float) -> tuple[dict[str, float], str]:
    acc, verdict, train_err, val_err = CLASSIFICATION_EFFECTS.get(variant, CLASSIFICATION_EFFECTS["main"])
    train_err += rng.normal(0, 0.002)
    val_err += rng.normal(0, 0.002)
    if task == "classification":
        test_acc = acc - quality + rng.normal(0, SEED_SD)
        metrics = {"val_accuracy": 1 - val_err - quality, "test_accuracy": test_acc, "test_loss": 1 - test_acc,
                   "val_f1_macro": 1 - val_err - quality}
    else:  # regression: MSE, lower is better; the better variant (higher acc) gets the lower error
        mse = (1.2 - acc) + quality + rng.normal(0, SEED_SD)
        metrics = {"val_mse": mse + 0.01, "test_mse": mse, "test_mae": mse ** 0.5, "val_mae": (mse + 0.01) ** 0.5}
    metrics |= {"diag_train_error": train_err, "diag_val_error": val_err, "diag_variance": val_err - train_err}
    return metrics, verdict


def _trial(uri: str, tracker: SweepTracker, trial_id: str, params: dict, extra_tags: dict, rng: np.random.Generator,
           variant: str, task: str, status: TrialStatus, epochs: int, quality: float) -> tuple[int, float, float]:
    """One child run as ``sweeps.tune.run_trial`` writes it; returns (epochs logged, epoch seconds, CPU seconds)."""
    assert tracker.parent_run_id is not None
    run = TrialRun.open(uri, tracker.experiment_id, tracker.parent_run_id, tracker.sweep_name, tracker.sweep_id,
                        trial_id, params, run_name=trial_id, flush_seconds=3600, extra_tags=extra_tags)
    final_metrics, verdict = _final(rng, variant, task, quality)
    target = final_metrics.get("val_accuracy", 0.9)
    history = _history(rng, epochs, target, task)
    for epoch, row in enumerate(history, start=1):
        if status is TrialStatus.FAILED and epoch == 2:
            break
        run.log_epoch(row, epoch)
    logged = min(epochs, 1) if status is TrialStatus.FAILED else epochs
    seconds = sum(r["epoch_seconds"] for r in history[:logged])
    cpu = 1.8 * seconds + 0.5  # two threads' worth of each epoch, and start-up / evaluation
    if status is TrialStatus.FAILED:
        run.log_metrics({T.CPU_SECONDS: cpu}, step=logged)
        run.finish(status, reason="FloatingPointError: epoch 2: val_loss is nan")
        return logged, seconds, cpu
    run.log_metrics({**final_metrics, T.CPU_SECONDS: cpu}, step=epochs)
    run.set_tags({"sweep.diagnosis": verdict, "sweep.beats_baseline": "true"})
    run.finish(status, stopped_epoch=epochs if status is TrialStatus.STOPPED_EARLY else None)
    return logged, seconds, cpu


def build_fake_sweep(uri: str, artifact_dir: Path, *, variants: Sequence[str | None] = ("none", "dropout"),
                     trials: int = 3, seeds: int | None = 3, task: str = "classification",
                     with_failures: bool = True, name: str = "fake-study", seed: int = 0,
                     conditional: bool = False, unstarted: Sequence[str] = (),
                     variant_epochs: Mapping[str, int] | None = None) -> FakeSweep:
    """Write a finished sweep: parent, search trials, rank1 repeats and summary runs per variant.

    ``unstarted`` names variants the spec declares after ``variants`` but that have no runs: a
    study stopped part-way; its parent run is then left running, as an interrupted sweep's is.

    ``variants=(None,)`` writes a sweep without variants (no ``sweep.variant`` tags). With
    ``with_failures``, the baseline's last search trial is stopped early and the next variant's
    last one fails. ``seeds=None`` writes no repeats. ``task`` is ``classification`` or ``regression``.
    ``variant_epochs`` sets a variant's ``epochs`` parameter (its file's override; default 5, the
    baseline's), as the example studies' longer-trained shift variant does.
    """
    variant_epochs = dict(variant_epochs or {})
    rng = np.random.default_rng(seed)
    client = client_for(uri)
    experiment = name
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(experiment, artifact_location=Path(artifact_dir).resolve().as_uri())
    sweep_id = f"20260101-000000-{seed:06x}"
    tracker = SweepTracker(uri, experiment, name, sweep_id)
    resolved = _spec(name, [*variants, *unstarted], task, trials, seeds, conditional, variant_epochs)
    metric = resolved["metric"]["name"]
    parent = tracker.start(resolved["description"], params={"search.trials": trials, "search.seed": 0})
    tracker.set_tags({T.METRIC: f"{metric}:{resolved['metric']['goal']}"})
    multi = len(variants) > 1
    if multi:
        tracker.set_tags({T.BASELINE_VARIANT: variants[0]})
    tracker.log_text(yaml.safe_dump({k: v for k, v in resolved.items() if v is not None}), "sweep.yaml")
    tracker.log_text(yaml.safe_dump(resolved, sort_keys=False), "spec.resolved.yaml")
    names = [v or "main" for v in variants]
    out = FakeSweep(uri, client, tracker.experiment_id, experiment, name, sweep_id, parent, names[0], names,
                    "test_accuracy" if task == "classification" else "test_mse")
    counter = 0
    best_trial = ""
    for index, variant in enumerate(variants):
        vname = variant or "main"
        vtags = {T.VARIANT: variant} if variant else {}
        statuses, best = [], None
        for i in range(trials):
            counter += 1
            status = TrialStatus.COMPLETED
            if with_failures and i == trials - 1 and index < 2:
                status = TrialStatus.STOPPED_EARLY if index == 0 else TrialStatus.FAILED
            params = {"epochs": variant_epochs.get(vname, 5), "hidden_size": 32,
                      "lr": float(10 ** rng.uniform(-3, -2)), "optimizer": ["adam", "sgd"][i % 2], "seed": 0}
            if conditional and params["optimizer"] == "sgd":
                params["momentum"] = float(rng.uniform(0.5, 0.99))
            if multi and index > 0:
                params["dropout"] = float(rng.uniform(0.1, 0.5))
            quality = 0.01 * i  # later trials are a little worse: trial 0 is the best
            epochs = 3 if status is TrialStatus.STOPPED_EARLY else 5
            trial_id = f"{vname[:4]}_{counter:05d}"
            e, s, c = _trial(uri, tracker, trial_id, params, {T.STAGE: "search", **vtags}, rng, vname, task,
                             status, epochs, quality)
            out.epochs += e
            out.epoch_seconds += s
            out.cpu_seconds += c
            statuses.append(status.value)
            if status is TrialStatus.COMPLETED and (best is None or quality < best[0]):  # quality: lower is better
                best = (quality, trial_id, params)
        out.search_statuses[vname] = statuses
        if index == 0 and best is not None:
            best_trial = best[1]
        if not seeds or best is None:
            continue
        for seed_value in range(1000, 1000 + seeds):
            counter += 1
            extra = {T.STAGE: "repeat", T.CONFIG_ID: "rank1", T.SEED: str(seed_value), T.SOURCE_TRIAL: best[1], **vtags}
            e, s, c = _trial(uri, tracker, f"{vname[:4]}_{counter:05d}", {**best[2], "seed": seed_value}, extra,
                             rng, vname, task, TrialStatus.COMPLETED, 5, 0.0)
            out.epochs += e
            out.epoch_seconds += s
            out.cpu_seconds += c
        runs = [r for r in tracker.child_runs() if r.data.tags.get(T.STAGE) == "repeat"
                and r.data.tags.get(T.VARIANT) == variant]
        keys = sorted({k for r in runs for k in r.data.metrics if k.split("_")[0] in ("train", "val", "test")})
        metrics: dict[str, float] = {}
        for key in keys:
            values = [r.data.metrics[key] for r in runs if math.isfinite(r.data.metrics.get(key, math.nan))]
            metrics |= summarize(values).as_metrics(key)
        params = {k: v for k, v in best[2].items() if k != "seed"}
        tracker.log_summary_run("rank1", best[1], params, metrics, seeds=list(range(1000, 1000 + seeds)),
                                variant=variant)
    if not unstarted:
        tracker.finish("completed", {T.BEST_TRIAL: best_trial})
    return out


def repeat_values(client: MlflowClient, fake: FakeSweep, variant: str, metric: str) -> list[float]:
    """The per-seed values of ``metric`` of a variant's rank1 repeat runs, read back from MLflow."""
    runs = client.search_runs([fake.experiment_id],
                              filter_string=f"tags.`{T.SWEEP_ID}` = '{fake.sweep_id}' and tags.`{T.STAGE}` = 'repeat'",
                              max_results=1000)
    return [r.data.metrics[metric] for r in sorted(runs, key=lambda r: int(r.data.tags[T.SEED]))
            if r.data.tags.get(T.VARIANT, "main") == variant and r.data.tags.get(T.CONFIG_ID) == "rank1"]
