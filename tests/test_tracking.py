"""MLflow runs: nesting, tags, batched metrics, idempotent creation, reconciliation."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracking import SweepTracker, TrialRun, TrialStatus, resolve_tracking_uri, tags
from tracking.runs import client_for


@pytest.fixture
def sweep(tracking_uri: str) -> SweepTracker:
    tracker = SweepTracker(tracking_uri, experiment="exp", sweep_name="demo", sweep_id="sid")
    tracker.start("a description", params={"search.trials": 3})
    return tracker


def _open(sweep: SweepTracker, trial_id: str, flush_seconds: float = 60.0) -> TrialRun:
    return TrialRun.open(sweep.uri, sweep.experiment_id, sweep.parent_run_id, "demo", "sid", trial_id,
                         {"lr": 0.1, "optimizer": "adam"}, flush_seconds=flush_seconds)


def test_resolve_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, cwd=tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None, cwd=tmp_path) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:///x.db", cwd=tmp_path) == f"sqlite:///{tmp_path / 'x.db'}"
    assert resolve_tracking_uri("runs.db", cwd=tmp_path) == f"sqlite:///{tmp_path / 'runs.db'}"


def test_child_run_is_nested_tagged_and_holds_params(sweep: SweepTracker) -> None:
    run = _open(sweep, "t1")
    got = sweep.client.get_run(run.run_id)
    assert got.data.tags[tags.PARENT_RUN_ID] == sweep.parent_run_id
    assert got.data.tags[tags.TRIAL_ID] == "t1"
    assert got.data.tags[tags.SWEEP_NAME] == "demo" and got.data.tags[tags.SWEEP_ID] == "sid"
    assert got.data.params == {"lr": "0.1", "optimizer": "adam"}
    run.finish(TrialStatus.COMPLETED)
    sweep.finish("completed")


def test_opening_the_same_trial_twice_reuses_its_run(sweep: SweepTracker) -> None:
    first = _open(sweep, "t1")
    first.finish(TrialStatus.FAILED, reason="worker died")
    second = _open(sweep, "t1")
    assert second.run_id == first.run_id
    assert len(sweep.child_runs()) == 1
    second.finish(TrialStatus.COMPLETED)
    sweep.finish("completed")


def test_epoch_metrics_are_buffered_then_flushed_with_steps(sweep: SweepTracker) -> None:
    run = _open(sweep, "t1", flush_seconds=60.0)
    for epoch in range(1, 6):
        run.log_epoch({"val_loss": 1.0 / epoch, "val_accuracy": epoch / 10}, epoch=epoch)
    assert sweep.client.get_metric_history(run.run_id, "val_loss") == []  # still buffered
    run.finish(TrialStatus.STOPPED_EARLY, stopped_epoch=5)
    history = sweep.client.get_metric_history(run.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(e, 1.0 / e) for e in range(1, 6)]
    got = sweep.client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.tags[tags.TRIAL_STATUS] == "stopped_early"
    assert got.data.tags[tags.STOPPED_EPOCH] == "5"
    sweep.finish("completed")


def test_zero_flush_interval_sends_every_epoch(sweep: SweepTracker) -> None:
    run = _open(sweep, "t1", flush_seconds=0.0)
    run.log_epoch({"val_loss": 0.5}, epoch=1)
    assert len(sweep.client.get_metric_history(run.run_id, "val_loss")) == 1
    run.finish(TrialStatus.COMPLETED)
    sweep.finish("completed")


def test_a_running_total_is_sent_again_at_a_step_the_run_holds(sweep: SweepTracker) -> None:
    first = _open(sweep, "t1", flush_seconds=0.0)
    first.log_epoch({"val_loss": 0.5, tags.CPU_SECONDS: 1.0}, epoch=1)
    first.log_epoch({"val_loss": 0.4, tags.CPU_SECONDS: 2.0}, epoch=2)
    first.finish(TrialStatus.FAILED, reason="worker died")
    again = _open(sweep, "t1")  # a resumed trial: epoch 2 is in the run already
    again.log_metrics({"val_loss": 0.45, "test_loss": 0.6}, step=2, totals={tags.CPU_SECONDS: 3.5})
    again.finish(TrialStatus.COMPLETED)
    history = sweep.client.get_metric_history(again.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.4)]  # an epoch keeps one value
    cpu = sweep.client.get_metric_history(again.run_id, tags.CPU_SECONDS)
    assert sorted((m.step, m.value) for m in cpu) == [(1, 1.0), (2, 2.0), (2, 3.5)]
    got = sweep.client.get_run(again.run_id).data.metrics
    assert got[tags.CPU_SECONDS] == 3.5 and got["test_loss"] == 0.6  # the newer total is the latest value
    sweep.finish("completed")


def test_failed_trial_has_reason_and_failed_status(sweep: SweepTracker) -> None:
    run = _open(sweep, "t1")
    run.finish(TrialStatus.FAILED, reason="TrainingDiverged: loss is nan")
    got = sweep.client.get_run(run.run_id)
    assert got.info.status == "FAILED"
    assert got.data.tags[tags.TRIAL_STATUS] == "failed"
    assert got.data.tags[tags.FAILURE_REASON] == "TrainingDiverged: loss is nan"
    sweep.finish("completed")


def test_reconcile_closes_runs_left_running(sweep: SweepTracker) -> None:
    done = _open(sweep, "done")
    done.finish(TrialStatus.COMPLETED)
    _open(sweep, "stopped")
    _open(sweep, "lost")
    closed = sweep.reconcile({"stopped": (TrialStatus.STOPPED_EARLY, 3, None)}, wait_seconds=0)
    assert closed == 2
    runs = {r.data.tags[tags.TRIAL_ID]: r for r in sweep.child_runs()}
    assert all(r.info.status != "RUNNING" for r in runs.values())
    assert runs["stopped"].data.tags[tags.TRIAL_STATUS] == "stopped_early"
    assert runs["lost"].data.tags[tags.TRIAL_STATUS] == "failed"
    assert "ended before" in runs["lost"].data.tags[tags.FAILURE_REASON]
    sweep.finish("interrupted")
    assert sweep.client.get_run(sweep.parent_run_id).info.status == "KILLED"


def test_reconcile_says_when_an_ended_trial_lost_its_evaluation(sweep: SweepTracker) -> None:
    """Tune ended these trials, but their worker died before (or after) logging the test metrics."""
    unevaluated = _open(sweep, "unevaluated")
    unevaluated.log_epoch({"val_loss": 0.5}, epoch=1)
    unevaluated.flush()
    evaluated = _open(sweep, "evaluated")
    evaluated.log_metrics({"test_loss": 0.4})
    _open(sweep, "failed")
    outcomes = {"unevaluated": (TrialStatus.COMPLETED, None, None), "evaluated": (TrialStatus.STOPPED_EARLY, 1, None),
                "failed": (TrialStatus.FAILED, None, "boom")}
    assert sweep.reconcile(outcomes, wait_seconds=0, evaluation_metric="test_loss") == 3
    runs = {r.data.tags[tags.TRIAL_ID]: r for r in sweep.child_runs()}
    assert runs["unevaluated"].data.tags[tags.TRIAL_STATUS] == "completed"
    assert "test metrics and plots are missing" in runs["unevaluated"].data.tags[tags.UNEVALUATED]
    assert tags.UNEVALUATED not in runs["evaluated"].data.tags
    assert tags.UNEVALUATED not in runs["failed"].data.tags, "a failure has its own reason"
    sweep.finish("completed")


def test_non_finite_values_are_logged_as_nan(sweep: SweepTracker) -> None:
    run = _open(sweep, "t1")
    run.log_metrics({"test_loss": float("inf"), "test_accuracy": 0.5, "label": "x"})
    got = client_for(sweep.uri).get_run(run.run_id).data.metrics
    assert got["test_accuracy"] == 0.5 and got["test_loss"] != got["test_loss"]
    assert "label" not in got
    run.finish(TrialStatus.COMPLETED)
    sweep.finish("completed")


def test_deleted_experiment_is_refused(tracking_uri: str) -> None:
    client = client_for(tracking_uri)
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(ValueError, match="deleted"):
        SweepTracker(tracking_uri, experiment="gone", sweep_name="x", sweep_id="y")


def test_interrupted_trials_are_failed_not_stopped_early(sweep: SweepTracker) -> None:
    done = _open(sweep, "done")
    done.finish(TrialStatus.COMPLETED)
    cut = _open(sweep, "cut")
    cut.finish(TrialStatus.STOPPED_EARLY, stopped_epoch=2)  # what the worker saw
    assert sweep.mark_interrupted({"done"}) == 1
    runs = {r.data.tags[tags.TRIAL_ID]: r for r in sweep.child_runs()}
    assert runs["done"].data.tags[tags.TRIAL_STATUS] == "completed"
    assert runs["cut"].data.tags[tags.TRIAL_STATUS] == "failed"
    assert runs["cut"].info.status == "KILLED"
    assert "interrupted" in runs["cut"].data.tags[tags.FAILURE_REASON]
    sweep.finish("interrupted")


def test_a_resumed_sweep_that_fails_early_leaves_earlier_trials_be(sweep: SweepTracker) -> None:
    """A resume that dies before any stage reports (Ray failed to start) knows no outcomes: the
    trials earlier executions finished keep their status; a trial cut off then, and continued
    in this execution, is still relabelled."""
    done = _open(sweep, "done")
    done.finish(TrialStatus.COMPLETED)
    asha = _open(sweep, "asha")
    asha.finish(TrialStatus.STOPPED_EARLY, stopped_epoch=3)
    cut = _open(sweep, "cut")
    cut.finish(TrialStatus.STOPPED_EARLY, stopped_epoch=2)
    assert sweep.mark_interrupted({"done", "asha"}) == 1  # the first execution is interrupted
    settled = sweep.settled_runs()  # the resume begins
    by_id = {r.data.tags[tags.TRIAL_ID]: r.info.run_id for r in sweep.child_runs()}
    assert settled == {by_id["done"], by_id["asha"]}
    assert sweep.mark_interrupted(set(), settled) == 1  # it fails before any outcome
    runs = {r.data.tags[tags.TRIAL_ID]: r for r in sweep.child_runs()}
    assert runs["done"].data.tags[tags.TRIAL_STATUS] == "completed" and runs["done"].info.status == "FINISHED"
    assert runs["asha"].data.tags[tags.TRIAL_STATUS] == "stopped_early"
    assert runs["cut"].data.tags[tags.TRIAL_STATUS] == "failed"
    sweep.finish("interrupted")
