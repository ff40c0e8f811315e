"""A real tiny sweep through Ray Tune, Optuna and ASHA, read back from the MLflow store."""

from __future__ import annotations

import json
import os

from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeps.progress import SweepSnapshot
from sweeps.tune import run_sweep
from sweeps.validate import load_spec_text
from tracking import tags
from tracking.artifacts import read_text_artifact
from trainer import MLPConfig, fused
from trainer.diagnosis import VERDICTS

pytestmark = pytest.mark.slow  # real sweeps through Ray: about a minute together

TINY_SWEEP = """
name: e2e
data: {dataset: digits}
metric: {name: val_accuracy, goal: maximize}
parameters:
  epochs: 6
  hidden_size: {values: [16, 32]}
  lr: {distribution: log_uniform, min: 1.0e-4, max: 0.5}
  optimizer: {values: [sgd, adam]}
search: {algorithm: tpe, trials: 8, seed: 0}
early_stopping: {type: asha, grace_period: 1, reduction_factor: 2}
resources: {cpus_per_trial: 1, max_concurrent_trials: 2}
tracking: {flush_seconds: 0.5}
"""


class Collect:
    def __init__(self) -> None:
        self.snapshots: list[SweepSnapshot] = []

    def update(self, snapshot: SweepSnapshot) -> None:
        self.snapshots.append(snapshot)


@pytest.fixture(scope="module")
def builtin_sweep(ray_session, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("e2e")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    spec = load_spec_text(TINY_SWEEP, "e2e.yaml", [f"tracking.uri={uri}"])
    progress = Collect()
    outcome = run_sweep(spec, source_text=TINY_SWEEP, progress=progress, results_dir=tmp / "results")
    return spec, outcome, MlflowClient(uri), progress


def _children(client: MlflowClient, outcome) -> list:
    return client.search_runs([outcome.experiment_id], filter_string=f"tags.`{tags.ROLE}` = 'trial'")


def test_parent_run_records_the_sweep(builtin_sweep) -> None:
    spec, outcome, client, _ = builtin_sweep
    parent = client.get_run(outcome.parent_run_id)
    assert outcome.status == "completed"
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[tags.SWEEP_STATUS] == "completed"
    assert parent.data.tags[tags.SWEEP_ID] == outcome.sweep_id
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep.yaml", "spec.resolved.yaml", "environment.json"} <= artifacts
    environment = json.loads(read_text_artifact(client, outcome.parent_run_id, "environment.json") or "{}")
    assert environment["trainer_kernels"] == fused.status()  # fused, or eager with the reason
    best = client.get_run(parent.data.tags[tags.BEST_RUN])
    assert best.data.tags[tags.TRIAL_ID] == parent.data.tags[tags.BEST_TRIAL]
    assert parent.data.metrics["best_val_accuracy"] == best.data.metrics["val_accuracy"]
    children = _children(client, outcome)
    finished = [r for r in children if r.data.tags[tags.TRIAL_STATUS] == "completed"]
    assert best.data.metrics["val_accuracy"] == max(r.data.metrics["val_accuracy"] for r in finished)


def test_every_trial_is_a_nested_child_run_with_curves_and_test_metrics(builtin_sweep) -> None:
    spec, outcome, client, _ = builtin_sweep
    children = _children(client, outcome)
    assert len(children) == spec.num_trials()
    assert len({r.data.tags[tags.TRIAL_ID] for r in children}) == spec.num_trials()
    for run in children:
        t = run.data.tags
        assert run.info.status == "FINISHED"
        assert t[tags.PARENT_RUN_ID] == outcome.parent_run_id
        assert t[tags.SWEEP_NAME] == "e2e" and t[tags.SWEEP_ID] == outcome.sweep_id
        assert t[tags.TRIAL_STATUS] in ("completed", "stopped_early")
        assert set(MLPConfig.model_fields) <= set(run.data.params)  # the resolved trial config
        history = client.get_metric_history(run.info.run_id, "val_loss")
        steps = [m.step for m in history]
        expected_last = 6 if t[tags.TRIAL_STATUS] == "completed" else int(t[tags.STOPPED_EPOCH])
        assert steps == list(range(1, expected_last + 1))  # one value per epoch, step = epoch
        # the trial's CPU seconds: with every epoch, then once more with the evaluation; never decreasing,
        # and no more than the run's wall time on every CPU (the clock starts a little before the run)
        cpu = client.get_metric_history(run.info.run_id, tags.CPU_SECONDS)
        assert [m.step for m in cpu] == [*steps, expected_last]
        values = [m.value for m in sorted(cpu, key=lambda m: (m.step, m.timestamp, m.value))]
        assert 0 < values[0] and values == sorted(values)
        assert run.data.metrics[tags.CPU_SECONDS] == values[-1]
        assert values[-1] <= (run.info.end_time - run.info.start_time) / 1000 * os.cpu_count() + 10
        for key in ("train_loss", "train_accuracy", "val_accuracy", "test_loss", "test_accuracy",
                    "test_f1_macro", "val_mcc", "test_roc_auc_ovr_macro", "diag_variance", "diag_train_error"):
            assert key in run.data.metrics, (key, run.data.metrics)
        assert t["sweep.diagnosis"] in VERDICTS
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/learning_curves.png", "plots/confusion_matrix.png", "plots/roc_pr_curves.png",
                "plots/hidden_pca.png", "plots/classification_report.json"} <= plots


def test_asha_stopped_some_trials_and_they_are_tagged(builtin_sweep) -> None:
    spec, outcome, client, _ = builtin_sweep
    statuses = [r.data.tags[tags.TRIAL_STATUS] for r in _children(client, outcome)]
    assert statuses.count("stopped_early") >= 1
    assert statuses.count("completed") >= 1
    for run in _children(client, outcome):
        if run.data.tags[tags.TRIAL_STATUS] == "stopped_early":
            assert 1 <= int(run.data.tags[tags.STOPPED_EPOCH]) < 6
        else:
            assert tags.STOPPED_EPOCH not in run.data.tags
    assert sorted(outcome.trial_statuses.values()) == sorted(statuses)


def test_progress_was_reported(builtin_sweep) -> None:
    spec, outcome, _, progress = builtin_sweep
    assert progress.snapshots, "no progress snapshots"
    last = progress.snapshots[-1]
    assert last.done == spec.num_trials() and last.running == 0
    assert last.best_value is not None and last.best_config


USER_SWEEP = """
name: contract
trainer: tests.fake_trainers:scripted
metric: {name: val_accuracy, goal: maximize}
parameters:
  epochs: 3
  mode: {values: [ok, nan, raise, misspelled]}
search: {algorithm: grid}
early_stopping: {type: none}
resources: {cpus_per_trial: 1, max_concurrent_trials: 2}
"""


def test_user_trainer_failures_are_recorded_with_reasons(ray_session, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_spec_text(USER_SWEEP, "contract.yaml", [f"tracking.uri={uri}"])
    outcome = run_sweep(spec, progress=Collect(), results_dir=tmp_path / "results")
    client = MlflowClient(uri)
    runs = {r.data.params["mode"]: r for r in _children(client, outcome)}
    assert set(runs) == {"ok", "nan", "raise", "misspelled"}
    ok = runs.pop("ok")
    assert ok.data.tags[tags.TRIAL_STATUS] == "completed" and ok.data.metrics["test_accuracy"] == 0.75
    reasons = {mode: r.data.tags.get(tags.FAILURE_REASON, "") for mode, r in runs.items()}
    for mode, run in runs.items():
        assert run.info.status == "FAILED", mode
        assert run.data.tags[tags.TRIAL_STATUS] == "failed", mode
        assert run.data.metrics[tags.CPU_SECONDS] > 0, mode  # a failed trial's CPU time counts too
    assert "val_accuracy is nan" in reasons["nan"]
    assert "out of memory (scripted)" in reasons["raise"]
    assert "metric.name='val_accuracy'" in reasons["misspelled"]
    assert outcome.snapshot.failed == 3 and outcome.snapshot.completed == 1
    # the NaN trial logged its first epoch and nothing non-finite
    nan_history = client.get_metric_history(runs["nan"].info.run_id, "val_accuracy")
    assert [m.step for m in nan_history] == [1]


def test_ctrl_c_leaves_no_run_running(tmp_path: Path) -> None:
    """SIGINT to `sweep run` mid-sweep: exit 130, parent KILLED/interrupted, no RUNNING run."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    spec = tmp_path / "slow.yaml"
    spec.write_text(TINY_SWEEP.replace("epochs: 6", "epochs: 200").replace("name: e2e", "name: ctrlc")
                    .replace("grace_period: 1", "grace_period: 100"))
    db = tmp_path / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    proc = subprocess.Popen([sys.executable, "-m", "sweeps", "run", str(spec), "--results-dir",
                             str(tmp_path / "results")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def count(sql: str) -> int:
        try:
            with sqlite3.connect(db) as conn:
                return int(conn.execute(sql).fetchone()[0])
        except sqlite3.Error:
            return 0

    deadline = time.monotonic() + 120
    # wait until a trial has logged a few epochs
    while count("select count(*) from metrics where key = 'val_loss'") < 3:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, "no trial started within 120 s"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out.decode()
    assert count("select count(*) from runs where status = 'RUNNING'") == 0
    with sqlite3.connect(db) as conn:
        parent = conn.execute("select r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                              "where t.key = 'sweep.role' and t.value = 'parent'").fetchall()
        cut = conn.execute("select value from tags where key = 'sweep.trial_status'").fetchall()
    assert parent == [("KILLED",)]
    assert cut and all(v == "failed" for (v,) in cut)  # none passes for an ASHA stop


REPEAT_SWEEP = """
name: repeats
data: {dataset: digits}
parameters:
  epochs: 3
  hidden_size: {values: [16, 32]}
  lr: {distribution: log_uniform, min: 1.0e-3, max: 0.05}
search: {algorithm: random, trials: 3, seed: 0}
repeats: {top_k: 2, seeds: 3, seed_start: 50}
resources: {max_concurrent_trials: 2}
"""


def test_repeats_summaries_agree_with_their_runs(ray_session, tmp_path: Path) -> None:
    import math

    from scipy import stats

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_spec_text(REPEAT_SWEEP, "repeats.yaml", [f"tracking.uri={uri}"])
    outcome = run_sweep(spec, progress=Collect(), results_dir=tmp_path / "results")
    assert outcome.status == "completed"
    client = MlflowClient(uri)
    runs = client.search_runs([outcome.experiment_id])
    repeats = [r for r in runs if r.data.tags.get(tags.STAGE) == "repeat"]
    summaries = {r.data.tags[tags.CONFIG_ID]: r for r in runs if r.data.tags.get(tags.STAGE) == "summary"}
    assert len(repeats) == 6 and set(summaries) == {"rank1", "rank2"}
    search = {r.data.tags[tags.TRIAL_ID]: r for r in runs if r.data.tags.get(tags.STAGE) == "search"}
    for config_id, summary in summaries.items():
        mine = [r for r in repeats if r.data.tags[tags.CONFIG_ID] == config_id]
        assert sorted(int(r.data.tags[tags.SEED]) for r in mine) == [50, 51, 52]
        source = search[summary.data.tags[tags.SOURCE_TRIAL]]
        for r in mine:  # the same configuration as the search trial, except the seed
            assert {k: v for k, v in r.data.params.items() if k != "seed"} == \
                   {k: v for k, v in source.data.params.items() if k != "seed"}
            assert r.data.tags[tags.PARENT_RUN_ID] == outcome.parent_run_id
        values = [r.data.metrics["test_accuracy"] for r in mine]
        m = summary.data.metrics
        n = len(values)
        mean = sum(values) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        se = sd / math.sqrt(n)
        half = stats.t.ppf(0.975, n - 1) * se
        assert m["test_accuracy_mean"] == pytest.approx(mean)
        assert m["test_accuracy_se"] == pytest.approx(se)
        assert m["test_accuracy_ci_low"] == pytest.approx(mean - half)
        assert m["test_accuracy_ci_high"] == pytest.approx(mean + half)
    # rank1 is the search's best completed trial
    best = max(search.values(), key=lambda r: r.data.metrics["val_accuracy"])
    assert summaries["rank1"].data.tags[tags.SOURCE_TRIAL] == best.data.tags[tags.TRIAL_ID]
    assert outcome.summaries[0].config_id == "rank1"


TASK_SWEEP = """
name: {dataset}
data: {{dataset: {dataset}}}
metric: {{name: {metric}, goal: {goal}}}
parameters:
  epochs: 3
  hidden_size: {{values: [8, 16]}}
  lr: {{distribution: log_uniform, min: 1.0e-3, max: 1.0e-2}}
search: {{algorithm: random, trials: 2, seed: 0}}
resources: {{max_concurrent_trials: 2}}
"""


@pytest.mark.parametrize("dataset,metric,goal,expected", [
    ("breast_cancer", "val_accuracy", "maximize", ("test_tp", "test_lr_plus", "test_brier", "val_roc_auc")),
    ("diabetes", "val_mse", "minimize", ("test_mse", "test_rmse", "test_r2", "test_mape", "val_mae")),
])
def test_binary_and_regression_trials_carry_their_evaluation(ray_session, tmp_path: Path, dataset: str,
                                                             metric: str, goal: str, expected: tuple) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    text = TASK_SWEEP.format(dataset=dataset, metric=metric, goal=goal)
    spec = load_spec_text(text, f"{dataset}.yaml", [f"tracking.uri={uri}"])
    outcome = run_sweep(spec, progress=Collect(), results_dir=tmp_path / "results")
    client = MlflowClient(uri)
    children = _children(client, outcome)
    assert len(children) == 2
    for run in children:
        assert run.data.tags[tags.TRIAL_STATUS] == "completed"
        assert set(expected) <= set(run.data.metrics), sorted(run.data.metrics)
        assert "diag_val_error" in run.data.metrics and run.data.tags["sweep.diagnosis"] in VERDICTS
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert "plots/learning_curves.png" in plots
        assert ("plots/residuals.png" in plots) == (dataset == "diabetes")


def test_study_runs_every_variant_with_the_same_budget(ray_session, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    example = Path(__file__).parent.parent / "sweeps" / "examples" / "digits-regularization.yaml"
    spec = load_spec_text(example.read_text(), example.name, [  # the example's miniature, made smaller still
        f"tracking.uri={uri}", "search.trials=2", "parameters.epochs=3", "repeats.seeds=2"])
    outcome = run_sweep(spec, progress=Collect(), results_dir=tmp_path / "results")
    assert outcome.status == "completed"
    client = MlflowClient(uri)
    runs = client.search_runs([outcome.experiment_id])
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags[tags.BASELINE_VARIANT] == "none"
    by_stage: dict[tuple[str, str], list] = {}
    for r in runs:
        if r.data.tags.get(tags.ROLE) == "parent":
            continue
        by_stage.setdefault((r.data.tags[tags.VARIANT], r.data.tags[tags.STAGE]), []).append(r)
    for variant in ("none", "dropout", "l2"):
        assert len(by_stage[(variant, "search")]) == 2  # the same trial budget for every variant
        assert len(by_stage[(variant, "repeat")]) == 2 and len(by_stage[(variant, "summary")]) == 1
    dropouts = {float(r.data.params["dropout"]) for r in by_stage[("dropout", "search")]}
    assert all(0.1 <= d <= 0.5 for d in dropouts)
    assert {float(r.data.params["dropout"]) for r in by_stage[("none", "search")]} == {0.0}
    assert [s.variant for s in outcome.summaries] == ["none", "dropout", "l2"]
    # each variant's summary is written when its repeats are done, before the next variant's search
    for done, following in (("none", "dropout"), ("dropout", "l2")):
        summary = by_stage[(done, "summary")][0]
        assert summary.info.start_time <= min(r.info.start_time for r in by_stage[(following, "search")])
    # the report of this miniature study agrees with the runs it came from
    from sweeps.report import build_report, write_report

    report = build_report(uri, outcome.sweep_id)
    assert [v.name for v in report.variants] == ["none", "dropout", "l2"]
    for v in report.variants:
        summary = by_stage[(v.name, "summary")][0]
        repeat_values = sorted(r.data.metrics["test_accuracy"] for r in by_stage[(v.name, "repeat")])
        assert sorted(v.values) == pytest.approx(repeat_values)
        assert v.mean == pytest.approx(summary.data.metrics["test_accuracy_mean"])
        assert v.se == pytest.approx(summary.data.metrics["test_accuracy_se"])
        assert (v.ci_low, v.ci_high) == (pytest.approx(summary.data.metrics["test_accuracy_ci_low"]),
                                         pytest.approx(summary.data.metrics["test_accuracy_ci_high"]))
    assert report.budget is not None and report.findings
    html, md = write_report(uri, outcome.sweep_id, out_dir=tmp_path / "report")
    assert html.exists() and md.exists()
    logged = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"report.html", "report.md"} <= logged


CV_SWEEP = """
name: cv
data: {dataset: digits, max_train_samples: 300}
metric: {name: val_accuracy, goal: maximize}
parameters:
  epochs: 4
  hidden_size: {values: [8, 16]}
  lr: {distribution: log_uniform, min: 1.0e-3, max: 3.0e-2}
search: {algorithm: random, trials: 3, seed: 1}
early_stopping: {type: asha, grace_period: 1, reduction_factor: 2}
cross_validation: {folds: 3}
repeats: {top_k: 1, seeds: 2}
resources: {max_concurrent_trials: 2}
"""


def test_cross_validated_sweep_logs_the_fold_mean_curve_and_cv_summaries(ray_session, tmp_path: Path) -> None:
    """Each search trial's curve is the mean of its 3 folds, recomputed here fold by fold; repeats do not CV."""
    import statistics

    import numpy as np

    from trainer import StopTraining, train
    from trainer.crossval import fold_datasets

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_spec_text(CV_SWEEP, "cv.yaml", [f"tracking.uri={uri}"])
    outcome = run_sweep(spec, progress=Collect(), results_dir=tmp_path / "results")
    assert outcome.status == "completed"
    client = MlflowClient(uri)
    assert client.get_run(outcome.parent_run_id).data.params["cross_validation"] == "3 folds"
    runs = client.search_runs([outcome.experiment_id])
    search = [r for r in runs if r.data.tags.get(tags.STAGE) == "search"]
    repeats = [r for r in runs if r.data.tags.get(tags.STAGE) == "repeat"]
    assert len(search) == 3 and len(repeats) == 2
    folds = fold_datasets(spec.data, 3)
    for run in search:
        m, p = run.data.metrics, run.data.params
        assert run.data.tags[tags.CV_FOLDS] == "3"
        history = {key: client.get_metric_history(run.info.run_id, key) for key in ("val_loss", "val_accuracy")}
        epochs = [h.step for h in history["val_loss"]]
        last = epochs[-1]
        assert epochs == list(range(1, last + 1))  # one fold-mean value per epoch, step = epoch
        config = MLPConfig(epochs=4, hidden_size=int(p["hidden_size"]), lr=float(p["lr"]), seed=int(p["seed"]))

        def stop_at(metrics, last=last) -> None:
            if metrics.epoch == last:
                raise StopTraining

        alone = [train(config, f, stop_at, threads=1) for f in folds]  # each fold on its own
        for key, points in history.items():
            for point in points:
                per_fold = [r.history[point.step - 1].as_dict()[key] for r in alone]
                assert point.value == pytest.approx(float(np.mean(per_fold)), rel=1e-9), (key, point.step)
        for key in ("val_accuracy", "val_loss"):
            values = [r.final_metrics.as_dict()[key] for r in alone]
            assert m[f"cv_{key}_mean"] == pytest.approx(float(np.mean(values)), rel=1e-9)
            assert m[f"cv_{key}_std"] == pytest.approx(statistics.stdev(values), rel=1e-9)
        tests = [r.test["test_accuracy"] for r in alone]
        assert m["cv_test_accuracy_mean"] == pytest.approx(float(np.mean(tests)), rel=1e-9)
        assert m["cv_test_accuracy_std"] == pytest.approx(statistics.stdev(tests), rel=1e-9)
        assert m["test_accuracy"] == pytest.approx(tests[0], rel=1e-9)  # the trial's model is fold 1's
        for key in ("test_loss", "test_f1_macro", "diag_variance", "cv_test_loss_mean"):
            assert key in m, (key, sorted(m))
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert "plots/learning_curves.png" in plots
    for run in repeats:  # repeats train on the one split, at full budget
        assert tags.CV_FOLDS not in run.data.tags
        assert not any(k.startswith("cv_") for k in run.data.metrics)
        assert [h.step for h in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3, 4]


GROWING_STUDY = """
name: growing-study
data: {dataset: digits, max_train_samples: 300}
metric: {name: val_accuracy, goal: maximize}
parameters:
  epochs: 2
  hidden_size: 16
  lr: {distribution: log_uniform, min: 1.0e-3, max: 1.0e-2}
search: {algorithm: tpe, trials: 2, seed: 0}
repeats: {top_k: 1, seeds: 2}
resources: {cpus_per_trial: 1, max_concurrent_trials: 2}
variants:
  none: {}
  dropout: {dropout: 0.2}
"""


def test_a_completed_study_extended_on_resume_runs_only_its_new_variants(ray_session, tmp_path: Path) -> None:
    from sweeps.resume import VARIANTS_ADDED_TAG, find_resumable

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = run_sweep(load_spec_text(GROWING_STUDY, "s.yaml", [f"tracking.uri={uri}"]), source_text=GROWING_STUDY,
                      progress=Collect(), results_dir=tmp_path / "results")
    assert first.status == "completed"
    client = MlflowClient(uri)

    def runs_by_variant(role: str = "trial") -> dict[str, set[str]]:
        runs = client.search_runs([first.experiment_id], f"tags.`{tags.ROLE}` = '{role}'")
        out: dict[str, set[str]] = {}
        for r in runs:
            out.setdefault(r.data.tags[tags.VARIANT], set()).add(r.info.run_id)
        return out

    before, summaries = runs_by_variant(), runs_by_variant("summary")
    grown = GROWING_STUDY.replace("  dropout:", "  l2: {l2: 1.0e-3}\n  dropout:")
    target = find_resumable(uri, "growing-study", load_spec_text(grown, "s.yaml", [f"tracking.uri={uri}"]), grown)
    assert target.added_variants == ("l2",)
    second = run_sweep(target.spec, source_text=target.source_text, progress=Collect(), resume=target)
    assert second.status == "completed" and second.parent_run_id == first.parent_run_id
    after = runs_by_variant()
    assert after["none"] == before["none"] and after["dropout"] == before["dropout"], "finished stages are not re-run"
    assert len(after["l2"]) == 2 + 2  # the same budget as the others: 2 search trials, 2 seeds
    # one summary per variant: the finished variants' summaries are updated, not duplicated
    assert runs_by_variant("summary") == {**summaries, "l2": runs_by_variant("summary")["l2"]}
    assert len(runs_by_variant("summary")["l2"]) == 1
    assert {float(client.get_run(r).data.params["l2"]) for r in after["l2"]} == {1e-3}
    parent = client.get_run(first.parent_run_id)
    assert parent.data.tags[VARIANTS_ADDED_TAG] == "l2" and parent.data.tags[tags.RESUMES] == "1"
