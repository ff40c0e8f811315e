"""A real two-node Ray cluster on loopback, an `mlflow server` on PostgreSQL, and an outage.

- A Ray head and a second node (`ray start --node-ip-address 127.0.0.1`, token auth on), one
  CPU each, so that two concurrent trials run one on each node.
- PostgreSQL from Debian's package (`.ci/run` installs it) under a private folder, and
  `mlflow server` on it with proxied artifacts: workers hold no store credentials.
- `sweep submit` through the Jobs API; without the token the same submission is refused.
- The MLflow server is stopped for 30 s while trials train; every epoch metric is there after.

Everything binds to 127.0.0.1 and is stopped by killing exactly the processes it started.
"""

from __future__ import annotations

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

from sweeps import jobs
from tests.servers import (
    RAY_ENV_KEYS,
    ROOT,
    MlflowServer,
    Postgres,
    free_port,
    gcs_address,
    ray_env,
    ray_start,
    stop_processes,
    wait_http,
)

pytestmark = pytest.mark.slow

TWO_NODE_SWEEP = """\
name: two-nodes
data: {dataset: digits}
metric: {name: val_accuracy, goal: maximize}
parameters:
  epochs: 25
  batch_size: 1            # ~10 s trials: the second node's worker is up before the first trial ends
  hidden_size: {values: [16, 32]}
search: {algorithm: grid}
resources: {cpus_per_trial: 1, max_concurrent_trials: 2}
tracking: {flush_seconds: 0}
"""

OUTAGE_EPOCHS = 100
OUTAGE_SWEEP = f"""\
name: outage
data: {{dataset: digits}}
metric: {{name: val_accuracy, goal: maximize}}
parameters:
  epochs: {OUTAGE_EPOCHS}
  hidden_size: 16
  batch_size: 2            # slow epochs (~0.2 s): the trials train through the outage
  lr: {{values: [0.01, 0.02]}}
  optimizer: sgd
search: {{algorithm: grid}}
resources: {{cpus_per_trial: 1, max_concurrent_trials: 2}}
tracking: {{flush_seconds: 1}}
"""
OUTAGE_SECONDS = 30


@dataclass
class Stack:
    address: str  # the Jobs API
    token: str
    server: MlflowServer
    postgres_uri: str
    node_ids: set[str]


def _alive_nodes(address: str, token: str) -> set[str]:
    import requests

    r = requests.get(f"{address}/api/v0/nodes", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    r.raise_for_status()
    nodes = r.json()["data"]["result"]["result"]  # Ray's state API
    return {n["node_id"] for n in nodes if n["state"] == "ALIVE"}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    base = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    base.chmod(0o755)
    token = secrets.token_hex(24)
    sessions: set[int] = set()
    postgres = Postgres(base / "pg")
    server: MlflowServer | None = None
    started = time.monotonic()
    try:
        postgres_uri = postgres.start()
        server = MlflowServer(base, postgres_uri)
        server_s = server.start()
        env = ray_env(token)
        dashboard = free_port()
        address = f"http://127.0.0.1:{dashboard}"
        sessions.add(ray_start(base, "head", env, num_cpus=1, dashboard_port=dashboard))
        wait_http(f"{address}/api/version", 180, "the Jobs API", base / "head-start.log",
                  headers={"Authorization": f"Bearer {token}"})
        sessions.add(ray_start(base, "node2", env, num_cpus=1, head_address=gcs_address(base, "head")))
        deadline = time.monotonic() + 60
        while len(nodes := _alive_nodes(address, token)) < 2:
            assert time.monotonic() < deadline, f"the second node did not join: alive {nodes}"
            time.sleep(0.5)
        print(f"\nPostgreSQL + mlflow server ({server_s:.1f} s) + 2 Ray nodes up in "
              f"{time.monotonic() - started:.1f} s")
        yield Stack(address, token, server, postgres_uri, nodes)
    finally:
        left = stop_processes(sessions, str(base))
        if server is not None:
            server.stop()
        postgres.stop()
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"processes of the test cluster still running: {sorted(left)}"


def _submit(stack: Stack, text: str, tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return jobs.submit(path, stack.address, token=stack.token, tracking_uri=stack.server.url)


def _runs(stack: Stack, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(stack.server.url)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_trials_run_on_both_nodes_into_the_postgres_backed_server(stack: Stack, tmp_path: Path) -> None:
    import psycopg

    from tracking import tags

    job_id = _submit(stack, TWO_NODE_SWEEP, tmp_path, "two-nodes")
    job = jobs.wait(job_id, stack.address, stack.token, timeout_s=420)
    assert job.status == "SUCCEEDED", job.message + "".join(jobs.logs(job_id, stack.address, stack.token))[-3000:]

    runs = _runs(stack, "two-nodes")
    parents = [r for r in runs if r.data.tags[tags.ROLE] == "parent"]
    children = [r for r in runs if r.data.tags[tags.ROLE] == "trial"]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags[tags.PARENT_RUN_ID] for c in children} == {parents[0].info.run_id}
    assert {c.data.tags[tags.TRIAL_STATUS] for c in children} == {"completed"}
    assert {c.info.status for c in children} == {"FINISHED"}
    used = {c.data.tags[tags.NODE_ID] for c in children}
    assert used == stack.node_ids, f"trials ran on {used}, the cluster's nodes are {stack.node_ids}"
    # the server's store is the PostgreSQL database: the runs are rows there
    with psycopg.connect(stack.postgres_uri) as conn, conn.cursor() as cur:
        cur.execute("select run_uuid from runs where status = 'FINISHED'")
        in_postgres = {row[0] for row in cur.fetchall()}
    assert {r.info.run_id for r in runs} <= in_postgres
    # artifacts went through the server (proxied), into its destination folder
    assert any(a.path == "plots" for a in _client(stack).list_artifacts(children[0].info.run_id))


def _client(stack: Stack):
    from mlflow import MlflowClient

    return MlflowClient(stack.server.url)


def test_submission_without_the_token_is_refused(stack: Stack, tmp_path: Path) -> None:
    """As a user's shell would run it: the `sweep` CLI in a fresh process, no token anywhere."""
    path = tmp_path / "two-nodes.yaml"
    path.write_text(TWO_NODE_SWEEP.replace("name: two-nodes", "name: no-token"))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in RAY_ENV_KEYS}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p))
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", "submit", str(path), "--address", stack.address],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == jobs.EXIT_AUTH, done.stdout + done.stderr
    assert "requires a token" in done.stdout + done.stderr
    assert _runs(stack, "no-token") == []


def test_mlflow_server_down_for_30_seconds_loses_no_epoch(stack: Stack, tmp_path: Path) -> None:
    from tracking import tags

    job_id = _submit(stack, OUTAGE_SWEEP, tmp_path, "outage")
    client = _client(stack)
    deadline = time.monotonic() + 300
    while True:  # both trials are training and have logged a few epochs
        training = [r for r in _runs(stack, "outage") if r.data.tags.get(tags.ROLE) == "trial"
                    and len(client.get_metric_history(r.info.run_id, "val_accuracy")) >= 3]
        if len(training) == 2:
            break
        job = jobs.get_job(job_id, stack.address, stack.token)
        assert not job.terminal, f"{job.status}: {job.message}"
        assert time.monotonic() < deadline, "the trials did not start training"
        time.sleep(0.5)

    down_at = time.time()
    stack.server.stop()
    time.sleep(OUTAGE_SECONDS)
    up_after = stack.server.start()
    up_at = time.time()
    print(f"\nmlflow server down for {up_at - down_at:.1f} s ({up_after:.1f} s of it restarting)")

    job = jobs.wait(job_id, stack.address, stack.token, timeout_s=600)
    assert job.status == "SUCCEEDED", job.message + "".join(jobs.logs(job_id, stack.address, stack.token))[-3000:]
    runs = _runs(stack, "outage")
    children = [r for r in runs if r.data.tags[tags.ROLE] == "trial"]
    assert len(children) == 2  # no duplicated run
    trained_during_outage = 0
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags[tags.TRIAL_STATUS] == "completed", run.data.tags
        for key in ("val_accuracy", "train_loss", "val_loss", "lr"):
            history = client.get_metric_history(run.info.run_id, key)
            steps = sorted(m.step for m in history)
            assert steps == list(range(1, OUTAGE_EPOCHS + 1)), f"{key}: {len(steps)} values, steps {steps[:5]}..."
        # metrics keep the time they were measured: some were measured while the server was down
        times = [m.timestamp / 1000 for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        trained_during_outage += sum(down_at + 1 < t < up_at - 1 for t in times)
        assert "test_accuracy" in run.data.metrics
    assert trained_during_outage > 0, "no epoch was trained while the server was down: the test proved nothing"
