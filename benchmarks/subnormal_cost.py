"""What subnormal floats cost a training step's matrix products on this CPU, and what flushing them saves.

Why: in the Fashion-MNIST study's ``l2`` variant (784-1024-1024-10, AdamW, an L2 loss penalty),
weights drifted into float32's subnormal range (below 2^-126 ~ 1.2e-38): 693 of the first layer's
802,816 (0.09 %) and 5 % of the second layer's by epoch 24. An epoch slowed from 3.2 s to 16.5 s,
one to 82 s. ``trainer.flush_denormals`` (x86 FTZ/DAZ, set by ``train`` on its thread) treats
such values as zero. This script measures the mechanism on controlled weights:

1. the study's MLP (784-1024-1024-10, ReLU), batch 256, random inputs and labels;
2. each ``--fractions`` share of every weight matrix's entries set to subnormal values
   (+-1e-39, +-1e-42), scattered at random; 0 is the control;
3. ``--steps`` forward and backward passes (no optimizer step, so the weights stay as set), timed
   in a new thread whose floating-point mode is set before its first parallel region, so that
   its OpenMP workers share it: IEEE (subnormals kept) and flushed. ``--rounds`` round-robin
   rounds; the table gives each run's median ms per pass.

Writes ``<output-dir>/subnormal_cost.json`` and ``.md`` and prints the table. About a minute::

    python benchmarks/subnormal_cost.py
    python benchmarks/subnormal_cost.py --rounds 1 --steps 3 --output-dir /tmp/smoke   # smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trainer import MLPConfig
from trainer.model import build_mlp, weight_matrices

REPO = Path(__file__).resolve().parent.parent
SUBNORMALS = (1e-39, -1e-39, 1e-42, -1e-42)  # float32 subnormals, both signs and two magnitudes


def make_model(fraction: float, seed: int = 0) -> torch.nn.Module:
    """The study's MLP, with ``fraction`` of every weight matrix's entries subnormal (scattered)."""
    torch.manual_seed(seed)
    model = build_mlp(MLPConfig(hidden_sizes=(1024, 1024)), 784, 10)
    if fraction > 0:
        g = torch.Generator().manual_seed(seed + 1)
        values = torch.tensor(SUBNORMALS, dtype=torch.float32)
        with torch.no_grad():
            for w in weight_matrices(model):
                where = torch.rand(w.shape, generator=g) < fraction
                w[where] = values[torch.randint(0, len(SUBNORMALS), w.shape, generator=g)][where]
    return model


def count_subnormal(model: torch.nn.Module) -> tuple[int, int]:
    tiny = torch.finfo(torch.float32).tiny
    ws = weight_matrices(model)
    return sum(int(((w != 0) & (w.abs() < tiny)).sum()) for w in ws), sum(w.numel() for w in ws)


def time_steps(fraction: float, flush: bool, threads: int, steps: int) -> float:
    """Median seconds of a forward and backward pass, in a new thread with the given floating-point mode.

    No optimizer step: the weights, subnormal ones included, stay as they are from pass to pass.
    """
    out: list[float] = []

    def work() -> None:
        torch.set_flush_denormal(flush)  # before this thread's first parallel region
        torch.set_num_threads(threads)
        model = make_model(fraction)
        x, y = torch.randn(256, 784), torch.randint(0, 10, (256,))
        times = []
        for _ in range(steps + 1):  # the first pass warms up
            started = time.perf_counter()
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            times.append(time.perf_counter() - started)
        out.append(statistics.median(times[1:]))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return out[0]


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Subnormal weights in a training step ({report['generated_at']})", "",
             f"784-1024-1024-10 ReLU MLP, batch 256, forward + backward, torch {report['torch']} with "
             f"{report['threads']} threads; {report['steps']} passes per run, {report['rounds']} rounds, median "
             f"ms per pass. Subnormal weights at +-1e-39 / +-1e-42, scattered over every weight matrix. "
             f"1-minute load average {report['load_before']:.1f} before, {report['load_after']:.1f} after.", "",
             "| subnormal weights | IEEE (kept) ms / pass | flushed ms / pass | IEEE / flushed |",
             "|---|---:|---:|---:|"]
    for row in report["runs"]:
        lines.append(f"| {row['subnormal_weights']:,} of {report['weights']:,} ({row['fraction']:.2%}) | "
                     f"{row['ieee_ms']:.1f} | {row['flushed_ms']:.1f} | {row['ieee_ms'] / row['flushed_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed forward + backward passes per run")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin repetitions of every run")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.0001, 0.001, 0.05],
                        help="shares of weight entries made subnormal (0: the control)")
    parser.add_argument("--output-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    for f in args.fractions:
        if not 0 <= f <= 1:
            parser.error(f"--fractions: {f} must be in [0, 1]")
    load_before = os.getloadavg()[0]
    times: dict[tuple[float, bool], list[float]] = {(f, flush): [] for f in args.fractions for flush in (False, True)}
    for _ in range(args.rounds):
        for fraction in args.fractions:
            for flush in (False, True):
                times[(fraction, flush)].append(time_steps(fraction, flush, args.threads, args.steps))
    runs = []
    for fraction in args.fractions:
        sub, total = count_subnormal(make_model(fraction))
        runs.append({"fraction": fraction, "subnormal_weights": sub,
                     "ieee_ms": 1e3 * statistics.median(times[(fraction, False)]),
                     "flushed_ms": 1e3 * statistics.median(times[(fraction, True)]),
                     "ieee_all_ms": [1e3 * t for t in times[(fraction, False)]],
                     "flushed_all_ms": [1e3 * t for t in times[(fraction, True)]]})
    report = {
        "generated_at": dt.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
        "machine": platform.machine(), "threads": args.threads, "steps": args.steps, "rounds": args.rounds,
        "weights": total, "load_before": load_before, "load_after": os.getloadavg()[0], "runs": runs,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "subnormal_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.output_dir / "subnormal_cost.md").write_text(table)
    print(table)
    return report


if __name__ == "__main__":
    main()
