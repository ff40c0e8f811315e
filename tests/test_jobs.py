"""Remote sweeps through Ray's Jobs API (`sweeps/jobs.py`).

The fast tests need no cluster. The `slow` ones start a real Ray head of their own, with
the dashboard on loopback, token authentication on (a fresh token, not ~/.ray/auth_token)
and a private --temp-dir, and stop exactly the processes it started: `ray stop` would stop
every Ray instance on the machine, other people's included.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from sweeps import jobs
from sweeps.jobs import (
    JobNotFoundError,
    JobsAuthError,
    JobsConnectionError,
    add_job_commands,
    build_entrypoint,
    resolve_token,
    submit,
)
from sweeps.validate import SpecError
from tests.servers import RAY_ENV_KEYS, free_port, ray_env, ray_start, stop_processes, wait_http

ROOT = Path(__file__).resolve().parent.parent

TINY_SWEEP = """\
name: jobs-tiny
trainer: mlp
data: {dataset: digits}
metric: {name: val_accuracy, goal: maximize}
parameters:
  epochs: 2
  hidden_size: {values: [16, 32]}
search: {algorithm: random, trials: 2, seed: 0}
resources: {cpus_per_trial: 1, max_concurrent_trials: 2}
tracking: {flush_seconds: 0}
"""

# Long enough to be stopped mid-way: each trial would take minutes.
LONG_SWEEP = TINY_SWEEP.replace("name: jobs-tiny", "name: jobs-stop").replace("epochs: 2", "epochs: 5000")

INVALID_SWEEP = """\
name: jobs-bad
parameters:
  lr: {distribution: log_uniform, min: 0.0, max: 0.1}
search: {trials: 2}
"""



def _parser(console: Console) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweep")
    add_job_commands(parser.add_subparsers(dest="command", required=True), console)
    return parser


def _cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    console = Console(file=out, width=240, color_system=None)
    args = _parser(console).parse_args(argv)
    return args.func(args), out.getvalue()


@pytest.fixture
def no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No token anywhere: no variables, and a HOME without ~/.ray/auth_token."""
    for key in RAY_ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


# ---- no cluster needed ------------------------------------------------------------------------
def test_token_sources_in_ray_order(no_token: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_token(None) == (None, "none")
    (no_token / ".ray").mkdir()
    (no_token / ".ray" / "auth_token").write_text("from-home\n")
    assert resolve_token(None) == ("from-home", str(no_token / ".ray" / "auth_token"))
    token_file = tmp_path / "token"
    token_file.write_text("  from-path ")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert resolve_token(None) == ("from-path", "$RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert resolve_token(None) == ("from-env", "$RAY_AUTH_TOKEN")
    assert resolve_token("from-flag") == ("from-flag", "--token")


def test_entrypoint_quotes_each_override() -> None:
    assert build_entrypoint("my sweep.yaml", ["search.trials=4", "parameters.lr={values: [0.1, 0.2]}"]) == (
        "sweep run 'my sweep.yaml' --set search.trials=4 --set 'parameters.lr={values: [0.1, 0.2]}'"
    )
    job_id = jobs.new_job_id("quickstart")
    assert job_id.startswith("sweep-quickstart-") and len(job_id.split("-")) == 5


def test_invalid_sweep_is_refused_before_contacting_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the Jobs API was contacted for an invalid sweep file")

    monkeypatch.setattr(jobs, "connect", never)
    monkeypatch.setattr(jobs, "_check_listening", never)
    bad = tmp_path / "bad.yaml"
    bad.write_text(INVALID_SWEEP)
    with pytest.raises(SpecError, match=r"bad\.yaml:3: parameters\.lr.*min > 0"):
        submit(bad, "http://127.0.0.1:9")
    good = tmp_path / "tiny.yaml"
    good.write_text(TINY_SWEEP)
    with pytest.raises(SpecError, match=r"search\.trials.*from --set"):
        submit(good, "http://127.0.0.1:9", overrides=["search.trials=0"])
    with pytest.raises(ValueError, match="PYTHONPATH"):
        submit(good, "http://127.0.0.1:9", extra_env={"PYTHONPATH": "/src"})
    code, text = _cli(["submit", str(bad), "--address", "http://127.0.0.1:9"])
    assert code == jobs.EXIT_INVALID and "min > 0" in text


def test_dead_address_is_a_connection_error(tmp_path: Path) -> None:
    good = tmp_path / "tiny.yaml"
    good.write_text(TINY_SWEEP)
    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(JobsConnectionError, match=f"cannot reach the Ray Jobs API at {address}"):
        submit(good, address, token="t")
    with pytest.raises(JobsConnectionError, match=address):
        jobs.list_jobs(address)
    code, text = _cli(["list", "--address", address])
    assert code == jobs.EXIT_UNREACHABLE and address in text


def test_commands_and_default_address(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in RAY_ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    assert jobs.default_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert jobs.default_address() == "http://head:8265"
    parser = _parser(Console(file=io.StringIO()))
    args = parser.parse_args(["submit", "s.yaml", "--set", "a=1", "--set", "b=2", "--token", "T"])
    assert (args.file, args.set, args.token, args.address) == ("s.yaml", ["a=1", "b=2"], "T", None)
    assert parser.parse_args(["status"]).job is None
    assert parser.parse_args(["logs", "J", "--follow"]).follow is True
    assert parser.parse_args(["stop", "J", "--address", "http://x:1"]).address == "http://x:1"
    assert callable(parser.parse_args(["list"]).func)
    with pytest.raises(SystemExit):
        parser.parse_args(["logs"])  # JOB is required


# ---- a real Ray head ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Cluster:
    address: str
    token: str
    tracking_uri: str
    db: Path


@pytest.fixture(scope="module")
def cluster(_empty_store: Path) -> Iterator[Cluster]:
    """A Ray head with the dashboard on 127.0.0.1 and token auth, used by this module only."""
    base = Path(tempfile.mkdtemp(prefix="rj-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    db = base / "mlflow.db"
    shutil.copyfile(_empty_store, db)
    token = secrets.token_hex(24)
    dashboard = free_port()
    started = time.monotonic()
    sessions: set[int] = set()
    address = f"http://127.0.0.1:{dashboard}"
    try:
        sessions.add(ray_start(base, "ray", ray_env(token), num_cpus=2, dashboard_port=dashboard))
        # ray start returns once the head is up; the Jobs API may lag a little
        wait_http(f"{address}/api/version", 180, "the Jobs API", base / "ray-start.log",
                  headers={"Authorization": f"Bearer {token}"})
        print(f"\nray head at {address} up in {time.monotonic() - started:.1f} s")
        yield Cluster(address, token, f"sqlite:///{db}", db)
    finally:
        left = stop_processes(sessions, str(base))
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"processes of the test cluster still running: {sorted(left)}"


@pytest.fixture(scope="module")
def tiny_job(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, float]:
    """The tiny sweep submitted with the right token, run to its end."""
    path = tmp_path_factory.mktemp("jobs") / "tiny.yaml"
    path.write_text(TINY_SWEEP)
    started = time.monotonic()
    job_id = submit(path, cluster.address, token=cluster.token, tracking_uri=cluster.tracking_uri)
    job = jobs.wait(job_id, cluster.address, cluster.token, timeout_s=300)
    elapsed = time.monotonic() - started
    print(f"\njob {job_id}: {job.status} in {elapsed:.1f} s")
    return job_id, elapsed


@pytest.mark.slow
def test_submitted_sweep_succeeds_and_records_its_runs(cluster: Cluster, tiny_job: tuple[str, float]) -> None:
    from mlflow import MlflowClient

    from tracking import tags

    job_id, _ = tiny_job
    job = jobs.get_job(job_id, cluster.address, cluster.token)
    assert job_id.startswith("sweep-jobs-tiny-")
    assert job.status == "SUCCEEDED", job.message
    assert job.sweep_name == "jobs-tiny" and job.metadata[jobs.META_TRACKING_URI] == cluster.tracking_uri
    assert job.entrypoint == "sweep run tiny.yaml"
    assert job.env_vars["MLFLOW_TRACKING_URI"] == cluster.tracking_uri

    text = "".join(jobs.logs(job_id, cluster.address, cluster.token))
    assert "sweep 'jobs-tiny' completed" in text and "2 completed" in text

    client = MlflowClient(cluster.tracking_uri)
    experiment = client.get_experiment_by_name("jobs-tiny")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{tags.SWEEP_NAME}` = 'jobs-tiny'")
    parents = [r for r in runs if r.data.tags[tags.ROLE] == "parent"]
    children = [r for r in runs if r.data.tags[tags.ROLE] == "trial"]
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].data.tags[tags.SWEEP_STATUS] == "completed"
    assert {c.data.tags[tags.TRIAL_STATUS] for c in children} == {"completed"}
    assert {c.data.tags[tags.PARENT_RUN_ID] for c in children} == {parents[0].info.run_id}


@pytest.mark.slow
def test_status_list_and_follow(cluster: Cluster, tiny_job: tuple[str, float]) -> None:
    job_id, _ = tiny_job
    report = jobs.status(job_id, cluster.address, cluster.token)
    p = report.progress
    assert p is not None, report.progress_note
    assert (p.completed, p.running, p.stopped_early, p.failed, p.total) == (2, 0, 0, 0, 2)
    assert p.sweep_status == "completed" and p.metric == "val_accuracy" and p.goal == "maximize"
    assert p.best_value is not None and 0.0 < p.best_value <= 1.0
    assert jobs.status("jobs-tiny", cluster.address, cluster.token).job.job_id == job_id  # by sweep name

    assert job_id in [j.job_id for j in jobs.list_jobs(cluster.address, cluster.token)]
    followed = "".join(jobs.logs(job_id, cluster.address, cluster.token, follow=True))
    assert "sweep 'jobs-tiny' completed" in followed

    code, text = _cli(["status", job_id, "--address", cluster.address, "--token", cluster.token])
    assert code == 0 and "SUCCEEDED" in text and "completed 2" in text and "best val_accuracy" in text
    code, text = _cli(["list", "--address", cluster.address, "--token", cluster.token])
    assert code == 0 and job_id[:20] in text
    code, text = _cli(["stop", job_id, "--address", cluster.address, "--token", cluster.token])
    assert code == 0 and "already ended (SUCCEEDED)" in text
    with pytest.raises(JobNotFoundError, match="sweep-nope"):
        jobs.stop("sweep-nope", cluster.address, cluster.token)


@pytest.mark.slow
def test_wrong_token_is_rejected(cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SWEEP)
    with pytest.raises(JobsAuthError, match=r"the token was rejected \(401/403\).*HTTP 403.*--token"):
        submit(path, cluster.address, token="not-" + cluster.token)
    code, text = _cli(["list", "--address", cluster.address, "--token", "wrong"])
    assert code == jobs.EXIT_AUTH and "the token was rejected" in text


@pytest.mark.slow
def test_missing_token_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    """As a user's shell would run it: a fresh process, no token variable, no ~/.ray/auth_token.

    (In this process an earlier `ray.init()` may have switched Ray's own token mode on, and
    Ray would then send ~/.ray/auth_token by itself.)
    """
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SWEEP)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in RAY_ENV_KEYS}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p))
    script = (
        "import argparse, sys\n"
        "from rich.console import Console\n"
        "from sweeps.jobs import add_job_commands\n"
        "p = argparse.ArgumentParser(prog='sweep')\n"
        "add_job_commands(p.add_subparsers(dest='command', required=True), Console(stderr=True, width=400))\n"
        "a = p.parse_args(sys.argv[1:])\n"
        "sys.exit(a.func(a))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, "submit", str(path), "--address", cluster.address],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == jobs.EXIT_AUTH, done.stderr
    assert (f"the Ray cluster at {cluster.address} requires a token: set RAY_AUTH_TOKEN or pass --token"
            in done.stderr), done.stderr
    assert done.stdout == ""  # no job id: nothing was submitted


@pytest.mark.slow
def test_stop_interrupts_the_sweep(cluster: Cluster, tiny_job: tuple[str, float], tmp_path: Path) -> None:
    """`stop` sends SIGINT: the sweep closes its runs like Ctrl-C instead of leaving them RUNNING."""
    from mlflow import MlflowClient

    from tracking import tags

    path = tmp_path / "long.yaml"
    path.write_text(LONG_SWEEP)
    job_id = submit(path, cluster.address, token=cluster.token, tracking_uri=cluster.tracking_uri)
    deadline = time.monotonic() + 180
    while True:  # stop it once a trial is training
        report = jobs.status(job_id, cluster.address, cluster.token)
        if report.progress is not None and report.progress.running >= 1:
            break
        assert not report.job.terminal, f"{report.job.status}: {report.job.message}"
        assert time.monotonic() < deadline, f"no trial started: {report.progress_note}"
        time.sleep(1.0)
    assert jobs.stop(job_id, cluster.address, cluster.token) is True
    job = jobs.wait(job_id, cluster.address, cluster.token, timeout_s=120)
    assert job.status == "STOPPED"

    client = MlflowClient(cluster.tracking_uri)
    experiment = client.get_experiment_by_name("jobs-stop")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags[tags.ROLE] == "parent")
    assert parent.data.tags[tags.SWEEP_STATUS] == "interrupted" and parent.info.status == "KILLED"
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
