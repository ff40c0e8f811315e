"""The ``sweep`` command line. The only place that prints with rich."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sweeps.jobs import add_job_commands
from sweeps.progress import SweepSnapshot
from sweeps.validate import SpecError, load_spec

console = Console(stderr=True, soft_wrap=True)
EXIT_INVALID = 2  # the sweep file (or a --set) is invalid: nothing was started
EXIT_INTERRUPTED = 130


class RichProgress:
    """A live panel: trials by state and the best configuration so far."""

    def __init__(self, live: Live):
        self.live = live

    def update(self, snapshot: SweepSnapshot) -> None:
        self.live.update(render_snapshot(snapshot))


def render_snapshot(s: SweepSnapshot) -> Group:
    counts = Table.grid(padding=(0, 2))
    for _ in range(6):
        counts.add_column()
    counts.add_row(
        Text(f"{s.name}", style="bold"),
        Text(f"done {s.done}/{s.total}"),
        Text(f"running {s.running}", style="cyan"),
        Text(f"completed {s.completed}", style="green"),
        Text(f"stopped early {s.stopped_early}", style="yellow"),
        Text(f"failed {s.failed}", style="red" if s.failed else ""),
    )
    best = Table.grid(padding=(0, 1))
    best.add_column(style="dim")
    best.add_column()
    if s.best_value is not None:
        best.add_row(f"best {s.metric} ({s.goal})", f"{s.best_value:.4f}  [trial {s.best_trial}]")
        params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(s.best_config.items()))
        best.add_row("config", params)
    else:
        best.add_row(f"best {s.metric}", "(no result yet)")
    return Group(counts, best, Text(s.last_event, style="dim"))


def render_summaries(summaries: list[Any], metric: str) -> Table:
    """Repeated configurations: mean ± SE and the confidence interval over seeds."""
    keys = [k for k in dict.fromkeys([metric, "test_accuracy", "test_loss"]) if any(k in s.summaries for s in summaries)]
    table = Table(title="repeats over seeds (mean ± SE, CI)")
    table.add_column("config")
    table.add_column("from trial")
    table.add_column("seeds", justify="right")
    for key in keys:
        table.add_column(key, justify="right")
    for s in summaries:
        cells = []
        for key in keys:
            m = s.summaries.get(key)
            cells.append("" if m is None else
                         f"{m.mean:.4f} ± {m.se:.4f} [{m.ci_low:.4f}, {m.ci_high:.4f}]")
        table.add_row(f"{s.variant}/{s.config_id}" if s.variant else s.config_id, s.source_trial,
                      str(len(s.seeds)), *cells)
    return table


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _load(path: str, overrides: list[str]) -> Any:
    try:
        return load_spec(path, overrides)
    except SpecError as e:
        console.print(Text(str(e), style="red"))
        raise SystemExit(EXIT_INVALID) from None


def cmd_validate(args: argparse.Namespace) -> int:
    spec = _load(args.file, args.set)
    es = spec.early_stopping.type
    console.print(
        f"[green]valid[/green]: {args.file}: sweep {spec.name!r}, {spec.num_trials()} trials "
        f"({spec.search.algorithm}), {len(spec.searched_params())} searched / {len(spec.fixed_params())} fixed "
        f"parameters, metric {spec.metric.name} ({spec.metric.goal}), early stopping: {es}"
        + (f", variants: {', '.join(spec.variants)} (baseline {spec.baseline()})" if spec.variants else "")
        + (f", {spec.cross_validation.folds}-fold cross-validation" if spec.cross_validation else "")
        + (f", repeats: top {spec.repeats.top_k} x {spec.repeats.seeds} seeds" if spec.repeats else "")
    )
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from sweeps.spec import SweepSpec

    print(json.dumps(SweepSpec.model_json_schema(), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    spec = _load(args.file, args.set)
    source = Path(args.file).read_text(encoding="utf-8")
    return _drive(spec, source, args.results_dir, resume=None)


def cmd_resume(args: argparse.Namespace) -> int:
    from sweeps.resume import ResumeError, find_resumable
    from tracking import resolve_tracking_uri

    target = args.sweep
    new_spec, source = None, None
    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        new_spec = _load(target, args.set)
        source = Path(target).read_text(encoding="utf-8")
        name, uri = new_spec.name, resolve_tracking_uri(args.uri or new_spec.tracking.uri)
    else:
        if args.set:
            console.print(Text("--set needs the sweep FILE: `sweep resume FILE --set KEY=VALUE`", style="red"))
            return EXIT_INVALID
        name, uri = target, resolve_tracking_uri(args.uri)
    try:
        resumable = find_resumable(uri, name, new_spec, source, results_dir=args.results_dir)
    except ResumeError as e:
        console.print(Text(str(e), style="red"))
        return EXIT_INVALID
    spec = resumable.spec.model_copy(update={"tracking": resumable.spec.tracking.model_copy(update={"uri": uri})})
    console.print(f"resuming sweep {name!r} (id {resumable.sweep_id}) from {resumable.results_dir}")
    return _drive(spec, resumable.source_text, resumable.results_dir, resume=resumable)


def _drive(spec: Any, source: str | None, results_dir: str | None, resume: Any) -> int:
    from sweeps.tune import run_sweep  # imports Ray: only once the file is known to be valid

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    starting = Text(f"{'resuming' if resume else 'starting'} sweep {spec.name!r}…")
    with Live(starting, console=console, refresh_per_second=4, transient=False) as live:
        if spec.trainer == "mlp":
            from trainer import fused

            try:
                if not fused.built():
                    live.update(Text("compiling the trainer's fused kernels (once per machine and PyTorch "
                                     "version, about 20 s)…"))
                fused.status()  # builds them here, before any trial waits for them
            except (ValueError, fused.KernelBuildError) as e:  # TRAINER_KERNELS: a bad value, or fused unbuildable
                console.print(Text(f"trainer kernels: {e}", style="red"))
                return EXIT_INVALID
            live.update(starting)
        try:
            outcome = run_sweep(spec, source_text=source, progress=RichProgress(live),
                                results_dir=results_dir, resume=resume)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]: open trial runs were closed in MLflow; "
                          f"continue with: sweep resume {spec.name}")
            return EXIT_INTERRUPTED
        live.update(render_snapshot(outcome.snapshot))
    console.line()
    s = outcome.snapshot
    console.print(
        f"sweep {spec.name!r} {outcome.status} in {outcome.wall_seconds:.1f} s: "
        f"{s.completed} completed, {s.stopped_early} stopped early, {s.failed} failed"
    )
    if outcome.summaries:
        console.print(render_summaries(outcome.summaries, spec.metric.name))
    console.print(f"MLflow: {outcome.tracking_uri}  experiment {spec.experiment_name()!r}  "
                  f"parent run {outcome.parent_run_id}")
    console.print(f"open it with: sweep ui --uri {outcome.tracking_uri}")
    if outcome.status == "completed":
        from sweeps.report import write_report

        try:
            html, md = write_report(outcome.tracking_uri, outcome.sweep_id)
            console.print(f"report: {html} and {md} (also on the parent run)")
        except Exception as e:  # noqa: BLE001 - a finished sweep stays finished; say why there is no report
            console.print(f"[yellow]no report[/yellow]: {type(e).__name__}: {e}; retry with: sweep report {outcome.sweep_id}")
    if outcome.status == "interrupted":
        console.print(f"continue with: sweep resume {spec.name}")
        return EXIT_INTERRUPTED
    return 0 if s.completed + s.stopped_early > 0 else 1


def cmd_report(args: argparse.Namespace) -> int:
    from sweeps.report import write_report
    from tracking import resolve_tracking_uri

    try:
        html, md = write_report(resolve_tracking_uri(args.uri), args.sweep, out_dir=args.out_dir,
                                log_to_parent=not args.no_log)
    except LookupError as e:
        console.print(Text(str(e), style="red"))
        return 1
    console.print(f"report: {html} and {md}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port)]
    console.print(f"MLflow UI for {uri} at http://{args.host}:{args.port} (Ctrl-C to stop)")
    os.execv(sys.executable, cmd)
    return 0  # pragma: no cover


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweep", description="Hyperparameter sweeps on Ray Tune, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_file(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="sweep YAML file")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key of the file, e.g. --set search.trials=4 (repeatable)")

    p = sub.add_parser("validate", help="check a sweep file without running anything")
    with_file(p)
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("run", help="run a sweep on this machine (local Ray, MLflow store)")
    with_file(p)
    p.add_argument("--results-dir", default=None,
                   help="Ray Tune's experiment state and checkpoints (default: the file's storage.path, sweep_results)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("resume", help="continue an interrupted sweep (its driver was stopped or killed)")
    p.add_argument("sweep", help="sweep name, or its FILE (then a changed search is refused)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="with a FILE: override a key, e.g. --set resources.max_concurrent_trials=4")
    p.add_argument("--uri", default=None, help="tracking URI (default: the file's, $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--results-dir", default=None, help="Ray Tune's experiment state (default: where the sweep kept it)")
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("schema", help="print the sweep file's JSON Schema (for editor autocompletion)")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("report", help="write a sweep's HTML and Markdown report (and log it to its parent run)")
    p.add_argument("sweep", nargs="?", default=None, help="sweep id or name (default: the newest sweep)")
    p.add_argument("--uri", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--out-dir", default=None, help="where to write (default: sweep_reports/<name>-<id>)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    p.set_defaults(func=cmd_report)
    add_job_commands(sub, console)  # submit, status, logs, stop, list: Ray Jobs on a cluster
    p = sub.add_parser("ui", help="open the MLflow UI on the sweep's tracking store")
    p.add_argument("--uri", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
