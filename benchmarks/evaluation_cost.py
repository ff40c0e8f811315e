"""Cost of the end-of-trial evaluation against the trial it ends, on real Fashion-MNIST.

Trains the 784-256-256-10 MLP for ``--epochs`` epochs (default 10, batch 128, 2 threads),
then times, in the same process, what every trial does once at its end:

- ``evaluate_trial``: predictions on train / val / test, every scikit-learn metric on val and
  test, the bias-variance diagnosis and the overfitting onset;
- ``trial_artifacts``: learning curves, confusion matrix, ROC and PR curves, the hidden layer's
  PCA view and the per-class report, rendered to PNG / JSON.

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

import torch

from tracking.artifacts import trial_artifacts
from trainer import DataConfig, MLPConfig, load_dataset, train
from trainer.evaluation import evaluate_trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--output-dir", default="benchmarks/results")
    args = parser.parse_args()

    data = load_dataset(DataConfig(dataset="fashion_mnist", path=args.data_path, val_fraction=0.1))
    config = MLPConfig(hidden_layers=2, hidden_size=256, batch_size=128, epochs=args.epochs, lr=1e-3,
                       optimizer="adam")
    started = time.perf_counter()
    result = train(config, data, threads=2)
    train_s = time.perf_counter() - started

    started = time.perf_counter()
    evaluation = evaluate_trial(result, data)
    evaluate_s = time.perf_counter() - started
    started = time.perf_counter()
    files = trial_artifacts(evaluation)
    plots_cold_s = time.perf_counter() - started  # the first trial in a worker also loads fonts etc.
    started = time.perf_counter()
    evaluation = evaluate_trial(result, data)
    evaluate_s = time.perf_counter() - started
    started = time.perf_counter()
    files = trial_artifacts(evaluation)
    plots_s = time.perf_counter() - started  # every later trial of a reused worker
    total = evaluate_s + plots_s
    share = total / (train_s + total)
    out = {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "load_average_1m": os.getloadavg()[0]},
        "epochs": args.epochs, "train_samples": len(data.x_train), "test_samples": len(data.x_test),
        "train_seconds": train_s, "evaluate_seconds": evaluate_s, "plots_seconds": plots_s,
        "plots_first_call_seconds": plots_cold_s,
        "evaluation_share_of_trial": share, "target_share": 0.05, "target_met": share <= 0.05,
        "test_accuracy": evaluation.metrics["test_accuracy"], "artifacts": sorted(files),
    }
    target = Path(args.output_dir)
    target.mkdir(parents=True, exist_ok=True)
    (target / "evaluation_cost.json").write_text(json.dumps(out, indent=2) + "\n")
    table = "\n".join([
        f"# End-of-trial evaluation cost: Fashion-MNIST, {args.epochs} epochs\n",
        f"{out['timestamp']} - {out['machine']['cpus']} CPUs, load average {out['machine']['load_average_1m']:.1f}\n",
        "| step | seconds |", "|---|---:|",
        f"| training ({args.epochs} epochs, {len(data.x_train)} samples) | {train_s:.2f} |",
        f"| evaluate_trial (metrics on val + test, diagnosis) | {evaluate_s:.2f} |",
        f"| trial_artifacts (5 plots + report), first call in a process | {plots_cold_s:.2f} |",
        f"| trial_artifacts, later calls (reused Ray workers) | {plots_s:.2f} |",
        f"| **evaluation share of the trial** (later calls) | **{share:.1%}** (target <= 5%) |",
    ])
    (target / "evaluation_cost.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
