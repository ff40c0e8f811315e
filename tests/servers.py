"""Real servers for the cluster tests, all on 127.0.0.1: Ray nodes, PostgreSQL, `mlflow server`.

Each runs in a session of its own under a private folder, and is stopped by killing exactly
the processes it started (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RAY_ENV_KEYS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_stat() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, session id, state) for every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), int(fields[3]), fields[0])
    return table


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def our_processes(sessions: set[int], marker: str) -> set[int]:
    """The processes in these sessions, everything they started (job drivers open sessions of
    their own), and anything whose command line names ``marker`` (our private folder)."""
    table = _proc_stat()
    ours = {pid for pid, (_, sid, _) in table.items() if sid in sessions}
    ours |= {pid for pid in table if marker in _cmdline(pid)}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(ours)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in ours:
                ours.add(child)
                stack.append(child)
    ours.discard(os.getpid())
    return {pid for pid in ours if table.get(pid, (0, 0, "Z"))[2] != "Z"}


def stop_processes(sessions: set[int], marker: str) -> set[int]:
    """SIGTERM our processes, then SIGKILL what is left after 5 s; returns what still runs."""
    pids = our_processes(sessions, marker)
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = our_processes(sessions, marker)
            if not pids:
                return set()
            time.sleep(0.25)
    return our_processes(sessions, marker)


def ray_env(token: str) -> dict[str, str]:
    """The environment of our Ray nodes: token auth with this token, the project importable."""
    env = {k: v for k, v in os.environ.items() if k not in RAY_ENV_KEYS}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p))
    return env


def ray_start(base: Path, name: str, env: dict[str, str], num_cpus: int, *, head_address: str | None = None,
              dashboard_port: int | None = None) -> int:
    """`ray start` a head (``head_address`` None) or a node joining ``head_address``, on 127.0.0.1,
    with every port its own so it never clashes with another Ray here. Returns its session id."""
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--node-ip-address", "127.0.0.1",
           "--num-cpus", str(num_cpus), "--temp-dir", str(base / name), "--disable-usage-stats",
           "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
           "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
           "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port())]
    if head_address is None:
        cmd += ["--head", "--port", str(free_port()), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(dashboard_port or free_port()),
                "--ray-client-server-port", str(free_port())]
    else:
        cmd += ["--address", head_address]
    log = base / f"{name}-start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    rc = proc.wait(timeout=180)
    if rc != 0:
        pytest.fail(f"`ray start` ({name}) exited with {rc}:\n{log.read_text()[-4000:]}")
    return proc.pid


def gcs_address(base: Path, name: str) -> str:
    """The head's GCS address, as `ray start --head` wrote it into its temp dir."""
    found = Path(base / name / "ray_current_cluster")
    if not found.exists():
        pytest.fail(f"no ray_current_cluster in {base / name}")
    return found.read_text().strip()


def wait_http(url: str, timeout_s: float, what: str, log: Path | None = None,
              headers: dict[str, str] | None = None) -> float:
    """Wait until ``url`` answers 200; returns the seconds it took."""
    import requests

    started = time.monotonic()
    while True:
        try:
            if requests.get(url, headers=headers or {}, timeout=5).status_code == 200:
                return time.monotonic() - started
        except requests.exceptions.RequestException:
            pass
        if time.monotonic() - started > timeout_s:
            tail = log.read_text()[-4000:] if log and log.exists() else ""
            pytest.fail(f"{what} at {url} did not answer within {timeout_s:.0f} s:\n{tail}")
        time.sleep(0.5)


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class Postgres:
    """A throw-away PostgreSQL cluster (Debian's package) on 127.0.0.1, trust auth on loopback only.

    PostgreSQL refuses to run as root: as root, it runs as the ``postgres`` user.
    """

    def __init__(self, base: Path):
        bindir = _postgres_bin()
        if bindir is None:
            pytest.fail("PostgreSQL is not installed: apt-get install -y postgresql (.ci/run does)")
        self.bindir = bindir
        self.base = base
        self.data = base / "pgdata"
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *cmd: str) -> None:
        done = subprocess.run([*self.as_user, *cmd], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def start(self) -> str:
        """Initialize, start and create database ``mlflow``; returns its SQLAlchemy URI."""
        self.base.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            shutil.chown(self.base, "postgres")
            self.base.chmod(0o755)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.base} -c fsync=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "postgres.log"),
                  "-o", options, "-w", "-t", "60", "start")
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "mlflow")
        return f"postgresql://postgres@127.0.0.1:{self.port}/mlflow"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                            "-w", "stop"], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


class MlflowServer:
    """`mlflow server` on 127.0.0.1 over a backend store, with proxied artifacts in a folder."""

    def __init__(self, base: Path, backend_uri: str):
        self.base = base
        self.backend_uri = backend_uri
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout_s: float = 180) -> float:
        """Start (or start again, on the same port and store); returns the seconds until /health answered."""
        self.starts += 1
        log = self.base / f"mlflow-server-{self.starts}.log"
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
               "--artifacts-destination", (self.base / "artifacts").as_uri(), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        # no job runner (huey consumers, for GenAI scorers): eight processes the tests do not use
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.base, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return wait_http(f"{self.url}/health", timeout_s, "mlflow server", log)

    def stop(self) -> None:
        """Stop the server and every process it started (its workers)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        left = our_processes({self.proc.pid}, f"--port {self.port} ")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc = None
