"""What each regularizer costs a training step, paired finely enough to see past the VM's drift.

``trainer_throughput.py`` judges the regularization target on whole epochs, one run after the
other within a round. On this VM a round's ratio strays by +-10 % (its quartiles are in its
table), so its median over 15 rounds moves by several points from one run to the next. This script
measures the same quantity per training step instead: every configuration trains on the same
batches in blocks of ``--steps`` steps (default 40, about 60 ms), the blocks alternate between
configurations, and each overhead is the median over ``--blocks`` (default 60) of the ratio of a
block to the plain block just before it. It also measures the three paths of :mod:`trainer.fused`
in one process: the fused kernels in their C++ autograd node (``TRAINER_KERNELS=auto``), the same
kernels in the Python node (``fused-python``) and PyTorch's layers (``eager``).

The model is the benchmark's 784-256-256-10 ReLU MLP with Adam at batch 128 and 2 threads, on
random inputs (the step's cost does not depend on the data); the optimizer step, the L2 gradient
and the dropout masks are the trainer's own (``trainer.loop._Stepper``, one training step).

Writes ``<output-dir>/regularization_step_cost.json`` and ``.md`` and prints the table. About
three minutes::

    python benchmarks/regularization_step_cost.py
    python benchmarks/regularization_step_cost.py --blocks 3 --output-dir /tmp/smoke   # smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from trainer import MLPConfig, fused
from trainer.data import Dataset
from trainer.loop import _Stepper
from trainer.model import build_mlp

REPO = Path(__file__).resolve().parent.parent
BATCH = 128
CONFIGS = {  # the regularized run of trainer_throughput.py, and each regularizer alone
    "plain": {},
    "dropout": {"dropout": 0.2},
    "l2": {"l2": 1e-4},
    "batchnorm": {"norm": "batchnorm"},
    "regularized": {"dropout": 0.2, "l2": 1e-4, "norm": "batchnorm"},
}
PATHS = {"fused": "auto", "fused-python": "fused-python", "eager": "eager"}  # path: TRAINER_KERNELS


def steppers(data: Dataset) -> dict[str, _Stepper]:
    made = {}
    for name, update in CONFIGS.items():
        config = MLPConfig(hidden_sizes=(256, 256), batch_size=BATCH, **update)
        torch.manual_seed(0)
        made[name] = _Stepper(config, build_mlp(config, data.n_features, data.n_outputs), data)
    return made


def measure(blocks: int, steps: int, threads: int) -> dict[str, Any]:
    """Per path: the median µs per step of each configuration and its paired overhead over plain."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    n = BATCH * steps
    x, y = torch.randn(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)
    data = Dataset("random", x, y, x[:BATCH], y[:BATCH], x[:BATCH], y[:BATCH], tuple(str(i) for i in range(10)))
    paths = {}
    before = os.environ.get("TRAINER_KERNELS")
    for path, chosen in PATHS.items():
        os.environ["TRAINER_KERNELS"] = chosen
        fused.reset()
        status = fused.status()
        if status.split(" ")[0] != path:
            raise RuntimeError(f"the {path} path is not available here: {status}")
        runs = steppers(data)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for block in range(blocks + 2):  # the first two blocks warm up
            for name, stepper in runs.items():
                started = time.perf_counter()
                for start in range(0, n, BATCH):
                    stepper.step(x[start:start + BATCH], y[start:start + BATCH], 1e-3)
                if block >= 2:
                    times[name].append((time.perf_counter() - started) / steps * 1e6)
        paths[path] = {
            "us_per_step": {name: statistics.median(t) for name, t in times.items()},
            "overhead": {name: statistics.median(a / p - 1 for a, p in zip(t, times["plain"]))
                         for name, t in times.items() if name != "plain"},
            "overhead_quartiles": {
                name: [q - 1 for q in _quartiles([a / p for a, p in zip(t, times["plain"])])]
                for name, t in times.items() if name != "plain"},
            "block_us_per_step": times,
        }
    if before is None:
        os.environ.pop("TRAINER_KERNELS", None)
    else:
        os.environ["TRAINER_KERNELS"] = before
    fused.reset()
    return paths


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return [q1, q3]


def markdown(report: dict[str, Any]) -> str:
    setup = report["setup"]
    lines = [
        f"# Regularization cost per training step ({report['date']})",
        "",
        f"784-256-256-10 ReLU MLP, Adam, batch {BATCH}, torch {setup['torch']} with {setup['threads']} threads; "
        f"{setup['blocks']} alternating blocks of {setup['steps']} steps per configuration and path. Overhead: "
        "the median over blocks of a block's time over the plain block of the same round (quartiles beside it).",
        "",
        "| configuration | " + " | ".join(f"{path}: µs / step | {path}: overhead" for path in report["paths"]) + " |",
        "|---|" + "---:|---:|" * len(report["paths"]),
    ]
    for name in CONFIGS:
        def cell(path: dict[str, Any]) -> str:
            if name == "plain":
                return "-"
            q1, q3 = path["overhead_quartiles"][name]
            return f"{path['overhead'][name]:+.1%} ({q1:+.1%} to {q3:+.1%})"
        lines.append(f"| {name} | " + " | ".join(f"{path['us_per_step'][name]:.0f} | {cell(path)}"
                                                for path in report["paths"].values()) + " |")
    lines += ["", "fused: the kernels in the C++ autograd node; fused-python: the same kernels in the Python "
              "node; eager: PyTorch's layers (trainer/fused.py)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=60, help="alternating blocks per configuration and path")
    parser.add_argument("--steps", type=int, default=40, help="training steps per block")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    for key in ("blocks", "steps", "threads"):
        if getattr(args, key) < 1:
            parser.error(f"--{key}={getattr(args, key)}: must be >= 1")
    load_before = os.getloadavg()
    paths = measure(args.blocks, args.steps, args.threads)
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "setup": {"blocks": args.blocks, "steps": args.steps, "threads": args.threads, "batch_size": BATCH,
                  "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
                  "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "paths": paths,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "regularization_step_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.output_dir / "regularization_step_cost.md").write_text(table)
    print(table)
    return report


if __name__ == "__main__":
    main()
