"""Parent and child runs of a sweep.

The driver owns the parent run (:class:`SweepTracker`); each trial owns its child
run (:class:`TrialRun`), found by tags before one is created so that a retried
trial never gets a second run. Per-epoch metrics are buffered and sent with
``log_batch`` at most every ``flush_seconds``.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.entities import Run

from tracking import tags
from tracking.outage import ServerRetry, is_unreachable, single_attempt

logger = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"  # the embedded store: a SQLite file in the working directory
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
MAX_PARAMS = 100  # MLflow's limit of params per log_batch call
MAX_PARAM_LENGTH = 6000  # MLflow's limit of one param value
EPOCH_FLUSH_TIMEOUT_S = 15  # a flush of epoch metrics waits this long for the server, then training goes on

_clients: dict[str, MlflowClient] = {}


class TrialStatus(str, enum.Enum):
    """How a trial ended, as written to ``sweep.trial_status``."""

    COMPLETED = tags.COMPLETED
    STOPPED_EARLY = tags.STOPPED_EARLY
    FAILED = tags.FAILED

    @property
    def run_status(self) -> str:
        return "FAILED" if self is TrialStatus.FAILED else "FINISHED"


def resolve_tracking_uri(uri: str | None = None, cwd: str | Path | None = None) -> str:
    """The tracking URI: the sweep file's, else ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``.

    Relative SQLite paths are made absolute, because Ray workers run in other directories.

    Example:
        >>> resolve_tracking_uri("sqlite:///runs.db", cwd="/tmp")
        'sqlite:////tmp/runs.db'
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    base = Path(cwd) if cwd else Path.cwd()
    if chosen.startswith("sqlite:///") and not chosen.startswith("sqlite:////"):
        chosen = "sqlite:///" + str((base / chosen[len("sqlite:///") :]).resolve())
    elif "://" not in chosen:  # a bare path means a SQLite file
        chosen = "sqlite:///" + str((base / chosen).resolve())
    return chosen


def client_for(uri: str) -> MlflowClient:
    """One client per tracking URI and process (creating a SQLite store costs about a second)."""
    if uri not in _clients:
        _clients[uri] = MlflowClient(tracking_uri=uri)
    return _clients[uri]


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def log_in_batches(client: MlflowClient, run_id: str, params: Mapping[str, Any] | None = None,
                   metrics: list[Metric] | None = None) -> None:
    """Send params and metrics within MLflow's per-call limits (100 params, 1000 metrics)."""
    params_list = [Param(k, _param_value(v)) for k, v in sorted((params or {}).items())]
    for start in range(0, len(params_list), MAX_PARAMS):
        client.log_batch(run_id, params=params_list[start : start + MAX_PARAMS])
    metric_list = metrics or []
    for start in range(0, len(metric_list), MAX_BATCH):
        client.log_batch(run_id, metrics=metric_list[start : start + MAX_BATCH])


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[key] = float(value) if math.isfinite(value) else float("nan")
    return out


class TrialRun:
    """The child run of one trial, written from the worker that runs it.

    Example:
        >>> import tempfile, os
        >>> uri = "sqlite:///" + os.path.join(tempfile.mkdtemp(), "m.db")
        >>> sweep = SweepTracker(uri, experiment="demo", sweep_name="demo", sweep_id="s1")
        >>> parent = sweep.start()
        >>> run = TrialRun.open(uri, sweep.experiment_id, parent, "demo", "s1", "t1", {"lr": 0.1})
        >>> run.log_epoch({"val_loss": 0.5}, epoch=1)
        >>> run.finish(TrialStatus.COMPLETED)
        >>> sweep.client.get_run(run.run_id).info.status
        'FINISHED'
        >>> sweep.finish("completed")
    """

    def __init__(self, uri: str, run_id: str, flush_seconds: float = 2.0, retry: ServerRetry | None = None):
        self.uri = uri
        self.run_id = run_id
        self.client = client_for(uri)
        self.flush_seconds = flush_seconds
        self.retry = retry or ServerRetry()
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()
        self._logged: set[tuple[str, int]] = set()  # (key, step) already in the run, when it is reopened
        self.restarts = 0  # how many times this run was reopened by a retried or resumed trial
        self._unreachable_since: float | None = None  # set while epoch metrics wait for the server
        self._next_attempt = 0.0  # monotonic time of the next deferred flush while the server is away
        self.deferred_flushes = 0  # epoch flushes that found the server unreachable and kept their metrics

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.retry.call(what, fn, *args, **kwargs)

    def _reopen(self, found: Run, extra_tags: Mapping[str, str]) -> None:
        """Continue a run a retried or resumed trial left: no step is logged twice.

        A resumed trial recomputes the epochs after its last checkpoint; those the run
        already holds are skipped, so every metric keeps one value per epoch.
        """
        for key in found.data.metrics:
            history = self._call("get_metric_history", self.client.get_metric_history, self.run_id, key)
            self._logged.update((key, m.step) for m in history)
        self.restarts = int(found.data.tags.get(tags.RESTARTS, "0")) + 1
        for stale in (tags.FAILURE_REASON, tags.STOPPED_EPOCH):
            if stale in found.data.tags:
                self._call("delete_tag", self.client.delete_tag, self.run_id, stale)
        self.set_tags({**extra_tags, tags.TRIAL_STATUS: tags.RUNNING, tags.RESTARTS: str(self.restarts)})
        if found.info.status != "RUNNING":
            self._call("update_run", self.client.update_run, self.run_id, status="RUNNING")
        logger.info("reopened run %s (restart %d, %d metric steps already logged)",
                    self.run_id, self.restarts, len(self._logged))

    def _new(self, metrics: Mapping[str, Any], step: int, now_ms: int) -> list[Metric]:
        return [Metric(k, v, now_ms, step) for k, v in _finite(metrics).items() if (k, step) not in self._logged]

    @classmethod
    def open(
        cls,
        uri: str,
        experiment_id: str,
        parent_run_id: str,
        sweep_name: str,
        sweep_id: str,
        trial_id: str,
        params: Mapping[str, Any],
        run_name: str | None = None,
        flush_seconds: float = 2.0,
        extra_tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
        retry: ServerRetry | None = None,
    ) -> TrialRun:
        """Find this trial's run (by ``run_id``, e.g. from a checkpoint, else by its tags),
        or create it with its params and tags. Waits (``retry``) while the server is unreachable."""
        client = client_for(uri)
        retry = retry or ServerRetry()
        def find() -> list[Run]:
            return client.search_runs([experiment_id], max_results=1, filter_string=(
                f"tags.`{tags.SWEEP_ID}` = '{sweep_id}' and tags.`{tags.TRIAL_ID}` = '{trial_id}'"))

        if run_id is not None:
            existing = [retry.call("get_run", client.get_run, run_id)]
        else:
            existing = retry.call("search_runs", find)
        if existing:
            run = cls(uri, existing[0].info.run_id, flush_seconds, retry)
            run._reopen(existing[0], extra_tags or {})
            return run
        run_tags = {
            tags.PARENT_RUN_ID: parent_run_id,
            tags.SWEEP_NAME: sweep_name,
            tags.SWEEP_ID: sweep_id,
            tags.TRIAL_ID: trial_id,
            tags.ROLE: "trial",
            tags.TRIAL_STATUS: tags.RUNNING,
            **(extra_tags or {}),
        }
        # A create_run whose answer was lost may have created the run: look again before a retry.
        def create() -> Run:
            again = find()
            return again[0] if again else client.create_run(experiment_id, tags=run_tags,
                                                            run_name=run_name or trial_id)

        created = retry.call("create_run", create)
        run = cls(uri, created.info.run_id, flush_seconds, retry)
        retry.call("log_params", log_in_batches, client, run.run_id, params=params)
        return run

    def log_epoch(self, metrics: Mapping[str, Any], epoch: int) -> None:
        """Buffer one epoch's metrics with ``step=epoch``; send when the buffer is due.

        While the server is unreachable, training goes on: the metrics stay buffered (and in
        the trial checkpoint's curves) and are sent once it answers again.
        """
        self._pending.extend(self._new(metrics, int(epoch), int(time.time() * 1000)))
        now = time.monotonic()
        due = now - self._last_flush >= self.flush_seconds or len(self._pending) >= MAX_BATCH
        if due and now >= self._next_attempt:
            self._flush_or_defer()

    def log_history(self, history: list[Mapping[str, Any]]) -> None:
        """Log epochs of a restored checkpoint's curves that the run lacks, e.g. because the
        worker died with them buffered or during an outage. Steps the run holds are skipped."""
        for metrics in history:
            epoch = int(metrics["epoch"])
            self._pending.extend(self._new({k: v for k, v in metrics.items() if k != "epoch"}, epoch,
                                           int(time.time() * 1000)))
        self.flush()

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0, totals: Mapping[str, Any] | None = None) -> None:
        """Log metrics now (e.g. the final test metrics).

        ``totals`` are running totals (the trial's CPU seconds): their newer value is sent even at
        a step the run already holds, and becomes the metric's latest value in MLflow.
        """
        now_ms = int(time.time() * 1000)
        self._pending.extend(self._new(metrics, step, now_ms))
        self._pending.extend(Metric(k, v, now_ms, step) for k, v in _finite(totals or {}).items())
        self.flush()

    def _send_pending(self) -> None:
        while self._pending:  # a batch leaves the buffer only once MLflow has taken it
            batch = self._pending[:MAX_BATCH]
            self.client.log_batch(self.run_id, metrics=batch)
            self._logged.update((m.key, m.step) for m in batch)
            self._pending = self._pending[MAX_BATCH:]
        self._last_flush = time.monotonic()

    def _flush_or_defer(self) -> None:
        """One attempt to send the buffer; if the server is unreachable, keep it and go on."""
        try:
            with single_attempt(timeout_s=EPOCH_FLUSH_TIMEOUT_S):
                self._send_pending()
        except Exception as e:
            if not is_unreachable(e):
                raise
            now = time.monotonic()
            if self._unreachable_since is None:
                self._unreachable_since = now
                logger.warning("run %s: tracking server unreachable; %d epoch metric(s) wait in memory and "
                               "training goes on", self.run_id, len(self._pending))
            self.deferred_flushes += 1
            waited = now - self._unreachable_since
            if waited > self.retry.patience_s:
                raise
            self._next_attempt = now + min(self.retry.max_delay_s, max(self.retry.first_delay_s, waited / 2))
            return
        if self._unreachable_since is not None:
            logger.warning("run %s: tracking server reachable again after %.1f s; buffered metrics sent",
                           self.run_id, time.monotonic() - self._unreachable_since)
            self._unreachable_since = None
        self._next_attempt = 0.0

    def flush(self) -> None:
        """Send every buffered metric, waiting (``retry``) while the server is unreachable."""
        self._call("log_batch", self._send_pending)
        self._unreachable_since = None
        self._next_attempt = 0.0

    def set_tags(self, values: Mapping[str, Any]) -> None:
        self._call("set_tags", self.client.log_batch, self.run_id,
                   tags=[RunTag(k, str(v)) for k, v in values.items()])

    def finish(self, status: TrialStatus, stopped_epoch: int | None = None, reason: str | None = None) -> None:
        """Flush, tag how the trial ended and close the run."""
        self.flush()
        self._call("finish_run", finish_run, self.client, self.run_id, status, stopped_epoch, reason)


def finish_run(
    client: MlflowClient, run_id: str, status: TrialStatus, stopped_epoch: int | None = None,
    reason: str | None = None,
) -> None:
    """Tag a child run with its real outcome and terminate it."""
    values = {tags.TRIAL_STATUS: status.value}
    if stopped_epoch is not None:
        values[tags.STOPPED_EPOCH] = str(stopped_epoch)
    if reason:
        values[tags.FAILURE_REASON] = reason[:5000]
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in values.items()])
    client.set_terminated(run_id, status=status.run_status)


class SweepTracker:
    """The parent run of one sweep execution, driven from the sweep's driver process."""

    def __init__(self, uri: str, experiment: str, sweep_name: str, sweep_id: str):
        self.uri = uri
        self.client = client_for(uri)
        self.sweep_name = sweep_name
        self.sweep_id = sweep_id
        found = self.client.get_experiment_by_name(experiment)
        if found is not None and found.lifecycle_stage == "deleted":
            raise ValueError(
                f"tracking.experiment={experiment!r}: that MLflow experiment is deleted; "
                "restore it (mlflow experiments restore) or choose another name"
            )
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.parent_run_id: str | None = None

    def start(self, description: str = "", params: Mapping[str, Any] | None = None) -> str:
        run_tags = {
            tags.SWEEP_NAME: self.sweep_name,
            tags.SWEEP_ID: self.sweep_id,
            tags.ROLE: "parent",
            tags.SWEEP_STATUS: tags.RUNNING,
        }
        if description:
            run_tags[tags.NOTE] = description
        run = self.client.create_run(self.experiment_id, tags=run_tags, run_name=f"{self.sweep_name}-{self.sweep_id}")
        self.parent_run_id = run.info.run_id
        log_in_batches(self.client, self.parent_run_id, params=params)
        return self.parent_run_id

    def reopen(self, parent_run_id: str, extra_tags: Mapping[str, str] | None = None) -> str:
        """Continue the parent run of an interrupted execution (``sweep resume``)."""
        self.parent_run_id = parent_run_id
        run = self.client.get_run(parent_run_id)
        resumes = int(run.data.tags.get(tags.RESUMES, "0")) + 1
        self.set_tags({tags.SWEEP_STATUS: tags.RUNNING, tags.RESUMES: str(resumes), **(extra_tags or {})})
        if run.info.status != "RUNNING":
            self.client.update_run(parent_run_id, status="RUNNING")
        return parent_run_id

    def retire_orphans(self, known_trial_ids: set[str]) -> int:
        """Trial runs that Tune never recorded, because the driver was killed right after they began.

        The resumed sweep gave their place in the trial budget to a new trial, so they are not
        part of the results: each is tagged failed with the reason and deleted, MLflow's soft
        delete (``mlflow runs restore --run-id ...`` brings one back; nothing is erased).
        """
        count = 0
        for run in self.child_runs():
            if run.data.tags.get(tags.TRIAL_ID) in known_trial_ids:
                continue
            values = {tags.TRIAL_STATUS: tags.FAILED, tags.FAILURE_REASON:
                      "orphaned: the sweep's driver was killed before Ray Tune recorded this trial; "
                      "the resumed sweep ran another trial in its place"}
            self.client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in values.items()])
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, status="KILLED")
            self.client.delete_run(run.info.run_id)
            logger.warning("retired orphaned run %s (trial %s)", run.info.run_id, run.data.tags.get(tags.TRIAL_ID))
            count += 1
        return count

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self._parent(), text, artifact_file)

    def set_tags(self, values: Mapping[str, Any]) -> None:
        self.client.log_batch(self._parent(), tags=[RunTag(k, str(v)) for k, v in values.items()])

    def log_metrics(self, metrics: Mapping[str, Any]) -> None:
        now_ms = int(time.time() * 1000)
        self.client.log_batch(self._parent(), metrics=[Metric(k, v, now_ms, 0) for k, v in _finite(metrics).items()])

    def child_runs(self) -> list[Run]:
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{tags.SWEEP_ID}` = '{self.sweep_id}' and tags.`{tags.ROLE}` = 'trial'",
            max_results=50000,
        )

    def reconcile(self, outcomes: Mapping[str, tuple[TrialStatus, int | None, str | None]],
                  wait_seconds: float = 10.0, evaluation_metric: str | None = None) -> int:
        """Close child runs a worker left RUNNING, with the outcome the driver saw.

        Workers close their own runs; one killed or cut off mid-way cannot. Waits up to
        ``wait_seconds`` for workers to finish first. Returns how many runs were closed here.

        A trial can end for Tune (ASHA stopped it, or it reached ``max_t``) while its worker is
        still evaluating it; a driver killed then takes the worker with it. Such a run keeps its
        outcome and its complete curves, but when it lacks ``evaluation_metric`` (what the
        worker logs last, e.g. ``test_loss``) it is tagged ``sweep.unevaluated`` with why, so
        nobody mistakes the missing test metrics and plots for a trainer that has none.
        """
        deadline = time.monotonic() + wait_seconds
        while True:
            running = [r for r in self.child_runs() if r.info.status == "RUNNING"]
            if not running or time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        for run in running:
            trial_id = run.data.tags.get(tags.TRIAL_ID, "")
            status, stopped, reason = outcomes.get(
                trial_id, (TrialStatus.FAILED, None, "the sweep ended before this trial reported an outcome")
            )
            logger.info("closing run %s of trial %s as %s", run.info.run_id, trial_id, status.value)
            if (status is not TrialStatus.FAILED and evaluation_metric is not None
                    and evaluation_metric not in run.data.metrics):
                self.client.set_tag(run.info.run_id, tags.UNEVALUATED,
                                    "the trial's worker stopped (its sweep driver was killed) before the "
                                    "end-of-trial evaluation: the curves are complete; the test metrics and "
                                    "plots are missing")
            finish_run(self.client, run.info.run_id, status, stopped, reason)
        return len(running)

    def log_summary_run(self, config_id: str, source_trial: str, params: Mapping[str, Any],
                        metrics: Mapping[str, float], seeds: list[int], variant: str | None = None) -> str:
        """A finished child run holding one repeated configuration's statistics over seeds."""
        run_tags = {
            tags.PARENT_RUN_ID: self._parent(), tags.SWEEP_NAME: self.sweep_name, tags.SWEEP_ID: self.sweep_id,
            tags.ROLE: "summary", tags.STAGE: "summary", tags.CONFIG_ID: config_id,
            tags.SOURCE_TRIAL: source_trial, "sweep.seeds": ",".join(map(str, seeds)),
        }
        if variant is not None:
            run_tags[tags.VARIANT] = variant
        name = f"{variant}-{config_id}-summary" if variant else f"{config_id}-summary"
        existing = [r for r in self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{tags.SWEEP_ID}` = '{self.sweep_id}' and "
            f"tags.`{tags.ROLE}` = 'summary' and tags.`{tags.CONFIG_ID}` = '{config_id}'")
            if r.data.tags.get(tags.VARIANT) == variant]
        if existing:  # a resumed sweep that had begun its summaries: update, never duplicate
            run_id = existing[0].info.run_id
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in run_tags.items()])
        else:
            run_id = self.client.create_run(self.experiment_id, tags=run_tags, run_name=name).info.run_id
        now_ms = int(time.time() * 1000)
        log_in_batches(self.client, run_id, params=params,
                       metrics=[Metric(k, v, now_ms, 0) for k, v in _finite(metrics).items()])
        self.client.set_terminated(run_id, status="FINISHED")
        return run_id

    def settled_runs(self) -> set[str]:
        """Run ids of the trials already completed or stopped early: a resumed sweep never runs
        them again, so nothing this execution does may relabel them."""
        return {r.info.run_id for r in self.child_runs()
                if r.data.tags.get(tags.TRIAL_STATUS) in (tags.COMPLETED, tags.STOPPED_EARLY)}

    def mark_interrupted(self, finished_trial_ids: set[str], settled: Collection[str] = ()) -> int:
        """Record trials cut off by an interrupted sweep as failed, whatever their worker wrote.

        A worker sees an interruption exactly as it sees an ASHA stop; only the driver knows
        the difference, and ``stopped_early`` must keep meaning "stopped by the scheduler".
        ``settled`` (from :meth:`settled_runs`, taken when the execution began) holds the runs an
        earlier execution finished: they are left as they are, also when this one fails before
        its stages report anything (it once relabelled a whole resumed study as failed).
        """
        count = 0
        for run in self.child_runs():
            if run.data.tags.get(tags.TRIAL_ID) in finished_trial_ids or run.info.run_id in settled:
                continue
            values = {tags.TRIAL_STATUS: tags.FAILED,
                      tags.FAILURE_REASON: "interrupted: the sweep was stopped before this trial finished"}
            self.client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in values.items()])
            self.client.set_terminated(run.info.run_id, status="KILLED")
            count += 1
        return count

    def finish(self, status: str, best: Mapping[str, Any] | None = None) -> None:
        """Close the parent run: ``completed``, ``interrupted`` or ``failed``."""
        values = {tags.SWEEP_STATUS: status}
        if best:
            values.update({k: str(v) for k, v in best.items()})
        self.set_tags(values)
        run_status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self._parent(), status=run_status)

    def _parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("SweepTracker.start() has not been called")
        return self.parent_run_id


_ = RunStatus  # re-export for callers that compare statuses
