"""The driver's view of how trials end, driven with in-memory trials (no Ray cluster)."""

from __future__ import annotations

from types import SimpleNamespace

from sweeps.progress import SweepSnapshot
from sweeps.tune import MIN_THREAD_TIMEOUT_S, _SweepCallback, repeat_points, thread_timeout_s
from sweeps.validate import load_spec_text
from tracking import TrialStatus
from trainer.loop import EARLY_STOPPED

SPEC = load_spec_text("name: s\nsearch: {trials: 3}\nparameters: {epochs: 10}\nrepeats: {top_k: 2, seeds: 2}\n")


class Sink:
    def __init__(self) -> None:
        self.seen: list[SweepSnapshot] = []

    def update(self, snapshot: SweepSnapshot) -> None:
        self.seen.append(snapshot)


def _finish(cb: _SweepCallback, trial_id: str, result: dict) -> None:
    trial = SimpleNamespace(trial_id=trial_id, config={"epochs": 10, "lr": 0.1}, last_result=result)
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(0, [], trial, result)
    cb.on_trial_complete(0, [], trial)


def test_outcomes_by_how_trials_ended() -> None:
    sink = Sink()
    cb = _SweepCallback(SPEC, sink)
    _finish(cb, "full", {"epoch": 10, "val_accuracy": 0.9})
    _finish(cb, "asha", {"epoch": 3, "val_accuracy": 0.95})
    _finish(cb, "patience", {"epoch": 4, "val_accuracy": 0.92, EARLY_STOPPED: 1.0})
    assert cb.outcomes["full"][0] is TrialStatus.COMPLETED
    assert cb.outcomes["asha"] == (TrialStatus.STOPPED_EARLY, 3, None)
    assert cb.outcomes["patience"][0] is TrialStatus.COMPLETED  # it ended itself: a complete run
    # the best *completed* trial wins over a partial-budget value
    assert [t for t, _ in cb.ranked_completed()] == ["patience", "full"]
    last = sink.seen[-1]
    assert (last.completed, last.stopped_early, last.running) == (2, 1, 0)
    assert last.best_trial == "patience" and last.best_value == 0.92


def test_repeat_points_take_the_top_configurations_with_fresh_seeds() -> None:
    points = repeat_points(SPEC, [("t1", {"lr": 0.1, "epochs": 10}), ("t2", {"lr": 0.2, "epochs": 10}),
                                  ("t3", {"lr": 0.3, "epochs": 10})])
    assert [(p["config_id"], p["seed"], p["source_trial"]) for p in points] == [
        ("rank1", 1000, "t1"), ("rank1", 1001, "t1"), ("rank2", 1000, "t2"), ("rank2", 1001, "t2")]
    assert points[0]["params"] == {"lr": 0.1, "epochs": 10, "seed": 1000}


def test_a_trial_tune_errored_without_a_callback_counts_as_failed(tmp_path) -> None:
    # Ray Tune errors a trial whose reused actor could not be reset without calling
    # on_trial_error; uncounted, the stage never completed and every resume ended "interrupted"
    error_file = tmp_path / "error.txt"
    error_file.write_text("Failure # 1 (occurred at 2026-12-01_23-30-45)\n"
                          "Trainable runner reuse requires reset_config() to be implemented and return True.\n")
    cb = _SweepCallback(SPEC, Sink())
    _finish(cb, "done", {"epoch": 10, "val_accuracy": 0.9})
    failed = SimpleNamespace(trial_id="reset", status="ERROR", error_file=str(error_file), config={})
    reported = SimpleNamespace(trial_id="done", status="TERMINATED", config={})
    pending = SimpleNamespace(trial_id="pending", status="PENDING", config={})
    cb.on_experiment_end(trials=[reported, failed, pending])
    assert cb.outcomes["reset"] == (
        TrialStatus.FAILED, None, "Trainable runner reuse requires reset_config() to be implemented and return True.")
    assert cb.outcomes["done"][0] is TrialStatus.COMPLETED  # what the callbacks heard stays
    assert "pending" not in cb.outcomes  # not ended: a resume continues it
    cb.on_experiment_end(trials=[SimpleNamespace(trial_id="bare", status="ERROR", config={})])
    assert cb.outcomes["bare"] == (TrialStatus.FAILED, None, "Tune ended the trial in error")


def test_a_reused_actor_waits_out_the_tracking_retry_window() -> None:
    # Tune errors the next trial when the previous trial's thread outlives this wait, so the wait
    # covers the window in which a trial retries an unreachable MLflow server.
    assert thread_timeout_s(600.0) == 630
    assert thread_timeout_s(12.2) == 43
    assert thread_timeout_s(0.0) == MIN_THREAD_TIMEOUT_S == 30
