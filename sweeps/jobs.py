"""Remote sweeps: submit a sweep file to a Ray cluster as a Ray Job, and follow it.

This wraps Ray's Jobs API (:class:`ray.job_submission.JobSubmissionClient`, which needs
``ray[default]``); there is no scheduler or server of our own. A submission:

1. validates the sweep file here (:func:`sweeps.validate.load_spec`), so an invalid file
   raises :class:`~sweeps.validate.SpecError` before anything is contacted;
2. copies the file alone into a temporary directory that becomes the job's
   ``runtime_env["working_dir"]`` (the cluster image has this package installed);
3. submits the entrypoint ``sweep run <file> [--set K=V ...]`` under the submission id
   ``sweep-<name>-<YYYYmmdd-HHMMSS>-<4 hex>``, with job metadata ``{"sweep.name": name}``,
   and ``MLFLOW_TRACKING_URI`` in ``runtime_env["env_vars"]`` when it is known here, plus
   ``RAY_JOB_STOP_SIGNAL=SIGINT`` so that :func:`stop` interrupts the sweep like Ctrl-C.

Token authentication (Ray 2.60 turns it on for local clusters). The dashboard answers 401
without an ``Authorization: Bearer <token>`` header and 403 for a wrong token.
``JobSubmissionClient`` adds that header by itself only in a process where Ray's own
token mode is on (``RAY_AUTH_MODE=token``), so this module always sends it explicitly,
taking the token from, in order: the ``token`` argument (``--token``), ``$RAY_AUTH_TOKEN``,
the file named by ``$RAY_AUTH_TOKEN_PATH``, and ``~/.ray/auth_token`` (the file that
``ray.init()`` writes for a new local cluster and ``ray get-auth-token --generate`` creates).
These are the sources, in the same order, that Ray's own token loader reads.

Library code logs with :mod:`logging`; only :func:`add_job_commands`'s handlers print (rich).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sweeps.validate import SpecError, load_spec

if TYPE_CHECKING:  # the Jobs SDK and MLflow are imported only when a command needs them
    from ray.job_submission import JobDetails, JobSubmissionClient
    from rich.console import Console

logger = logging.getLogger(__name__)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # the dashboard's (Jobs API's) default address
JOB_PREFIX = "sweep-"  # every submission id this module creates starts with it
ENTRYPOINT_COMMAND = "sweep"  # the console script installed with this package on the cluster
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
META_NAME = "sweep.name"  # job metadata: the sweep's name
META_FILE = "sweep.file"  # job metadata: the sweep file's name in the job's working_dir
META_TRACKING_URI = "sweep.tracking_uri"  # job metadata: where the job records its runs, when known
CONNECT_TIMEOUT_S = 5.0  # TCP check before any HTTP request: a dead address fails fast
# ray.init() inside the job sets PYTHONPATH in its own runtime_env; Ray refuses to merge a job
# runtime_env that sets the same variable.
RESERVED_ENV = frozenset({"PYTHONPATH"})
# Read by the job's supervisor (it gets the job's env_vars): `stop` then sends SIGINT, which
# `sweep run` handles like Ctrl-C (open trial runs closed, parent marked interrupted), and
# waits this long before SIGKILL. Ray's defaults are SIGTERM and 3 s: runs would stay RUNNING.
STOP_ENV = {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "60"}

EXIT_FAILED = 1  # the job failed or was stopped (logs --follow), or the Jobs API refused a request
EXIT_INVALID = 2  # the sweep file or a --set is invalid: nothing was contacted (as in `sweep run`)
EXIT_AUTH = 3  # the cluster requires a token, or refused the one given
EXIT_UNREACHABLE = 4  # nothing answers at the address
EXIT_INTERRUPTED = 130


# ---- errors -----------------------------------------------------------------------------------
class JobsError(RuntimeError):
    """A request to the Ray Jobs API failed."""


class JobsAuthError(JobsError):
    """The cluster requires a token (HTTP 401) or rejected the one sent (HTTP 403)."""


class JobsConnectionError(JobsError):
    """Nothing answers at the address (no Ray dashboard / Jobs API there)."""


class JobNotFoundError(JobsError):
    """The cluster has no job with that submission id (or no sweep job of that name)."""


# ---- results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepJob:
    """One sweep job on the cluster, as the Jobs API reports it."""

    job_id: str  # the submission id, e.g. sweep-quickstart-20261122-021500-a1b2
    sweep_name: str | None
    status: str  # PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED
    start_time: float | None  # seconds since the epoch
    end_time: float | None
    entrypoint: str
    message: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in ("STOPPED", "SUCCEEDED", "FAILED")

    @property
    def duration_s(self) -> float | None:
        if self.start_time is None:
            return None
        return (self.end_time or time.time()) - self.start_time


@dataclass(frozen=True)
class SweepProgress:
    """The sweep's trials as recorded in MLflow (the newest execution of the sweep)."""

    tracking_uri: str
    experiment_id: str
    sweep_id: str
    parent_run_id: str
    sweep_status: str  # running | completed | interrupted | failed
    metric: str | None
    goal: str | None
    total: int | None  # planned trials of the search, when the parent records it
    completed: int
    running: int
    stopped_early: int
    failed: int
    best_value: float | None
    best_run_id: str | None

    @property
    def done(self) -> int:
        """Trials that ended, whatever their outcome."""
        return self.completed + self.stopped_early + self.failed


@dataclass(frozen=True)
class SweepStatus:
    """:func:`status`'s answer: the job, and the trials when the MLflow store is reachable."""

    job: SweepJob
    progress: SweepProgress | None
    progress_note: str | None  # why ``progress`` is None


# ---- token and address ------------------------------------------------------------------------
def default_address() -> str:
    """``$RAY_API_SERVER_ADDRESS`` (as ``ray job`` reads it), else ``$RAY_ADDRESS``, else
    ``http://127.0.0.1:8265``."""
    return os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def default_token_path() -> Path:
    """Ray's default token file, ``~/.ray/auth_token``."""
    return Path.home() / ".ray" / "auth_token"


def resolve_token(token: str | None = None) -> tuple[str | None, str]:
    """The token to send and where it came from (for messages; never the token itself).

    Order: ``token`` (``--token``), ``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH``,
    ``~/.ray/auth_token``. Returns ``(None, "none")`` when none is set.

    Example:
        >>> resolve_token("abc")
        ('abc', '--token')
    """
    if token and token.strip():
        return token.strip(), "--token"
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env, f"${TOKEN_ENV}"
    path_env = os.environ.get(TOKEN_PATH_ENV, "").strip()
    candidates = [(Path(path_env).expanduser(), f"${TOKEN_PATH_ENV}")] if path_env else []
    candidates.append((default_token_path(), str(default_token_path())))
    for path, source in candidates:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            if source.startswith("$"):
                logger.warning("%s=%s: cannot read the token file (%s)", TOKEN_PATH_ENV, path, e.strerror or e)
            continue
        if text:
            return text, source
    return None, "none"


def _check_listening(address: str) -> None:
    """Fail fast, naming the address, when no TCP server accepts connections there."""
    parts = urlsplit(address if "://" in address else f"http://{address}")
    if parts.scheme not in ("http", "https"):
        raise JobsError(
            f"address {address!r}: the Jobs API needs the dashboard's http(s) address, "
            f"e.g. {DEFAULT_ADDRESS} (not a {parts.scheme}:// address)"
        )
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise JobsError(f"address {address!r}: the port is not a number") from None
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise JobsConnectionError(
            f"cannot reach the Ray Jobs API at {address}: {e.strerror or e}; is a Ray head with the "
            f"dashboard running there (ray start --head --include-dashboard true --dashboard-port ...)?"
        ) from None


@contextmanager
def _translated(address: str, token_source: str, what: str) -> Iterator[None]:
    """Turn the Jobs SDK's exceptions into :class:`JobsError` subclasses that name the address."""
    import aiohttp
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as e:
        raise _auth_error(address, token_source, 401 if "required" in str(e).lower() else 403) from None
    except aiohttp.WSServerHandshakeError as e:
        if e.status in (401, 403):
            raise _auth_error(address, token_source, e.status) from None
        raise JobsError(f"{what} at {address} failed: HTTP {e.status} {e.message}") from None
    except (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            aiohttp.ClientConnectionError) as e:
        raise JobsConnectionError(f"cannot reach the Ray Jobs API at {address} ({what}): {e}") from None
    except RuntimeError as e:
        if isinstance(e, JobsError):
            raise
        text = str(e)
        if "404" in text or "does not exist" in text:
            raise JobNotFoundError(f"{what}: no such job at {address}") from None
        raise JobsError(f"{what} at {address} failed: {text}") from None


def _auth_error(address: str, token_source: str, status: int) -> JobsAuthError:
    if token_source == "none":
        return JobsAuthError(
            f"the Ray cluster at {address} requires a token: set {TOKEN_ENV} or pass --token "
            f"(HTTP {status}; no token was found in --token, ${TOKEN_ENV}, ${TOKEN_PATH_ENV} "
            f"or {default_token_path()})"
        )
    return JobsAuthError(
        f"the token was rejected (401/403) by the Ray cluster at {address}: HTTP {status} for the "
        f"token from {token_source}; use the cluster's token (on the head node: ray get-auth-token)"
    )


@dataclass
class _Connection:
    client: JobSubmissionClient
    address: str
    token_source: str

    @contextmanager
    def call(self, what: str) -> Iterator[None]:
        with _translated(self.address, self.token_source, what):
            yield


def connect(address: str | None = None, token: str | None = None) -> _Connection:
    """A Jobs API client for ``address`` that sends the resolved token.

    Raises :class:`JobsConnectionError` when nothing listens there and :class:`JobsAuthError`
    when the cluster wants a token and none (or a wrong one) was found.
    """
    from ray.job_submission import JobSubmissionClient

    address = (address or default_address()).rstrip("/")
    secret, source = resolve_token(token)
    _check_listening(address)
    headers = {"Authorization": f"Bearer {secret}"} if secret else None
    logger.debug("connecting to the Jobs API at %s (token from %s)", address, source)
    with _translated(address, source, "connecting"):
        client = JobSubmissionClient(address, headers=headers)
    return _Connection(client, address, source)


# ---- submission -------------------------------------------------------------------------------
def new_job_id(name: str) -> str:
    """``sweep-<name>-<YYYYmmdd-HHMMSS>-<4 hex>``: sortable, and unique within a second."""
    return f"{JOB_PREFIX}{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def build_entrypoint(file_name: str, overrides: Sequence[str] = ()) -> str:
    """The job's shell command: ``sweep run <file> [--set K=V ...]``, each word quoted.

    Example:
        >>> build_entrypoint("demo.yaml", ["search.trials=4", "parameters.lr={values: [0.1]}"])
        "sweep run demo.yaml --set search.trials=4 --set 'parameters.lr={values: [0.1]}'"
    """
    words = [ENTRYPOINT_COMMAND, "run", file_name]
    for item in overrides:
        words += ["--set", item]
    return shlex.join(words)


def _is_local_relative(uri: str) -> bool:
    return (uri.startswith("sqlite:///") and not uri.startswith("sqlite:////")) or "://" not in uri


def _job_env(tracking_uri: str | None, extra_env: Mapping[str, str] | None) -> dict[str, str]:
    env: dict[str, str] = dict(STOP_ENV)
    for key, value in (extra_env or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"extra_env[{key!r}] = {value!r}: environment variables must be strings")
        if key in RESERVED_ENV:
            raise ValueError(
                f"extra_env[{key!r}]: {key} is set by `sweep run` itself on the cluster, and Ray refuses "
                "a job runtime_env that sets the same variable; install the code on the cluster instead"
            )
        env[key] = value
    uri = tracking_uri or env.get("MLFLOW_TRACKING_URI") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if _is_local_relative(uri):
            from tracking import resolve_tracking_uri  # imports MLflow: only for this case

            absolute = resolve_tracking_uri(uri)
            logger.warning("MLFLOW_TRACKING_URI=%s is relative: sending %s (the cluster must see that path)",
                           uri, absolute)
            uri = absolute
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def submit(
    file: str | Path,
    address: str | None = None,
    overrides: Sequence[str] = (),
    token: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    *,
    tracking_uri: str | None = None,
) -> str:
    """Validate ``file`` here, then run it on the Ray cluster at ``address`` as a Ray Job.

    Returns the submission id (``sweep-<name>-<timestamp>-<hex>``). ``overrides`` are
    ``--set`` items, validated here and passed on. ``tracking_uri`` (else
    ``extra_env["MLFLOW_TRACKING_URI"]``, else ``$MLFLOW_TRACKING_URI``) is passed to the job
    as ``MLFLOW_TRACKING_URI``; a ``tracking.uri`` in the file still wins on the cluster.

    Raises :class:`SpecError` (before contacting anything), :class:`JobsAuthError`,
    :class:`JobsConnectionError` or :class:`JobsError`.
    """
    path = Path(file)
    spec = load_spec(path, list(overrides))  # SpecError: nothing was contacted
    env = _job_env(tracking_uri, extra_env)
    effective_uri = spec.tracking.uri or env.get("MLFLOW_TRACKING_URI")
    if effective_uri is None or _is_local_relative(effective_uri):
        logger.warning(
            "sweep %r: tracking URI %r is a relative local store: on the cluster it resolves inside the "
            "job's temporary working directory; set MLFLOW_TRACKING_URI (or tracking.uri) to a server "
            "or an absolute path the cluster shares", spec.name, effective_uri or "sqlite:///mlflow.db",
        )
    metadata = {META_NAME: spec.name, META_FILE: path.name}
    if effective_uri:
        metadata[META_TRACKING_URI] = effective_uri
    job_id = new_job_id(spec.name)
    entrypoint = build_entrypoint(path.name, overrides)

    conn = connect(address, token)
    workdir = Path(tempfile.mkdtemp(prefix="sweep-job-"))
    try:
        shutil.copyfile(path, workdir / path.name)
        runtime_env: dict[str, Any] = {"working_dir": str(workdir)}
        runtime_env["env_vars"] = env
        with conn.call(f"submitting sweep {spec.name!r}"):
            submitted = conn.client.submit_job(
                entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env, metadata=metadata,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    logger.info("submitted sweep %r to %s as job %s: %s", spec.name, conn.address, submitted, entrypoint)
    return submitted


# ---- queries ----------------------------------------------------------------------------------
def _ms(value: Any) -> float | None:
    return None if value in (None, 0) else float(value) / 1000.0


def _job(details: JobDetails) -> SweepJob:
    status = getattr(details.status, "value", str(details.status))
    metadata = dict(details.metadata or {})
    env_vars = dict((details.runtime_env or {}).get("env_vars") or {})
    job_id = details.submission_id or details.job_id or ""
    return SweepJob(
        job_id=job_id, sweep_name=metadata.get(META_NAME), status=str(status),
        start_time=_ms(details.start_time), end_time=_ms(details.end_time), entrypoint=details.entrypoint,
        message=details.message, metadata=metadata, env_vars=env_vars,
    )


def list_jobs(address: str | None = None, token: str | None = None, name: str | None = None) -> list[SweepJob]:
    """Our sweep jobs on the cluster (submission ids starting ``sweep-``), newest first.

    ``name`` keeps only the jobs of that sweep.
    """
    conn = connect(address, token)
    with conn.call("listing jobs"):
        details = conn.client.list_jobs()
    jobs = [_job(d) for d in details if (d.submission_id or "").startswith(JOB_PREFIX)]
    if name is not None:
        jobs = [j for j in jobs if j.sweep_name == name]
    return sorted(jobs, key=lambda j: j.start_time or 0.0, reverse=True)


def get_job(job_id: str, address: str | None = None, token: str | None = None) -> SweepJob:
    """One job by submission id. Raises :class:`JobNotFoundError` when the cluster has none."""
    conn = connect(address, token)
    with conn.call(f"job {job_id!r}"):
        return _job(conn.client.get_job_info(job_id))


def find_job(ref: str | None, address: str | None = None, token: str | None = None) -> SweepJob:
    """A job by submission id, else the newest job of the sweep named ``ref``, else (``ref``
    None) the newest sweep job."""
    jobs = list_jobs(address, token)
    if ref is None:
        if not jobs:
            raise JobNotFoundError(f"no sweep jobs (submission ids starting {JOB_PREFIX!r}) at "
                                   f"{(address or default_address())}")
        return jobs[0]
    for job in jobs:
        if job.job_id == ref:
            return job
    named = [j for j in jobs if j.sweep_name == ref]
    if named:
        return named[0]
    if not ref.startswith(JOB_PREFIX):  # a job submitted some other way: ask for it by id
        try:
            return get_job(ref, address, token)
        except JobNotFoundError:
            pass
    raise JobNotFoundError(f"{ref!r}: no sweep job with that id and no sweep of that name at "
                           f"{(address or default_address())}")


def status(job_id: str | None, address: str | None = None, token: str | None = None,
           tracking_uri: str | None = None) -> SweepStatus:
    """The job's status and, when its MLflow store is reachable from here, its trials.

    ``job_id`` may also be a sweep name (its newest job) or None (the newest sweep job).
    The store is ``tracking_uri``, else the one recorded at submission (job metadata or the
    job's ``MLFLOW_TRACKING_URI``), else ``$MLFLOW_TRACKING_URI``. The trials are those of the
    newest execution (``sweep.id``) of the sweep that started after the job did.
    """
    job = find_job(job_id, address, token)
    uri = (tracking_uri or job.metadata.get(META_TRACKING_URI) or job.env_vars.get("MLFLOW_TRACKING_URI")
           or os.environ.get("MLFLOW_TRACKING_URI"))
    if not job.sweep_name:
        return SweepStatus(job, None, "the job has no sweep.name metadata: it was not submitted by `sweep submit`")
    if not uri:
        return SweepStatus(job, None, "no MLflow tracking URI is known: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    problem = _store_unreachable(uri)
    if problem:
        return SweepStatus(job, None, problem)
    try:
        progress = sweep_progress(uri, job.sweep_name, since=job.start_time)
    except Exception as e:  # noqa: BLE001 - any store failure only hides the trial counts
        logger.debug("reading the MLflow store %s failed", uri, exc_info=True)
        return SweepStatus(job, None, f"MLflow store {uri} could not be read: {type(e).__name__}: {e}")
    if progress is None:
        return SweepStatus(job, None, f"no parent run of sweep {job.sweep_name!r} in {uri} since the job started")
    return SweepStatus(job, progress, None)


def _store_unreachable(uri: str) -> str | None:
    """Why the store can't be read from here, without creating it or waiting on retries."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_absolute() or not path.exists():
            return f"MLflow store {uri}: no such SQLite file on this machine"
    elif uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=CONNECT_TIMEOUT_S)
        except requests.exceptions.RequestException as e:
            return f"MLflow server {uri} is not reachable: {type(e).__name__}"
    elif "://" not in uri and not Path(uri).exists():
        return f"MLflow store {uri}: no such path on this machine"
    return None


def sweep_progress(uri: str, sweep_name: str, since: float | None = None) -> SweepProgress | None:
    """Trial counts and the best metric of the newest execution of ``sweep_name`` in ``uri``.

    The best value follows ``sweep run``: the best *completed* trial, else the best value any
    trial reported. Returns None when no parent run (started at or after ``since``) exists.
    """
    from tracking import client_for, tags

    client = client_for(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    parents = client.search_runs(
        experiments,
        filter_string=f"tags.`{tags.SWEEP_NAME}` = '{sweep_name}' and tags.`{tags.ROLE}` = 'parent'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if not parents:
        return None
    parent = parents[0]
    if since is not None and parent.info.start_time < since * 1000 - 1000:
        return None
    sweep_id = parent.data.tags.get(tags.SWEEP_ID, "")
    trials = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{tags.SWEEP_ID}` = '{sweep_id}' and tags.`{tags.ROLE}` = 'trial'",
        max_results=50000,
    )
    counts = {tags.COMPLETED: 0, tags.STOPPED_EARLY: 0, tags.FAILED: 0, tags.RUNNING: 0}
    for run in trials:
        state = run.data.tags.get(tags.TRIAL_STATUS, tags.RUNNING)
        counts[state] = counts.get(state, 0) + 1
    metric, _, goal = parent.data.tags.get(tags.METRIC, "").partition(":")
    best_value, best_run = None, None
    if metric:
        sign = -1.0 if goal == "minimize" else 1.0
        scored = [(r.data.metrics[metric], r) for r in trials if metric in r.data.metrics]
        pool = [x for x in scored if x[1].data.tags.get(tags.TRIAL_STATUS) == tags.COMPLETED] or scored
        if pool:
            best_value, run = max(pool, key=lambda x: sign * x[0])
            best_run = run.info.run_id
    total = parent.data.params.get("search.trials")
    return SweepProgress(
        tracking_uri=uri, experiment_id=parent.info.experiment_id, sweep_id=sweep_id,
        parent_run_id=parent.info.run_id, sweep_status=parent.data.tags.get(tags.SWEEP_STATUS, "running"),
        metric=metric or None, goal=goal or None, total=int(total) if total and total.isdigit() else None,
        completed=counts[tags.COMPLETED], running=counts[tags.RUNNING], stopped_early=counts[tags.STOPPED_EARLY],
        failed=counts[tags.FAILED], best_value=best_value, best_run_id=best_run,
    )


def logs(job_id: str, address: str | None = None, token: str | None = None, follow: bool = False) -> Iterator[str]:
    """The job's logs: one chunk with everything so far, or (``follow``) chunks as the driver
    writes them until the job ends (Ray's ``tail_job_logs`` websocket).

    Connects and checks that the job exists before returning, so auth, connection and
    not-found errors are raised here rather than on the first iteration.
    """
    conn = connect(address, token)
    with conn.call(f"job {job_id!r}"):
        conn.client.get_job_status(job_id)
    if not follow:
        with conn.call(f"logs of job {job_id!r}"):
            return iter([conn.client.get_job_logs(job_id)])
    return _follow(conn, job_id)


def _follow(conn: _Connection, job_id: str) -> Iterator[str]:
    """Drive ``tail_job_logs`` (an async generator) from synchronous code."""
    loop = asyncio.new_event_loop()
    stream = conn.client.tail_job_logs(job_id)
    try:
        while True:
            with conn.call(f"following the logs of job {job_id!r}"):
                try:
                    chunk = loop.run_until_complete(stream.__anext__())
                except StopAsyncIteration:
                    return
            yield chunk
    finally:
        try:
            loop.run_until_complete(stream.aclose())
        except Exception:  # noqa: BLE001 - closing a broken websocket
            logger.debug("closing the log stream of %s failed", job_id, exc_info=True)
        loop.close()


def stop(job_id: str, address: str | None = None, token: str | None = None) -> bool:
    """Ask the cluster to stop the job (SIGINT to the driver, set at submission, which closes its MLflow runs).

    Returns False when the job had already ended.
    """
    conn = connect(address, token)
    with conn.call(f"stopping job {job_id!r}"):
        stopped = bool(conn.client.stop_job(job_id))
    logger.info("stop of job %s at %s: %s", job_id, conn.address, "requested" if stopped else "already ended")
    return stopped


def wait(job_id: str, address: str | None = None, token: str | None = None, timeout_s: float = 600.0,
         poll_s: float = 1.0) -> SweepJob:
    """Poll until the job ends; raises :class:`TimeoutError` after ``timeout_s``."""
    conn = connect(address, token)
    deadline = time.monotonic() + timeout_s
    while True:
        with conn.call(f"job {job_id!r}"):
            job = _job(conn.client.get_job_info(job_id))
        if job.terminal:
            return job
        if time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id} at {conn.address} still {job.status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


# ---- command line -----------------------------------------------------------------------------
def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.0f}s"


_STATUS_STYLE = {"SUCCEEDED": "green", "FAILED": "red", "STOPPED": "yellow", "RUNNING": "cyan", "PENDING": "dim"}


def _handled(console: Console, fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a handler; print a Jobs or spec error in red and return its exit code."""
    from rich.text import Text

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except SpecError as e:
            console.print(Text(str(e), style="red"))
            return EXIT_INVALID
        except JobsAuthError as e:
            console.print(Text(f"error: {e}", style="red"))
            return EXIT_AUTH
        except JobsConnectionError as e:
            console.print(Text(f"error: {e}", style="red"))
            return EXIT_UNREACHABLE
        except (JobsError, ValueError) as e:
            console.print(Text(f"error: {e}", style="red"))
            return EXIT_FAILED
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED

    return run


def add_job_commands(subparsers: Any, console: Console) -> None:
    """Register ``submit``, ``status``, ``logs``, ``stop`` and ``list`` on ``sweep``'s subparsers.

    Human-readable output goes to ``console``; data meant for scripts (the new job id, the
    job's logs) goes to stdout.
    """
    from rich.table import Table
    from rich.text import Text

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default=None,
                       help=f"the Ray dashboard (Jobs API) address (default: $RAY_API_SERVER_ADDRESS, "
                            f"$RAY_ADDRESS, else {DEFAULT_ADDRESS})")
        p.add_argument("--token", default=None,
                       help=f"the cluster's auth token (default: ${TOKEN_ENV}, ${TOKEN_PATH_ENV}, "
                            f"~/.ray/auth_token); prefer the variable: arguments show in `ps`")

    def cmd_submit(args: argparse.Namespace) -> int:
        job_id = submit(args.file, args.address, args.set, token=args.token, tracking_uri=args.tracking_uri)
        address = (args.address or default_address()).rstrip("/")
        console.print(f"[green]submitted[/green] {args.file} to {address} as job [bold]{job_id}[/bold]")
        console.print(f"follow it with: sweep logs {job_id} --follow --address {address}")
        print(job_id)
        return 0

    def cmd_status(args: argparse.Namespace) -> int:
        report = status(args.job, args.address, args.token, tracking_uri=args.tracking_uri)
        job = report.job
        style = _STATUS_STYLE.get(job.status, "")
        console.print(Text.assemble((job.job_id, "bold"), "  ", (job.status, style),
                                    f"  sweep {job.sweep_name or '-'}  started {_when(job.start_time)}  "
                                    f"({_duration(job.duration_s)})"))
        if job.message and job.status in ("FAILED", "STOPPED"):
            console.print(Text(job.message, style="dim"))
        p = report.progress
        if p is None:
            console.print(Text(f"trials: {report.progress_note}", style="dim"))
            return 0
        total = f"/{p.total}" if p.total else ""
        console.print(Text.assemble(
            f"trials: done {p.done}{total}  ", (f"running {p.running}", "cyan"), "  ",
            (f"completed {p.completed}", "green"), "  ", (f"stopped early {p.stopped_early}", "yellow"), "  ",
            (f"failed {p.failed}", "red" if p.failed else ""), f"  (sweep {p.sweep_status})",
        ))
        if p.best_value is not None:
            console.print(f"best {p.metric} ({p.goal}): {p.best_value:.4f}  [run {p.best_run_id}]")
        else:
            console.print(f"best {p.metric or 'metric'}: (no result yet)")
        console.print(Text(f"MLflow: {p.tracking_uri}  sweep id {p.sweep_id}  parent run {p.parent_run_id}",
                           style="dim"))
        return 0

    def cmd_logs(args: argparse.Namespace) -> int:
        for chunk in logs(args.job, args.address, args.token, follow=args.follow):
            sys.stdout.write(chunk)
            sys.stdout.flush()
        if not args.follow:
            return 0
        job = get_job(args.job, args.address, args.token)
        console.print(Text(f"job {job.job_id}: {job.status}", style=_STATUS_STYLE.get(job.status, "")))
        return 0 if job.status == "SUCCEEDED" else EXIT_FAILED

    def cmd_stop(args: argparse.Namespace) -> int:
        if stop(args.job, args.address, args.token):
            console.print(f"[yellow]stop requested[/yellow] for job {args.job}")
        else:
            job = get_job(args.job, args.address, args.token)
            console.print(f"job {args.job} had already ended ({job.status})")
        return 0

    def cmd_list(args: argparse.Namespace) -> int:
        jobs = list_jobs(args.address, args.token)
        if not jobs:
            console.print(f"no sweep jobs at {(args.address or default_address()).rstrip('/')}")
            return 0
        table = Table(title="sweep jobs")
        for column in ("job", "sweep", "status", "started", "duration"):
            table.add_column(column)
        for job in jobs:
            table.add_row(job.job_id, job.sweep_name or "-", Text(job.status, style=_STATUS_STYLE.get(job.status, "")),
                          _when(job.start_time), _duration(job.duration_s))
        console.print(table)
        return 0

    p = subparsers.add_parser("submit", help="run a sweep on a Ray cluster as a Ray Job")
    p.add_argument("file", help="sweep YAML file (validated here first)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the file, e.g. --set search.trials=4 (repeatable)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow URI the job records to (default: $MLFLOW_TRACKING_URI; tracking.uri in the file wins)")
    common(p)
    p.set_defaults(func=_handled(console, cmd_submit))

    p = subparsers.add_parser("status", help="a sweep job's status and its trials so far (from MLflow)")
    p.add_argument("job", nargs="?", default=None, metavar="NAME|JOB",
                   help="a job id, or a sweep name (its newest job); default: the newest sweep job")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store to read the trials from (default: the job's, else $MLFLOW_TRACKING_URI)")
    common(p)
    p.set_defaults(func=_handled(console, cmd_status))

    p = subparsers.add_parser("logs", help="print a sweep job's logs")
    p.add_argument("job", metavar="JOB", help="the job id")
    p.add_argument("--follow", "-f", action="store_true",
                   help="stream until the job ends; exit 0 only if it succeeded")
    common(p)
    p.set_defaults(func=_handled(console, cmd_logs))

    p = subparsers.add_parser("stop", help="stop a sweep job (its open MLflow runs are closed)")
    p.add_argument("job", metavar="JOB", help="the job id")
    common(p)
    p.set_defaults(func=_handled(console, cmd_stop))

    p = subparsers.add_parser("list", help="list the sweep jobs on a Ray cluster")
    common(p)
    p.set_defaults(func=_handled(console, cmd_list))
