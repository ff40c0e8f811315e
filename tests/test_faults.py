"""Fault tolerance through real Ray: a killed trial worker resumes from its checkpoint into
the same MLflow run, with exactly one value per epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeps.tune import run_sweep
from sweeps.validate import load_spec_text
from tracking import tags

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

EPOCHS = 14
KILL_AFTER_EPOCH = 3

SLOW_SWEEP = f"""
name: faults
data: {{dataset: digits}}
metric: {{name: val_accuracy, goal: maximize}}
parameters:
  epochs: {EPOCHS}
  hidden_size: 32
  batch_size: 2            # slow epochs (~0.2 s): the worker is killed mid-trial
  lr: {{values: [0.01, 0.02]}}
  optimizer: sgd
  dropout: 0.2             # masks drawn every step: the resumed run must continue their stream
search: {{algorithm: grid}}
resources: {{cpus_per_trial: 1, max_concurrent_trials: 2}}
fault_tolerance: {{checkpoint_every: 1, max_failures: 1}}
tracking: {{flush_seconds: 0}}
"""


class Killer(threading.Thread):
    """SIGKILLs the worker of the first trial run that has logged KILL_AFTER_EPOCH epochs."""

    def __init__(self, client: MlflowClient, experiment: str):
        super().__init__(daemon=True)
        self.client, self.experiment = client, experiment
        self.killed: tuple[str, int, int] | None = None  # run id, pid, epochs logged when killed
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 240
        while not self.done.is_set() and time.monotonic() < deadline:
            exp = self.client.get_experiment_by_name(self.experiment)
            runs = self.client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'") if exp else []
            for run in runs:
                steps = len(self.client.get_metric_history(run.info.run_id, "val_accuracy"))
                pid = run.data.tags.get(tags.WORKER_PID)
                if pid and KILL_AFTER_EPOCH <= steps < EPOCHS - 3:
                    os.kill(int(pid), signal.SIGKILL)
                    self.killed = (run.info.run_id, int(pid), steps)
                    return
            time.sleep(0.05)


def _sweep_with_a_kill(spec, client: MlflowClient, tmp_path: Path):
    """Run the sweep while a Killer SIGKILLs one trial's worker; the outcome and (run id, pid, epochs)."""
    killer = Killer(client, spec.name)
    killer.start()
    try:
        outcome = run_sweep(spec, results_dir=tmp_path / "results")
    finally:
        killer.done.set()
        killer.join()
    assert killer.killed is not None, "no trial ran long enough to be killed"
    assert outcome.status == "completed"
    return outcome, killer.killed


def test_killed_worker_resumes_into_the_same_run(ray_session, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_spec_text(SLOW_SWEEP, "faults.yaml", [f"tracking.uri={uri}"])
    client = MlflowClient(uri)
    outcome, (run_id, pid, steps_at_kill) = _sweep_with_a_kill(spec, client, tmp_path)

    children = client.search_runs([outcome.experiment_id], f"tags.`{tags.ROLE}` = 'trial'")
    assert len(children) == 2, "the retried trial must not get a second run"
    assert {c.data.tags[tags.TRIAL_STATUS] for c in children} == {"completed"}
    assert {c.info.status for c in children} == {"FINISHED"}

    run = client.get_run(run_id)
    assert run.data.tags[tags.RESTARTS] == "1"
    assert int(run.data.tags[tags.WORKER_PID]) != pid
    resumed_from = int(run.data.tags[tags.RESUMED_FROM_EPOCH])
    assert 1 <= resumed_from <= steps_at_kill
    for key in ("val_accuracy", "val_loss", "train_loss", "train_accuracy", "lr"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), f"{key}: {sorted(steps)}"
    assert "test_accuracy" in run.data.metrics
    # the restarted attempt's CPU seconds go on from its checkpoint's count: every value it alone logged
    # (after the epoch the first attempt was killed at) exceeds the first attempt's count up to the checkpoint
    cpu = client.get_metric_history(run_id, tags.CPU_SECONDS)
    first = max(m.value for m in cpu if m.step <= resumed_from)
    assert min(m.value for m in cpu if m.step > steps_at_kill) > first

    # the resumed trial is the uninterrupted one: same curve as a fresh run of its configuration
    other = next(c for c in children if c.info.run_id != run_id)
    assert other.data.tags.get(tags.RESTARTS) is None


def test_killed_cross_validated_worker_resumes_every_fold(ray_session, tmp_path: Path) -> None:
    """A CV trial's checkpoint holds all k folds: killed mid-trial, the retry continues each fold
    into the same run, and the fold-mean curve is the uninterrupted lockstep run's, value for value."""
    from trainer import MLPConfig
    from trainer.crossval import fold_datasets, train_cv

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    text = SLOW_SWEEP.replace("name: faults", "name: faults-cv").replace("lr: {values: [0.01, 0.02]}", "lr: {values: [0.02]}")
    spec = load_spec_text(text + "cross_validation: {folds: 3}\n", "faults-cv.yaml", [f"tracking.uri={uri}"])
    client = MlflowClient(uri)
    outcome, (run_id, pid, steps_at_kill) = _sweep_with_a_kill(spec, client, tmp_path)
    (child,) = client.search_runs([outcome.experiment_id], f"tags.`{tags.ROLE}` = 'trial'")
    assert child.info.run_id == run_id and child.data.tags[tags.TRIAL_STATUS] == "completed"
    assert child.data.tags[tags.RESTARTS] == "1" and child.data.tags[tags.CV_FOLDS] == "3"
    assert 1 <= int(child.data.tags[tags.RESUMED_FROM_EPOCH]) <= steps_at_kill

    p = child.data.params
    config = MLPConfig(epochs=EPOCHS, hidden_size=32, batch_size=2, lr=0.02, optimizer="sgd", dropout=0.2,
                       seed=int(p["seed"]))
    straight = train_cv(config, fold_datasets(spec.data, 3), threads=1)
    for key in ("val_loss", "val_accuracy", "train_loss"):
        logged = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        assert sorted(logged) == [(m.epoch, getattr(m, key)) for m in straight.history], key
    for key, value in straight.summary().items():
        assert child.data.metrics[key] == pytest.approx(value, rel=1e-12), key


# ---- the driver killed mid-sweep, then `sweep resume` -----------------------------------------
RESUMABLE_SWEEP = """
name: resumable
data: {dataset: digits}
metric: {name: val_accuracy, goal: maximize}
parameters:
  epochs: 8
  hidden_size: 32
  batch_size: 4            # ~0.1 s epochs
  lr: {distribution: log_uniform, min: 0.005, max: 0.05}
  optimizer: sgd
search: {algorithm: tpe, trials: 6, seed: 0}
early_stopping: {type: asha, grace_period: 3, reduction_factor: 2}
resources: {cpus_per_trial: 1, max_concurrent_trials: 2}
fault_tolerance: {checkpoint_every: 1, max_failures: 1}
tracking: {flush_seconds: 0}
"""


def _session_processes(session: int) -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[3]) == session and fields[0] != "Z":
                pids.add(int(entry))
    return pids


def _freeze_session(session: int) -> set[int]:
    """SIGSTOP every process of the session (new ones too, until none appear): nothing it writes
    changes until it is killed or thawed, so what is read now is what a kill would leave."""
    stopped: set[int] = set()
    while fresh := _session_processes(session) - stopped:
        _signal(fresh, signal.SIGSTOP)
        stopped |= fresh
    return stopped


def _signal(pids: set[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each process that still exists."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _kill_session(session: int) -> None:
    """SIGKILL the driver and everything in its session (its local Ray with it), as a crash would."""
    deadline = time.monotonic() + 30
    while (pids := _session_processes(session)) and time.monotonic() < deadline:
        _signal(pids, signal.SIGKILL)
        time.sleep(0.2)
    assert not _session_processes(session), "the killed driver's processes did not go away"


def _sweep(args: list[str], cwd: Path, env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _saved_checkpoints(results: Path) -> dict[str, str]:
    """Trial id -> the checkpoint Tune's newest saved experiment state names, for trials it has not
    finished: what a resume restores them from. Read with Tune's own loader (internal API)."""
    from ray.tune.experiment.trial import Trial

    states = sorted(results.glob("*/experiment_state-*.json"))
    if not states:
        return {}
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"]
    except (OSError, ValueError):  # being rewritten right now
        return {}
    named = {}
    for state, run_metadata in trial_data:
        trial = Trial.from_json_state(state, stub=True)
        trial.restore_run_metadata(run_metadata)
        if trial.status != Trial.TERMINATED and trial.latest_checkpoint_result is not None:
            named[trial.trial_id] = trial.latest_checkpoint_result.checkpoint.path
    return named


def _lose_saved_checkpoint(path: str) -> int:
    """Recreate the race of a driver killed after Tune replaced a trial's checkpoint but before it
    saved the state naming the new one: the named checkpoint is gone, a later one is in its trial's
    folder. The epoch that later checkpoint holds."""
    named = Path(path)
    folders = sorted(named.parent.glob("checkpoint_*"))
    assert folders, f"no checkpoint in {named.parent}"
    if named.exists():  # the usual case: move it to the next index, as if Tune had saved a newer one
        later = named.parent / f"checkpoint_{int(folders[-1].name.split('_')[1]) + 1:06d}"
        named.rename(later)
    else:  # the race itself happened
        later = folders[-1]
    return int(json.loads((later / "trial.json").read_text())["epoch"])


def test_killed_driver_then_sweep_resume(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    (tmp_path / "sweep.yaml").write_text(RESUMABLE_SWEEP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(MLFLOW_TRACKING_URI=uri, RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p))
    driver = _sweep(["run", "sweep.yaml"], tmp_path, env, start_new_session=True)
    client = MlflowClient(uri)
    deadline = time.monotonic() + 240
    ended, saved = 0, {}
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            exp = client.get_experiment_by_name("resumable") if db.exists() else None
            if exp is not None:
                runs = client.search_runs([exp.experiment_id], f"tags.`{tags.ROLE}` = 'trial'")
                ended = sum(r.info.status != "RUNNING" for r in runs)
                if ended >= 2 and any(r.info.status == "RUNNING" for r in runs):
                    # read the saved state with the sweep frozen: a trial can end, and the state be
                    # synced again, between a read and a kill (CI saw that)
                    frozen = _freeze_session(driver.pid)
                    saved = _saved_checkpoints(tmp_path / "sweep_results")
                    if saved:  # a resume will restore an unfinished trial from a checkpoint
                        break
                    _signal(frozen, signal.SIGCONT)  # thaw it
            time.sleep(0.1)
    finally:
        _kill_session(driver.pid)
    output = driver.communicate()[0]
    assert driver.returncode == -signal.SIGKILL, f"the sweep ended before it could be killed:\n{output[-3000:]}"
    assert 2 <= ended < 6
    assert saved, "no unfinished trial with a checkpoint in the saved state"
    assert _saved_checkpoints(tmp_path / "sweep_results") == saved, "the kill left the state as it was read"
    lost_trial = sorted(saved)[0]
    lost_epoch = _lose_saved_checkpoint(saved[lost_trial])

    # a changed search is refused before anything starts
    (tmp_path / "changed.yaml").write_text(RESUMABLE_SWEEP.replace("max: 0.05", "max: 0.5"))
    refused = _sweep(["resume", "changed.yaml"], tmp_path, env)
    out = refused.communicate(timeout=120)[0]
    assert refused.returncode == 2, out
    assert "changed search" in out and "parameters.lr.max: 0.05 -> 0.5" in out

    resumed = _sweep(["resume", "resumable"], tmp_path, env)
    out = resumed.communicate(timeout=400)[0]
    assert resumed.returncode == 0, out[-4000:]
    assert "resuming sweep 'resumable'" in out
    assert "Downloading artifacts" not in out, "no MLflow progress bars for reading the saved spec"

    exp = client.get_experiment_by_name("resumable")
    parents = client.search_runs([exp.experiment_id], f"tags.`{tags.ROLE}` = 'parent'")
    assert len(parents) == 1, "resume continues the same parent run"
    assert parents[0].data.tags[tags.SWEEP_STATUS] == "completed" and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags[tags.RESUMES] == "1"
    children = client.search_runs([exp.experiment_id], f"tags.`{tags.ROLE}` = 'trial'")
    trial_ids = [c.data.tags[tags.TRIAL_ID] for c in children]
    assert len(children) == 6 and len(set(trial_ids)) == 6, "exactly `trials` child runs, none duplicated"
    states = {c.data.tags[tags.TRIAL_ID]: (c.info.status, c.data.tags.get(tags.TRIAL_STATUS),
                                           c.data.tags.get(tags.FAILURE_REASON)) for c in children}
    assert {c.info.status for c in children} == {"FINISHED"}, (states, out[-4000:])
    assert {c.data.tags[tags.TRIAL_STATUS] for c in children} <= {"completed", "stopped_early"}, states
    # the trial whose saved checkpoint was gone went on from the later one, in the same run
    (lost,) = [c for c in children if c.data.tags[tags.TRIAL_ID] == lost_trial]
    assert int(lost.data.tags[tags.RESUMED_FROM_EPOCH]) == lost_epoch
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_accuracy")]
        assert sorted(steps) == list(range(1, len(steps) + 1)), (c.data.tags[tags.TRIAL_ID], sorted(steps))
        # Tune may end a trial (ASHA's max_t, a rung) while its worker still evaluates it: a driver killed
        # then takes that evaluation down with it, and the resume does it from the trial's checkpoint
        assert "test_accuracy" in c.data.metrics and tags.UNEVALUATED not in c.data.tags, c.data.tags

    again = _sweep(["resume", "resumable"], tmp_path, env)
    out = again.communicate(timeout=120)[0]
    assert again.returncode == 2 and "nothing to resume" in out


# ---- a trial Tune had ended, whose worker died with the driver before evaluating it ------------
LOST_EVALUATION_SWEEP = """
name: lost-evaluation
data: {dataset: digits}
metric: {name: val_accuracy, goal: maximize}
parameters:
  epochs: 6
  hidden_size: 16
  batch_size: 64
  lr: {distribution: log_uniform, min: 0.001, max: 0.3}
  dropout: 0.1
search: {algorithm: tpe, trials: 6, seed: 3}
early_stopping: {type: asha, grace_period: 2, reduction_factor: 2}
resources: {cpus_per_trial: 1, max_concurrent_trials: 2}
fault_tolerance: {checkpoint_every: 1}
tracking: {flush_seconds: 0}
"""


def test_resume_evaluates_trials_whose_worker_died_before_evaluating(ray_session, tmp_path: Path) -> None:
    """The driver and the worker die after Tune ended a trial (ASHA's stop, or the last epoch) but
    before the worker logged its test metrics. Recreated exactly: a finished sweep's runs are put
    back to that state (their end-of-trial metrics deleted from the store, RUNNING again). The
    resume replays nothing Tune finished, evaluates those trials from their last checkpoints,
    and gets the very numbers the workers had logged."""
    import sqlite3

    from sweeps.resume import DRIVER_TAG, find_resumable

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    spec = load_spec_text(LOST_EVALUATION_SWEEP, "lost.yaml", [f"tracking.uri={uri}"])
    outcome = run_sweep(spec, results_dir=tmp_path / "results")
    client = MlflowClient(uri)
    children = client.search_runs([outcome.experiment_id], f"tags.`{tags.ROLE}` = 'trial'")
    by_status = {c.data.tags[tags.TRIAL_STATUS]: c for c in children}
    assert {"completed", "stopped_early"} <= set(by_status), "the search must have both kinds of trial"
    lost = [by_status["completed"], by_status["stopped_early"]]
    before = {c.info.run_id: {k: v for k, v in c.data.metrics.items() if k.startswith("test_")} for c in lost}
    assert all(before.values())

    with sqlite3.connect(db) as con:  # what the dead worker never wrote
        for c in lost:
            for table in ("metrics", "latest_metrics"):
                con.execute(f"DELETE FROM {table} WHERE run_uuid = ? AND key LIKE 'test_%'", (c.info.run_id,))
    for c in lost:
        client.set_tag(c.info.run_id, tags.TRIAL_STATUS, "running")
        client.update_run(c.info.run_id, status="RUNNING")
    parent = outcome.parent_run_id
    client.set_tag(parent, tags.SWEEP_STATUS, "interrupted")
    client.set_tag(parent, DRIVER_TAG, "elsewhere:1")
    client.set_terminated(parent, status="KILLED")

    resumed = run_sweep(spec, resume=find_resumable(uri, spec.name))
    assert resumed.status == "completed"
    after = {c.info.run_id: c for c in client.search_runs([outcome.experiment_id], f"tags.`{tags.ROLE}` = 'trial'")}
    assert len(after) == len(children)
    for c in lost:
        run = after[c.info.run_id]
        assert run.info.status == "FINISHED" and tags.UNEVALUATED not in run.data.tags
        assert run.data.tags[tags.TRIAL_STATUS] == c.data.tags[tags.TRIAL_STATUS]
        assert run.data.tags.get(tags.STOPPED_EPOCH) == c.data.tags.get(tags.STOPPED_EPOCH)
        assert {k: v for k, v in run.data.metrics.items() if k.startswith("test_")} == before[c.info.run_id]
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_accuracy")]
        assert sorted(steps) == list(range(1, len(steps) + 1)), "no epoch logged twice"
