"""Shared fixtures: a per-test MLflow store, a guard against active runs, one Ray per session."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialized, empty SQLite store, made once: creating MLflow's tables takes seconds."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _empty_store: Path) -> str:
    """A fresh SQLite tracking store for this test, also exported as MLFLOW_TRACKING_URI."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(_empty_store, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def kernels_mode(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Lets a test set TRAINER_KERNELS / CC / CXX; trainer.fused looks its kernels up again before and after it."""
    from trainer import fused

    fused.reset()
    yield monkeypatch
    monkeypatch.undo()
    fused.reset()


def count_runs(db: Path) -> int:
    """Runs in a SQLite store, read without MLflow."""
    with sqlite3.connect(db) as conn:
        return int(conn.execute("select count(*) from runs").fetchone()[0])


@pytest.fixture(autouse=True)
def _no_active_run_left() -> None:
    """Fail any test that leaves an MLflow fluent run active (as MLflow's own tests do)."""
    yield
    if "mlflow" in sys.modules:
        import mlflow

        active = mlflow.active_run()
        if active is not None:
            mlflow.end_run()
            pytest.fail(f"test left MLflow run {active.info.run_id} active")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session (ray.init takes seconds here)."""
    import ray

    if not ray.is_initialized():
        pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        )
    yield ray
    ray.shutdown()
