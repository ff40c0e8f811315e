"""Riding out an unreachable tracking server (`tracking/outage.py`, `TrialRun`'s deferred flushes).

The server's absence is real where it matters: the errors come from MLflow's own HTTP client
talking to a closed loopback port. The end-to-end outage (a real `mlflow server` stopped for
30 s mid-sweep) is in tests/test_cluster.py.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from tracking import SweepTracker, TrialRun, TrialStatus, tags
from tracking.outage import ServerRetry, is_unreachable, single_attempt


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def unreachable_error() -> MlflowException:
    """What MLflow's client raises when nothing listens at the tracking URI."""
    client = MlflowClient(f"http://127.0.0.1:{_closed_port()}")
    with single_attempt(timeout_s=5), pytest.raises(MlflowException) as caught:
        client.get_experiment_by_name("x")
    return caught.value


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def test_mlflow_connection_errors_count_as_unreachable(unreachable_error: MlflowException) -> None:
    assert is_unreachable(unreachable_error), str(unreachable_error)
    assert not is_unreachable(MlflowException("RESOURCE_DOES_NOT_EXIST: run 'abc' not found"))
    assert not is_unreachable(ValueError("API request to x failed: INVALID_PARAMETER_VALUE"))


def test_single_attempt_sets_and_restores_mlflow_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    with single_attempt(timeout_s=7):
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_retry_waits_with_capped_backoff_until_the_server_answers(unreachable_error: MlflowException) -> None:
    clock = FakeClock()
    answers: list[Any] = [unreachable_error] * 6 + ["sent"]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    retry = ServerRetry(patience_s=60, first_delay_s=0.5, max_delay_s=4, sleep=clock.sleep, clock=clock)
    assert retry.call("log_batch", call) == "sent"
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert retry.waited_s == pytest.approx(15.5)


def test_retry_gives_up_after_its_patience(unreachable_error: MlflowException) -> None:
    clock = FakeClock()
    attempts = []

    def down() -> None:
        attempts.append(clock.now)
        raise unreachable_error

    retry = ServerRetry(patience_s=10, first_delay_s=1, max_delay_s=4, sleep=clock.sleep, clock=clock)
    with pytest.raises(MlflowException, match="API request to"):
        retry.call("finish_run", down)
    assert clock.now == pytest.approx(10.0)  # waited exactly its patience, no longer
    assert attempts[0] == 0.0 and attempts[-1] == pytest.approx(10.0)


def test_retry_does_not_retry_a_rejected_request() -> None:
    clock = FakeClock()
    calls = []

    def rejected() -> None:
        calls.append(1)
        raise MlflowException("INVALID_PARAMETER_VALUE: bad metric")

    with pytest.raises(MlflowException, match="INVALID_PARAMETER_VALUE"):
        ServerRetry(patience_s=60, sleep=clock.sleep, clock=clock).call("log_batch", rejected)
    assert calls == [1] and clock.sleeps == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"patience_s": -1}, r"patience_s=-1: must be >= 0"),
    ({"first_delay_s": 0}, r"first_delay_s=0, max_delay_s=10.0: need 0 < first_delay_s <= max_delay_s"),
    ({"first_delay_s": 5, "max_delay_s": 2}, r"first_delay_s=5, max_delay_s=2"),
])
def test_retry_rejects_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerRetry(**kwargs)


class FlakyClient:
    """A real SQLite-backed client whose server goes away while ``down`` is set."""

    def __init__(self, real: MlflowClient, error: Exception):
        self.real, self.error = real, error
        self.down = False
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.real, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.refused += 1
                raise self.error
            return method(*args, **kwargs)

        return call


@pytest.fixture
def sweep(tracking_uri: str) -> SweepTracker:
    tracker = SweepTracker(tracking_uri, experiment="outage", sweep_name="outage", sweep_id="sid")
    tracker.start()
    yield tracker
    tracker.finish("completed")


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_training_goes_on_while_the_server_is_away_and_nothing_is_lost(
        sweep: SweepTracker, unreachable_error: MlflowException) -> None:
    clock = FakeClock()
    run = TrialRun.open(sweep.uri, sweep.experiment_id, sweep.parent_run_id, "outage", "sid", "t1", {"lr": 0.1},
                        flush_seconds=0, retry=ServerRetry(patience_s=120, sleep=clock.sleep, clock=clock))
    flaky = FlakyClient(run.client, unreachable_error)
    run.client = flaky  # type: ignore[assignment]
    run.log_epoch({"val_loss": 1.0}, epoch=1)
    flaky.down = True
    for epoch in (2, 3, 4):  # the server is away: each epoch returns at once, its metrics kept
        run.log_epoch({"val_loss": 1.0 / epoch}, epoch=epoch)
    assert flaky.refused >= 1 and run.deferred_flushes == flaky.refused and clock.sleeps == []
    assert [m.step for m in run._pending] == [2, 3, 4]

    def back_after_two_waits(seconds: float) -> None:  # finish() waits; the server returns meanwhile
        clock.sleep(seconds)
        flaky.down = len(clock.sleeps) < 2

    run.retry._sleep = back_after_two_waits
    run.log_epoch({"val_loss": 0.2}, epoch=5)
    run.finish(TrialStatus.COMPLETED)
    real = sweep.client
    assert _history(real, run.run_id, "val_loss") == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25), (5, 0.2)]
    got = real.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.tags[tags.TRIAL_STATUS] == "completed"


def test_an_outage_longer_than_the_patience_fails_the_flush(
        sweep: SweepTracker, unreachable_error: MlflowException, monkeypatch: pytest.MonkeyPatch) -> None:
    run = TrialRun.open(sweep.uri, sweep.experiment_id, sweep.parent_run_id, "outage", "sid", "t2", {},
                        flush_seconds=0, retry=ServerRetry(patience_s=0.0))
    flaky = FlakyClient(run.client, unreachable_error)
    run.client = flaky  # type: ignore[assignment]
    flaky.down = True
    import time

    now = [time.monotonic()]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    run.log_epoch({"val_loss": 1.0}, epoch=1)  # first refusal: deferred
    now[0] += 1.0
    with pytest.raises(MlflowException, match="API request to"):
        run.log_epoch({"val_loss": 0.9}, epoch=2)
    flaky.down = False
    run.finish(TrialStatus.FAILED, reason="outage")
    assert _history(sweep.client, run.run_id, "val_loss") == [(1, 1.0), (2, 0.9)]  # kept, and sent later


def test_replayed_batch_is_stored_once(sweep: SweepTracker) -> None:
    """A batch whose answer was lost is sent again with the same timestamps: MLflow keeps one copy."""
    run_id = sweep.client.create_run(sweep.experiment_id).info.run_id
    batch = [Metric("val_loss", 0.5, 1_700_000_000_000, 1), Metric("val_loss", 0.4, 1_700_000_001_000, 2)]
    sweep.client.log_batch(run_id, metrics=batch)
    sweep.client.log_batch(run_id, metrics=batch)
    sweep.client.set_terminated(run_id)
    assert _history(sweep.client, run_id, "val_loss") == [(1, 0.5), (2, 0.4)]


def test_restored_history_fills_only_the_missing_epochs(sweep: SweepTracker) -> None:
    run = TrialRun.open(sweep.uri, sweep.experiment_id, sweep.parent_run_id, "outage", "sid", "t3", {},
                        flush_seconds=0)
    run.log_epoch({"val_loss": 1.0}, epoch=1)
    # the worker died with epoch 2 buffered; its retry reopens the run and replays the checkpoint's curves
    again = TrialRun.open(sweep.uri, sweep.experiment_id, sweep.parent_run_id, "outage", "sid", "t3", {})
    again.log_history([{"epoch": 1.0, "val_loss": 99.0}, {"epoch": 2.0, "val_loss": 0.5}])
    again.log_epoch({"val_loss": 0.25}, epoch=3)
    again.finish(TrialStatus.COMPLETED)
    assert _history(sweep.client, run.run_id, "val_loss") == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert sweep.client.get_run(run.run_id).data.tags[tags.RESTARTS] == "1"
