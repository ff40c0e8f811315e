"""Overhead of a tracked Ray Tune sweep against bare, untracked Optuna on the same trainer.

What is measured (wall clock, ``time.perf_counter``), all in one process:

1. **Sweep** – ``sweeps/examples/quickstart.yaml`` (digits MLP, TPE + ASHA, grace 2,
   reduction factor 3, at most 20 epochs, 2 concurrent trials) run through
   :func:`sweeps.tune.run_sweep` with full MLflow tracking into a throw-away SQLite store.
   Ray is started first with :func:`sweeps.tune._ensure_ray` and timed on its own
   (``ray_init_s``); ``run_sweep_s`` is the ``run_sweep`` call; ``sweep_total_s`` is
   their sum. The number of child (trial) runs is read back from MLflow.
2. **Bare Optuna** – the same trials, same search space and sampler
   (:func:`sweeps.space.make_sampler`), a ``SuccessiveHalvingPruner`` with the same
   grace period / reduction factor, the same :func:`trainer.train` with one torch
   thread, the dataset loaded once, no tracking, no Ray. Sequential
   (``n_jobs=1``) is the baseline; a 2-thread variant (``n_jobs=2``) is timed as well
   unless ``--no-threaded`` is given.

The target is ``sweep_total_s / bare_optuna_s <= 2.0``. Results go to
``<output-dir>/sweep_overhead.json`` and ``<output-dir>/sweep_overhead.md``; the
table is also printed.

Run (about a minute on 2 cores; stop any stale Ray first)::

    ray stop --force
    python benchmarks/sweep_overhead.py                      # 24 trials, the full benchmark
    python benchmarks/sweep_overhead.py --trials 4 --output-dir /tmp/smoke   # smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent
SPEC_PATH = REPO / "sweeps" / "examples" / "quickstart.yaml"
TARGET_RATIO = 2.0

logger = logging.getLogger("benchmarks.sweep_overhead")


class _SilentProgress:
    """A progress sink that draws nothing, so the sweep pays no display cost."""

    def update(self, snapshot: Any) -> None:
        pass


@dataclass
class SweepFigures:
    import_s: float
    ray_init_s: float
    run_sweep_s: float
    status: str
    completed: int
    stopped_early: int
    failed: int
    child_runs: int
    best_value: float | None
    outcome_wall_s: float

    @property
    def total_s(self) -> float:
        return self.ray_init_s + self.run_sweep_s


@dataclass
class OptunaFigures:
    n_jobs: int
    wall_s: float
    completed: int
    pruned: int
    failed: int
    best_value: float | None


@contextmanager
def _chdir(path: Path) -> Iterator[None]:
    """Work in ``path`` so MLflow's default ./mlruns artifact root lands in the temp dir."""
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_tracked_sweep(trials: int, workdir: Path) -> SweepFigures:
    """Run the quickstart sweep through ``run_sweep`` with MLflow tracking into ``workdir``."""
    started = time.perf_counter()
    import mlflow
    import ray

    from sweeps import tune as sweeps_tune
    from sweeps.validate import load_spec
    from tracking import tags as T

    import_s = time.perf_counter() - started
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    spec = load_spec(SPEC_PATH, [f"tracking.uri={uri}", f"search.trials={trials}"])
    source_text = SPEC_PATH.read_text(encoding="utf-8")
    if ray.is_initialized():
        logger.warning("Ray was already initialized in this process; ray_init_s will be ~0")

    with _chdir(workdir):
        t0 = time.perf_counter()
        sweeps_tune._ensure_ray()
        ray_init_s = time.perf_counter() - t0
        logger.info("ray.init: %.2f s", ray_init_s)

        t0 = time.perf_counter()
        outcome = sweeps_tune.run_sweep(
            spec, source_text=source_text, progress=_SilentProgress(), results_dir=workdir / "sweep_results"
        )
        run_sweep_s = time.perf_counter() - t0
        logger.info("run_sweep: %.2f s (status %s)", run_sweep_s, outcome.status)

    children = mlflow.MlflowClient(outcome.tracking_uri).search_runs(
        [outcome.experiment_id], filter_string=f"tags.`{T.ROLE}` = 'trial'", max_results=10_000
    )
    ray.shutdown()
    snap = outcome.snapshot
    return SweepFigures(
        import_s=import_s, ray_init_s=ray_init_s, run_sweep_s=run_sweep_s, status=outcome.status,
        completed=snap.completed, stopped_early=snap.stopped_early, failed=snap.failed,
        child_runs=len(children), best_value=snap.best_value, outcome_wall_s=outcome.wall_seconds,
    )


def run_bare_optuna(trials: int, n_jobs: int) -> OptunaFigures:
    """The same trials through Optuna alone: no Ray, no MLflow, one torch thread per trial."""
    import optuna

    from sweeps.space import make_sampler, suggest
    from sweeps.spec import ASHASpec
    from sweeps.validate import load_spec
    from trainer import EpochMetrics, MLPConfig, StopTraining, TrainingDiverged, load_dataset, train

    spec = load_spec(SPEC_PATH, [f"search.trials={trials}"])
    es = spec.early_stopping
    assert isinstance(es, ASHASpec), "the benchmark expects the quickstart's ASHA early stopping"
    # Optuna's pruner needs an integer factor; the spec's is a float (ASHA accepts any > 1).
    reduction_factor = int(round(es.reduction_factor))
    if reduction_factor != es.reduction_factor:
        logger.warning("reduction_factor %s rounded to %d for Optuna", es.reduction_factor, reduction_factor)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    started = time.perf_counter()
    data = load_dataset(spec.data)
    study = optuna.create_study(
        direction="maximize",
        sampler=make_sampler(spec, concurrent=n_jobs),
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=es.grace_period, reduction_factor=reduction_factor
        ),
    )

    def objective(trial: optuna.Trial) -> float:
        config = MLPConfig(**suggest(trial, spec))

        def report(m: EpochMetrics) -> None:
            trial.report(m.val_accuracy, m.epoch)
            if trial.should_prune():
                raise StopTraining

        result = train(config, data, report, threads=1)
        if result.stopped_epoch is not None:
            raise optuna.TrialPruned()
        return result.history[-1].val_accuracy

    study.optimize(objective, n_trials=trials, n_jobs=n_jobs, catch=(TrainingDiverged,))
    wall_s = time.perf_counter() - started
    states = [t.state for t in study.trials]
    S = optuna.trial.TrialState
    completed = states.count(S.COMPLETE)
    figures = OptunaFigures(
        n_jobs=n_jobs, wall_s=wall_s, completed=completed, pruned=states.count(S.PRUNED),
        failed=states.count(S.FAIL), best_value=study.best_value if completed else None,
    )
    logger.info("bare Optuna n_jobs=%d: %.2f s", n_jobs, wall_s)
    return figures


def machine_info() -> dict[str, Any]:
    import mlflow
    import optuna
    import ray
    import torch

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(), "cpus_usable": affinity, "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
        "torch": torch.__version__, "ray": ray.__version__, "optuna": optuna.__version__,
        "mlflow": mlflow.__version__,
    }


def render_markdown(result: dict[str, Any]) -> str:
    s, b, m = result["sweep"], result["bare_optuna"], result["machine"]
    thr = result.get("bare_optuna_threaded")
    lines = [
        f"# Sweep overhead: {result['trials']} digits trials (TPE + ASHA, <= {result['max_epochs']} epochs)",
        "",
        f"{result['timestamp']} - {m['cpu_count']} CPUs, Python {m['python']}, torch {m['torch']}, "
        f"ray {m['ray']}, optuna {m['optuna']}, mlflow {m['mlflow']}",
        "",
        "| Measure | Seconds | Trials (completed / stopped early / failed) |",
        "|---|---:|---|",
        f"| Sweep: `ray.init` | {s['ray_init_s']:.2f} | |",
        f"| Sweep: `run_sweep` (2 concurrent, MLflow) | {s['run_sweep_s']:.2f} | "
        f"{s['completed']} / {s['stopped_early']} / {s['failed']} ({s['child_runs']} MLflow child runs) |",
        f"| **Sweep total** | **{result['sweep_total_s']:.2f}** | |",
        f"| **Bare Optuna, sequential** (baseline) | **{b['wall_s']:.2f}** | "
        f"{b['completed']} / {b['pruned']} pruned / {b['failed']} |",
    ]
    if thr:
        lines.append(f"| Bare Optuna, n_jobs=2 threads | {thr['wall_s']:.2f} | "
                     f"{thr['completed']} / {thr['pruned']} pruned / {thr['failed']} |")
    lines += [
        f"| Imports of ray/tune/mlflow (not counted) | {s['import_s']:.2f} | |",
        "",
        f"**Ratio sweep total / bare Optuna: {result['ratio']:.2f}** "
        f"(target <= {result['target_ratio']:.1f}: {'met' if result['target_met'] else 'NOT met'})",
    ]
    if thr:
        lines.append(f"Ratio against the 2-thread variant: {result['ratio_vs_threaded']:.2f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=24, help="trials in each run (default: 24)")
    parser.add_argument("--output-dir", type=Path, default=REPO / "benchmarks" / "results",
                        help="where to write sweep_overhead.json/.md (default: benchmarks/results)")
    parser.add_argument("--no-threaded", action="store_true", help="skip the bare Optuna n_jobs=2 variant")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)

    with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as tmp:
        sweep = run_tracked_sweep(args.trials, Path(tmp))
    bare = run_bare_optuna(args.trials, n_jobs=1)
    threaded = None if args.no_threaded else run_bare_optuna(args.trials, n_jobs=2)

    from sweeps.validate import load_spec

    max_epochs = load_spec(SPEC_PATH).max_epochs()
    ratio = sweep.total_s / bare.wall_s
    result: dict[str, Any] = {
        "benchmark": "sweep_overhead",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spec": str(SPEC_PATH.relative_to(REPO)),
        "trials": args.trials,
        "max_epochs": max_epochs,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "sweep": {**sweep.__dict__, "total_s": sweep.total_s},
        "bare_optuna": bare.__dict__,
        "bare_optuna_threaded": threaded.__dict__ if threaded else None,
        "sweep_total_s": sweep.total_s,
        "bare_optuna_s": bare.wall_s,
        "ratio": ratio,
        "ratio_vs_threaded": sweep.total_s / threaded.wall_s if threaded else None,
        "target_ratio": TARGET_RATIO,
        "target_met": ratio <= TARGET_RATIO,
        "machine": machine_info(),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.output_dir / "sweep_overhead.json"
    md_path = args.output_dir / "sweep_overhead.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = render_markdown(result)
    md_path.write_text(table, encoding="utf-8")
    print(table)
    logger.info("wrote %s and %s", json_path, md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
