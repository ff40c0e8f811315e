"""Cost of the end-of-trial evaluation against the trial it ends, on real Fashion-MNIST.

Trains the 784-256-256-10 MLP for ``--epochs`` epochs (default 10, batch 128, 2 threads),
then times, in the same process, what every trial does once at its end:

- ``evaluate_trial``: predictions on train / val / test, every scikit-learn metric on val and
  test, the bias-variance diagnosis and the overfitting onset;
- ``trial_artifacts``: learning curves, confusion matrix, ROC and PR curves, the hidden layer's
  PCA view and the per-class report, rendered to PNG / JSON.

Every step is timed in wall-clock seconds and in this process's CPU seconds (all its threads):
on a busy machine the wall-clock times of the two-thread training swell far more than those of
the mostly single-threaded evaluation, so both shares are recorded, with the load average
before and after. A last pass times each plot on its own.

Writes ``<output-dir>/evaluation_cost.json`` and ``.md``. Target (issue #4): evaluation plus
plots at most 5% of the 10-epoch trial's time. Needs the IDX files
(``apt-get install dataset-fashion-mnist``) or ``--data-path``.

Run::

    python benchmarks/evaluation_cost.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

from collections.abc import Callable
from typing import Any

import torch

from tracking import plots
from tracking.artifacts import trial_artifacts
from trainer import DataConfig, MLPConfig, load_dataset, train
from trainer.evaluation import evaluate_trial


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``, its wall-clock seconds and this process's CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _per_plot(evaluation: Any) -> dict[str, dict[str, float]]:
    """Each artifact of trial_artifacts timed alone (figures already built: a reused worker)."""
    names = list(evaluation.class_names)
    calls = {
        "learning_curves.png": lambda: plots.learning_curves_png(evaluation.history),
        "confusion_matrix.png": lambda: plots.confusion_matrix_png(evaluation.y_test, evaluation.test_labels, names),
        "roc_pr_curves.png": lambda: plots.roc_pr_png(evaluation.y_test, evaluation.test_output, names,
                                                      curves=evaluation.test_curves),
        "hidden_pca.png": lambda: plots.embedding_png(evaluation.test_hidden, evaluation.y_test, names),
        "classification_report.json": lambda: plots.classification_report_json(
            evaluation.y_test, evaluation.test_labels, names),
    }
    out = {}
    for name, call in calls.items():
        _, wall, cpu = _timed(call)
        out[name] = {"seconds": wall, "cpu_seconds": cpu}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--output-dir", default="benchmarks/results")
    args = parser.parse_args()

    load_before = os.getloadavg()
    data = load_dataset(DataConfig(dataset="fashion_mnist", path=args.data_path, val_fraction=0.1))
    config = MLPConfig(hidden_layers=2, hidden_size=256, batch_size=128, epochs=args.epochs, lr=1e-3,
                       optimizer="adam")
    result, train_s, train_cpu = _timed(lambda: train(config, data, threads=2))

    evaluation, evaluate_s, evaluate_cpu = _timed(lambda: evaluate_trial(result, data))
    files, plots_cold_s, plots_cold_cpu = _timed(lambda: trial_artifacts(evaluation))  # first trial of a worker
    evaluation, evaluate_s, evaluate_cpu = _timed(lambda: evaluate_trial(result, data))
    files, plots_s, plots_cpu = _timed(lambda: trial_artifacts(evaluation))  # every later trial of a reused worker
    per_plot = _per_plot(evaluation)
    load_after = os.getloadavg()
    total, total_cpu = evaluate_s + plots_s, evaluate_cpu + plots_cpu
    share = total / (train_s + total)
    share_cpu = total_cpu / (train_cpu + total_cpu)
    out = {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "load_average_1m": load_after[0], "load_average_1m_before": load_before[0],
                    "load_average_5m": load_after[1], "load_average_15m": load_after[2]},
        "epochs": args.epochs, "train_samples": len(data.x_train), "test_samples": len(data.x_test),
        "train_seconds": train_s, "evaluate_seconds": evaluate_s, "plots_seconds": plots_s,
        "plots_first_call_seconds": plots_cold_s,
        "train_cpu_seconds": train_cpu, "evaluate_cpu_seconds": evaluate_cpu, "plots_cpu_seconds": plots_cpu,
        "plots_first_call_cpu_seconds": plots_cold_cpu, "per_plot": per_plot,
        "evaluation_share_of_trial": share, "evaluation_share_of_trial_cpu": share_cpu,
        "target_share": 0.05, "target_met": share <= 0.05, "target_met_cpu": share_cpu <= 0.05,
        "test_accuracy": evaluation.metrics["test_accuracy"], "artifacts": sorted(files),
    }
    target = Path(args.output_dir)
    target.mkdir(parents=True, exist_ok=True)
    (target / "evaluation_cost.json").write_text(json.dumps(out, indent=2) + "\n")
    table = "\n".join([
        f"# End-of-trial evaluation cost: Fashion-MNIST, {args.epochs} epochs\n",
        f"{out['timestamp']} - {out['machine']['cpus']} CPUs, load average (1 min) {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after (5 min {load_after[1]:.1f}, 15 min {load_after[2]:.1f})\n",
        "| step | seconds | CPU seconds |", "|---|---:|---:|",
        f"| training ({args.epochs} epochs, {len(data.x_train)} samples, 2 threads) | {train_s:.2f} | {train_cpu:.2f} |",
        f"| evaluate_trial (metrics on val + test, diagnosis) | {evaluate_s:.2f} | {evaluate_cpu:.2f} |",
        f"| trial_artifacts (4 plots + 2 reports), first call in a process | {plots_cold_s:.2f} | {plots_cold_cpu:.2f} |",
        f"| trial_artifacts, later calls (reused Ray workers) | {plots_s:.2f} | {plots_cpu:.2f} |",
        *(f"| - {name} alone | {t['seconds']:.3f} | {t['cpu_seconds']:.3f} |" for name, t in per_plot.items()),
        f"| **evaluation share of the trial** (later calls) | **{share:.1%}** | **{share_cpu:.1%}** |",
        "",
        "Target: at most 5%. On a loaded machine the wall-clock share is not comparable between runs: "
        "the two-thread training slows down far more than the evaluation.",
    ])
    (target / "evaluation_cost.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
