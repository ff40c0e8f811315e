"""The Ray Tune wiring: the only module that imports Ray Tune.

One builder, :func:`run_sweep`, puts together the pieces:

- a function trainable (:func:`run_trial`) whose actors are reused between trials;
- the dataset loaded once by the driver and put in the object store once per sweep;
- :class:`SweepOptunaSearch`: Optuna (TPE, random or grid) with its own study per sweep;
- ASHA on our own ``epoch`` counter;
- MLflow: a parent run per sweep execution, a child run per trial owned by the trial.

What Optuna learns from trials ASHA stopped: they are told as PRUNED with their
per-epoch values reported as intermediate steps, so TPE ranks them below trials that
reached the full budget instead of comparing partial-budget values with full ones.
Failed trials are told as FAIL, whatever they reported before failing.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import os
import platform
import re
import secrets
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.trainable import wrap_function

from sweeps.progress import LoggingProgress, ProgressSink, SweepSnapshot
from sweeps.resume import (
    DRIVER_TAG, RESULTS_DIR_TAG, ResumeTarget, driver_tag, log_spec, record_added_variants,
)
from sweeps.space import make_sampler, suggest
from sweeps.spec import ASHASpec, EvaluationSpec, SweepSpec
from sweeps.stats import Summary, summarize
from sweeps.validate import resolve_trainer
from tracking import SweepTracker, TrialRun, TrialStatus, resolve_tracking_uri
from tracking import tags as T
from tracking.outage import ServerRetry
from tracking.artifacts import log_files, trial_artifacts
from trainer import DataConfig, Dataset, MLPConfig, StopTraining, flush_denormals, load_dataset, train
from trainer.crossval import fold_datasets, train_cv
from trainer.diagnosis import DiagnosisThresholds
from trainer.evaluation import evaluate_trial, val_metric
from trainer.loop import EARLY_STOPPED, EpochMetrics, epoch_metric_names

logger = logging.getLogger(__name__)

# Set before Ray starts workers: Tune's per-trial JSON/CSV/TensorBoard loggers duplicate what
# MLflow records and cost time on every result.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter is silent at verbose=0
# Each trial checkpoint forces a snapshot of the experiment state (CheckpointConfig(num_to_keep=1)):
# wanted, since a resumed sweep then knows every trial; Tune's warning about it is not for our users.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# The CLI draws its own progress; these say nothing a sweep user needs.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
MIN_THREAD_TIMEOUT_S = 30  # the least a reused actor waits for a stopped trial to close its MLflow run


def thread_timeout_s(retry_seconds: float) -> int:
    """Seconds a reused actor waits for the previous trial's thread to end (Tune's actor reset).

    The thread may still be closing its MLflow run, which retries an unreachable tracking
    server for up to ``retry_seconds``. Waiting less makes Tune error the *next* trial, without
    retries or callbacks (Ray Tune 2.60), so the wait covers the retry window plus a margin;
    a paused process (SIGSTOP, a suspended laptop) counts against this wall-clock wait too.

    >>> thread_timeout_s(600.0)
    630
    >>> thread_timeout_s(0.0)
    30
    """
    return MIN_THREAD_TIMEOUT_S + math.ceil(retry_seconds)


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its hyperparameters. Infrastructure, not config."""

    sweep_name: str
    sweep_id: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    trainer: str
    metric: str
    max_epochs: int  # the full budget, for trainers whose params do not name their epochs
    threads: int
    flush_seconds: float
    evaluation: EvaluationSpec
    data_ref: Any  # ObjectRef of the Dataset
    data_config: DataConfig | None = None  # set when each seed re-draws the split (repeats.vary_split)
    variant: str | None = None  # the study variant this trial belongs to
    checkpoint_every: int = 1  # epochs between checkpoints of the built-in trainer; 0: none
    retry_seconds: float = 600.0  # how long a trial waits for an unreachable tracking server
    cv_folds: int | None = None  # k-fold cross-validation of search trials (cross_validation.folds); None: off
    cv_data: DataConfig | None = None  # the data block the folds are cut from (with cv_folds)


@dataclass
class SweepOutcome:
    """What a finished (or interrupted) sweep returns."""

    sweep_id: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    status: str
    snapshot: SweepSnapshot
    best_run_id: str | None = None
    trial_statuses: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    summaries: list[ConfigSummary] = field(default_factory=list)  # repeats, best configuration first


# ---- the trainable (runs in Ray worker processes) ---------------------------------------------
_DATA_CACHE: dict[str, Dataset] = {}


def _dataset(ctx: TrialContext, split_seed: int | None = None) -> Dataset:
    """The sweep's dataset, fetched from the object store once per worker process.

    With a ``split_seed`` (repeats that vary the split), the worker loads that split itself.
    """
    key = f"{ctx.sweep_id}/{split_seed}"
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        if split_seed is not None and ctx.data_config is not None:
            _DATA_CACHE[key] = load_dataset(ctx.data_config.model_copy(update={"split_seed": split_seed}))
        else:
            _DATA_CACHE[key] = ray.get(ctx.data_ref)
    return _DATA_CACHE[key]


def _fold_data(ctx: TrialContext) -> list[Dataset]:
    """The sweep's k cross-validation datasets, cut once per worker process from ``ctx.cv_data``."""
    if ctx.cv_folds is None or ctx.cv_data is None:
        raise ValueError("cross-validation needs TrialContext.cv_folds and cv_data (run_sweep sets both)")
    key = f"{ctx.sweep_id}/cv{ctx.cv_folds}"
    if key not in _FOLD_CACHE:
        _FOLD_CACHE.clear()
        _FOLD_CACHE[key] = fold_datasets(ctx.cv_data, ctx.cv_folds)
    return _FOLD_CACHE[key]


_FOLD_CACHE: dict[str, list[Dataset]] = {}
REPEAT_KEY = "repeat"  # a repeat trial's Tune config: {"repeat": {"params", "config_id", "seed", ...}}


class MetricNotReported(KeyError):
    """The trainer's report lacks the metric the sweep optimizes."""


STATE_FILE = "train_state.pt"  # a trial checkpoint: the trainer's whole state (trainer.loop.train_state)
META_FILE = "trial.json"  # ... and which MLflow run and epoch it belongs to


class _CpuClock:
    """The trial's CPU seconds: this process's CPU time since the trial began (all threads), plus
    what the checkpoint it was restored from had counted. Work lost with a killed worker after
    its last checkpoint is not counted; the epochs it redoes are."""

    def __init__(self) -> None:
        self._start = time.process_time()
        self.before = 0.0  # counted by earlier attempts, up to the checkpoint restored from

    def __call__(self) -> float:
        return self.before + time.process_time() - self._start


class _Checkpoints:
    """Write the trainer's state as a Tune checkpoint that travels with the epoch's report."""

    def __init__(self, run_id: str, cpu: _CpuClock, trial_config: dict[str, Any] | None = None):
        self.run_id = run_id
        self.cpu = cpu
        self.trial_config = trial_config  # Tune's config of the trial: enough to finish it from this state
        self._pending: str | None = None

    def save(self, state: dict[str, Any]) -> None:
        self.discard()
        folder = tempfile.mkdtemp(prefix="sweep-ckpt-")
        torch.save(state, os.path.join(folder, STATE_FILE))
        with open(os.path.join(folder, META_FILE), "w") as f:
            json.dump({"mlflow_run_id": self.run_id, "epoch": int(state["epoch"]), T.CPU_SECONDS: self.cpu(),
                       "trial_config": self.trial_config}, f)
        self._pending = folder

    def take(self) -> tune.Checkpoint | None:
        """The checkpoint to report with this epoch, if one was saved since the last report."""
        return tune.Checkpoint.from_directory(self._pending) if self._pending else None

    def discard(self) -> None:
        """Tune has copied a reported checkpoint to the trial's storage: drop the local one."""
        if self._pending:
            shutil.rmtree(self._pending, ignore_errors=True)
            self._pending = None


def _restored_checkpoint() -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The trainer state and its metadata, when Tune restarts this trial from a checkpoint."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        meta = json.loads(Path(folder, META_FILE).read_text())
        state = torch.load(Path(folder, STATE_FILE), weights_only=True)
    return state, meta


_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)")  # Tune's name for a trial's n-th checkpoint folder


def _read_checkpoint(fs: Any, path: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The trainer state and metadata in the checkpoint folder ``path``; None unless both are whole."""
    try:
        with fs.open_input_stream(f"{path}/{META_FILE}") as f:
            meta = json.loads(f.readall())
        with fs.open_input_stream(f"{path}/{STATE_FILE}") as f:
            state = torch.load(io.BytesIO(f.readall()), weights_only=True)
    except Exception:  # missing, truncated by a kill mid-upload, unreadable: not a state to resume from
        return None
    return state, meta


def _checkpoint_folders(fs: Any, trial_folder: str) -> list[tuple[int, str]]:
    """(n, path) of each ``checkpoint_<n>`` folder of a trial, newest first."""
    from pyarrow import fs as pafs

    found = []
    for info in fs.get_file_info(pafs.FileSelector(trial_folder, allow_not_found=True)):
        match = _CHECKPOINT_DIR.fullmatch(info.base_name)
        if info.type == pafs.FileType.Directory and match:
            found.append((int(match.group(1)), info.path))
    return sorted(found, reverse=True)


def replace_missing_checkpoint(fs: Any, path: str) -> str | None:
    """Put the trial's newest intact later checkpoint at ``path`` when ``path`` is gone.

    Tune deletes a trial's older checkpoint (``num_to_keep=1``) as soon as a newer one is
    registered, but writes the experiment state that names the newer one later, in the
    background. A driver killed in between leaves a saved state naming a deleted checkpoint,
    and Tune 2.60 then fails that trial on resume ("Could not recover from checkpoint as it does
    not exist on storage anymore"), retries included. The newer checkpoint is still in the
    trial's folder; moved to the named path, the trial resumes from it (its metadata says which
    epoch it holds, so the MLflow run continues at the right step). Later checkpoints cut short
    by the kill are skipped. Returns the path moved from, or None when nothing was needed or
    possible (Tune's own error then stands).

    >>> import tempfile, pyarrow.fs
    >>> root = tempfile.mkdtemp()
    >>> replace_missing_checkpoint(pyarrow.fs.LocalFileSystem(), f"{root}/checkpoint_000003") is None
    True
    """
    from pyarrow import fs as pafs

    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return None
    parent, _, name = path.rstrip("/").rpartition("/")
    named = _CHECKPOINT_DIR.fullmatch(name)
    if named is None:
        return None
    for index, candidate in _checkpoint_folders(fs, parent):
        if index <= int(named.group(1)) or _read_checkpoint(fs, candidate) is None:
            continue
        try:
            fs.move(candidate, path)  # a rename where the file system has one
        except (OSError, NotImplementedError):  # S3 moves files only
            pafs.copy_files(candidate, path, source_filesystem=fs, destination_filesystem=fs)
            fs.delete_dir(candidate)
        logger.warning("checkpoint %s named by the saved sweep state is gone (the driver stopped while "
                       "Tune replaced it); resuming from the newer %s", path, candidate)
        return candidate
    return None


def trainable_for(ctx: TrialContext) -> type:
    """The Tune trainable: ``run_trial`` with ``ctx``, restoring past a checkpoint Tune's state lost.

    See ``replace_missing_checkpoint``: the check runs on the worker, before Tune's own restore.
    """
    base = wrap_function(tune.with_parameters(run_trial, ctx=ctx))

    class RunTrial(base):  # type: ignore[misc, valid-type]
        def restore(self, checkpoint_path: Any) -> None:
            checkpoint = getattr(checkpoint_path, "checkpoint", None)  # Tune's _TrainingResult
            if checkpoint is not None and checkpoint.filesystem is not None:
                replace_missing_checkpoint(checkpoint.filesystem, checkpoint.path)
            return super().restore(checkpoint_path)

    return RunTrial


EVALUATED_METRIC = "test_loss"  # what the built-in trainer's worker logs last: absent, the trial was never evaluated


def _metric_hook(ctx: TrialContext, data: Dataset) -> Any:
    """What computes the sweep's metric after each epoch, unless the trainer reports it anyway."""
    return None if ctx.metric in epoch_metric_names(data.task) else val_metric(ctx.metric, data)


def _end_of_trial_metrics(result: Any, data: Dataset, ctx: TrialContext, run: TrialRun,
                          history: list[EpochMetrics] | None = None) -> dict[str, float]:
    """The test metrics, plots and diagnosis of a trained model (:func:`_evaluate`), less what
    the curves (``history``, default the result's) already hold at their last epoch (e.g.
    val_accuracy): those are not logged twice."""
    history = result.history if history is None else history
    curves = set(history[-1].as_dict()) if history else set()
    return {k: v for k, v in {**result.test, **_evaluate(result, data, ctx, run)}.items() if k not in curves}


def _trial_params(config: dict[str, Any], ctx: TrialContext) -> tuple[dict[str, Any], int | None]:
    """A trial's hyperparameters from Tune's config, and the split seed of a repeat that varies the split."""
    repeat = config.get(REPEAT_KEY)
    if repeat is None:
        return config, None
    return dict(repeat["params"]), (repeat["seed"] if ctx.data_config is not None else None)


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Train one configuration, reporting every epoch to Tune and to the trial's MLflow run."""
    cpu = _CpuClock()
    flush_denormals()  # before this thread loads data: the OpenMP workers it starts inherit it
    os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = str(thread_timeout_s(ctx.retry_seconds))
    trial_id = tune.get_context().get_trial_id()
    builtin = ctx.trainer == "mlp"
    trial_config = config
    repeat = config.get(REPEAT_KEY)
    config, split_seed = _trial_params(config, ctx)
    if repeat is not None:
        extra_tags = {T.STAGE: "repeat", T.CONFIG_ID: repeat["config_id"], T.SEED: str(repeat["seed"]),
                      T.SOURCE_TRIAL: repeat["source_trial"]}
        run_name = f"{repeat['config_id']}-seed{repeat['seed']}"
        if ctx.variant:
            run_name = f"{ctx.variant}-{run_name}"
    else:
        extra_tags = {T.STAGE: "search"}
        run_name = tune.get_context().get_trial_name()
        if ctx.variant:
            run_name = f"{ctx.variant}-{run_name}"
    cv_folds = ctx.cv_folds if builtin and repeat is None else None  # repeats train on the one split
    if cv_folds is not None:
        extra_tags[T.CV_FOLDS] = str(cv_folds)
    try:  # a combination the file could not rule out (e.g. a sampled warmup >= epochs) fails the trial
        params = MLPConfig(**config).model_dump() if builtin else dict(config)
        invalid = None
    except ValueError as e:
        params, invalid = dict(config), e
    if ctx.variant is not None:
        extra_tags[T.VARIANT] = ctx.variant
    extra_tags.update(_placement())
    restored = _restored_checkpoint()
    run = TrialRun.open(
        ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, ctx.sweep_name, ctx.sweep_id,
        trial_id, params, run_name=run_name, flush_seconds=ctx.flush_seconds, extra_tags=extra_tags,
        run_id=restored[1]["mlflow_run_id"] if restored else None, retry=ServerRetry(ctx.retry_seconds),
    )
    if restored:
        cpu.before = float(restored[1].get(T.CPU_SECONDS, 0.0))
        run.set_tags({T.RESUMED_FROM_EPOCH: restored[1]["epoch"]})
        # epochs the checkpoint holds but the run may lack: buffered when the worker died, or
        # waiting out a tracking-server outage
        run.log_history([EpochMetrics(**m).as_dict() for m in restored[0].get("history", [])])
        logger.info("trial %s resumes run %s after epoch %s", trial_id, run.run_id, restored[1]["epoch"])
    checkpoints = _Checkpoints(run.run_id, cpu, trial_config) if builtin and ctx.checkpoint_every > 0 else None
    last_epoch = 0
    stopped_by_tune = False
    ended_itself = False  # within-trial early stopping: a complete run, whatever the scheduler says
    planned = int(params.get("epochs") or ctx.max_epochs)

    def report(metrics: dict[str, Any]) -> None:
        nonlocal last_epoch, stopped_by_tune, ended_itself
        if ctx.metric not in metrics or "epoch" not in metrics:
            raise MetricNotReported(
                f"the trainer reported {sorted(metrics)}; the sweep's metric.name={ctx.metric!r} "
                "and 'epoch' must be among them"
            )
        value = metrics[ctx.metric]
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise FloatingPointError(f"epoch {metrics['epoch']}: {ctx.metric} is {value!r}")
        last_epoch = int(metrics["epoch"])
        ended_itself = bool(metrics.get(EARLY_STOPPED))
        run.log_epoch({**{k: v for k, v in metrics.items() if k != "epoch"}, T.CPU_SECONDS: cpu()}, epoch=last_epoch)
        try:
            tune.report(dict(metrics), checkpoint=checkpoints.take() if checkpoints else None)
        except SystemExit:  # Tune ends a stopped trial's thread with sys.exit inside report()
            stopped_by_tune = True
            raise StopTraining from None
        finally:
            if checkpoints:
                checkpoints.discard()

    try:
        if invalid is not None:
            raise invalid
        if builtin and cv_folds is not None:
            test = _cross_validated_trial(MLPConfig(**config), ctx, run, lambda m: report(m.as_dict()),
                                          checkpoints, restored[0] if restored else None)
        elif builtin:
            data = _dataset(ctx, split_seed)
            result = train(MLPConfig(**config), data, lambda m: report(m.as_dict()), threads=ctx.threads,
                           epoch_metrics=_metric_hook(ctx, data), checkpoint=checkpoints.save if checkpoints else None,
                           checkpoint_every=max(ctx.checkpoint_every, 1), resume=restored[0] if restored else None,
                           device=_device())
            test = _end_of_trial_metrics(result, data, ctx, run)
        else:
            try:
                test = resolve_trainer(ctx.trainer)(dict(config), report) or {}
            except StopTraining:
                test = {}
    except BaseException as e:
        if checkpoints:
            checkpoints.discard()
        run.log_metrics({}, step=last_epoch, totals={T.CPU_SECONDS: cpu()})
        run.finish(TrialStatus.FAILED, reason=f"{type(e).__name__}: {e}")
        raise
    run.log_metrics(test, step=last_epoch, totals={T.CPU_SECONDS: cpu()})  # the total: evaluation included
    if stopped_by_tune and last_epoch < planned and not ended_itself:
        run.finish(TrialStatus.STOPPED_EARLY, stopped_epoch=last_epoch)
    else:  # ASHA also "stops" a trial that reached max_t: that trial completed its budget
        run.finish(TrialStatus.COMPLETED)
    if stopped_by_tune:
        # Returning normally would make Tune report a final result that nobody collects,
        # and the thread would block; end it the way Tune expects.
        raise SystemExit(0)


def _latest_checkpoint(storage: Storage, trial_id: str, run_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The newest intact checkpoint of ``trial_id`` (of MLflow run ``run_id``) anywhere under the
    sweep's results folder: (trainer state, metadata), or None."""
    from pyarrow import fs as pafs

    if storage.filesystem is not None:
        fs, root = storage.filesystem, storage.path
    elif "://" in storage.path:
        fs, root = pafs.FileSystem.from_uri(storage.path)
    else:
        fs, root = pafs.LocalFileSystem(), storage.path
    candidates = []
    for experiment in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if experiment.type != pafs.FileType.Directory:
            continue
        for trial in fs.get_file_info(pafs.FileSelector(experiment.path)):
            if trial.type == pafs.FileType.Directory and trial.base_name.startswith(f"run_trial_{trial_id}_"):
                candidates.extend(_checkpoint_folders(fs, trial.path))
    for _, path in sorted(candidates, reverse=True):
        read = _read_checkpoint(fs, path)
        if read is not None and read[1].get("mlflow_run_id") == run_id:
            return read
    return None


def finish_lost_evaluations(tracker: SweepTracker, ctx: TrialContext, callback: _SweepCallback, storage: Storage,
                            stale: dict[str, str]) -> int:
    """Evaluate, on the driver, the trials an earlier execution's driver took down mid-evaluation.

    Tune ends a trial (ASHA stops it; it reaches ``max_t``) as soon as the worker reports the
    epoch, while the worker goes on to evaluate it on the test split, log its plots and close
    its run. A driver killed then takes the worker with it, and Tune's saved state has the trial
    finished: a resume never runs it again. Such a run is still RUNNING with the same
    ``sweep.restarts`` as when the resume began (``stale``), has an outcome in ``callback`` and
    no test metrics. From the trial's newest checkpoint (whose metadata holds Tune's config),
    training is replayed up to the epoch the trial ended at (deterministic: nothing if the
    checkpoint is of that epoch), then the model is evaluated as the worker would have, into
    the same run, which is closed with the trial's outcome. Returns how many were finished;
    the others (no checkpoint, cross-validated trials, user trainers) are left to
    :meth:`SweepTracker.reconcile`, which tags them ``sweep.unevaluated``.
    """
    if ctx.trainer != "mlp" or not stale:
        return 0
    from trainer.loop import drive, train_epochs

    finished = 0
    for found in tracker.child_runs():
        run_id, trial_id = found.info.run_id, found.data.tags.get(T.TRIAL_ID, "")
        outcome = callback.outcomes.get(trial_id)
        if (found.info.status != "RUNNING" or stale.get(run_id) != found.data.tags.get(T.RESTARTS, "0")
                or outcome is None or outcome[0] is TrialStatus.FAILED or EVALUATED_METRIC in found.data.metrics):
            continue
        latest = _latest_checkpoint(storage, trial_id, run_id)
        if latest is None or not latest[1].get("trial_config"):
            continue
        state, meta = latest
        trial_config = meta["trial_config"]
        if ctx.cv_folds is not None and REPEAT_KEY not in trial_config:
            continue  # a cross-validated trial's checkpoint holds k folds: left to reconcile
        config, split_seed = _trial_params(trial_config, ctx)
        try:
            run = TrialRun.open(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, ctx.sweep_name, ctx.sweep_id,
                                trial_id, {}, flush_seconds=ctx.flush_seconds, run_id=run_id,
                                extra_tags={T.RESUMED_FROM_EPOCH: meta["epoch"]}, retry=ServerRetry(ctx.retry_seconds))
            data = _dataset(ctx, split_seed)
            stop_after = outcome[1] if outcome[0] is TrialStatus.STOPPED_EARLY else None
            result = drive(train_epochs(MLPConfig(**config), data, threads=ctx.threads,
                                        epoch_metrics=_metric_hook(ctx, data), resume=state, stop_after=stop_after),
                           lambda m: run.log_epoch({k: v for k, v in m.as_dict().items() if k != "epoch"}, m.epoch))
            test = _end_of_trial_metrics(result, data, ctx, run)
            run.log_metrics(test, step=result.history[-1].epoch if result.history else 0)
            run.finish(outcome[0], stopped_epoch=outcome[1])
        except Exception as e:  # noqa: BLE001 - reconcile still closes the run, tagged unevaluated
            logger.warning("trial %s: could not finish its evaluation from its checkpoint (%s: %s)",
                           trial_id, type(e).__name__, e)
            continue
        logger.warning("trial %s: its worker died with the earlier driver before evaluating it; evaluated now "
                       "from its epoch-%s checkpoint", trial_id, meta["epoch"])
        finished += 1
    return finished


def _cross_validated_trial(config: MLPConfig, ctx: TrialContext, run: TrialRun, report: Any,
                           checkpoints: _Checkpoints | None, resume: dict[str, Any] | None) -> dict[str, float]:
    """Train the trial's folds in lockstep; the end-of-trial metrics to log.

    ``report`` gets the fold mean of every epoch (the curve Tune, ASHA and MLflow see). The
    checkpoint holds every fold's state. At the end: fold 1's model gives the test metrics, the
    plots and the diagnosis (:func:`_evaluate`, as a normal trial's model does), and
    ``cv_<m>_mean`` / ``cv_<m>_std`` summarize each final val metric and each test metric over
    the k folds (:meth:`trainer.crossval.CVResult.summary`).
    """
    folds = _fold_data(ctx)
    hooks = None if ctx.metric in epoch_metric_names(folds[0].task) else [val_metric(ctx.metric, f) for f in folds]
    cv = train_cv(config, folds, report, threads=ctx.threads, epoch_metrics=hooks,
                  checkpoint=checkpoints.save if checkpoints else None,
                  checkpoint_every=max(ctx.checkpoint_every, 1), resume=resume, device=_device())
    # the curves hold the fold means (e.g. val_accuracy); fold 1's values of those are not logged over them
    test = _end_of_trial_metrics(cv.folds[0], folds[0], ctx, run, history=cv.history)
    return {**test, **cv.summary()}


def _device() -> str | None:
    """The GPU Ray assigned to this trial (``CUDA_VISIBLE_DEVICES`` names only it), else None: the CPU."""
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return "cuda"
    return None


def _placement() -> dict[str, str]:
    """Where this trial runs: the Ray node, and its host name and IP."""
    context = ray.get_runtime_context()
    gpus = ",".join(str(g) for g in ray.get_gpu_ids())
    return {T.NODE_ID: context.get_node_id(), T.HOST: f"{platform.node()} ({ray.util.get_node_ip_address()})",
            T.WORKER_PID: str(os.getpid()), T.DEVICE: f"cuda (GPU {gpus})" if _device() else "cpu"}


def _evaluate(result: Any, data: Dataset, ctx: TrialContext, run: TrialRun) -> dict[str, float]:
    """Every metric, the diagnosis tags and the plots of a finished (or stopped) trial."""
    ev = ctx.evaluation
    evaluation = evaluate_trial(
        result, data, reference_error=ev.reference_error, overfit_patience=ev.overfit_patience,
        thresholds=DiagnosisThresholds(high_bias=ev.high_bias, high_variance=ev.high_variance),
    )
    kept = result.model_epoch if result.early_stopped_epoch is not None else None  # the weights kept
    files = trial_artifacts(evaluation, early_stop_epoch=kept,
                            stopped_epoch=result.stopped_epoch, embedding=ev.embedding)
    run.retry.call("log_artifacts", log_files, run.client, run.run_id, files)
    run.set_tags(evaluation.tags)
    return evaluation.metrics


class _WaitForTrialThread:
    """Mixin for the function trainable: let a trial finish closing its MLflow run.

    When an experiment ends, Tune stops cached actors with ``session.finish(timeout=0)``
    and the actor exits while the trial's thread may still be writing its final metrics
    and status. Joining the thread first (bounded) keeps those writes.
    """

    def cleanup(self) -> None:
        from ray.train._internal.session import get_session  # Tune's own session (no public handle)

        session = get_session()
        thread = getattr(session, "training_thread", None)
        if session is not None and thread is not None and thread.is_alive():
            try:
                timeout = float(os.environ.get("TUNE_FUNCTION_THREAD_TIMEOUT_S", MIN_THREAD_TIMEOUT_S))
                session.finish(timeout=timeout)
            except BaseException:  # noqa: BLE001 - the trial's own error is reported by super()
                pass
        super().cleanup()  # type: ignore[misc]


run_trial.__mixins__ = (_WaitForTrialThread,)  # type: ignore[attr-defined]


# ---- the searcher -----------------------------------------------------------------------------
class SweepOptunaSearch(OptunaSearch):
    """OptunaSearch that steps on ``epoch`` and tells Optuna the real outcome of each trial."""

    def __init__(self, spec: SweepSpec, study_name: str, concurrent: int):
        super().__init__(
            space=functools.partial(_constants_only, spec=spec),  # picklable: Tune saves the searcher
            metric=spec.metric.name,
            mode=spec.metric.mode,
            sampler=make_sampler(spec, concurrent),
            study_name=study_name,
        )
        self._planned_epochs: dict[str, int] = {}
        self._default_epochs = spec.max_epochs()

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is not None:
            self._planned_epochs[trial_id] = int(config.get("epochs", self._default_epochs))
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or self.metric not in result:
            return
        self._ot_trials[trial_id].report(result[self.metric], int(result.get("epoch", 0)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        value = (result or {}).get(self.metric)
        if error or value is None or not math.isfinite(value):
            state, value = optuna.trial.TrialState.FAIL, None
        elif (int((result or {}).get("epoch", 0)) < self._planned_epochs.get(trial_id, 0)
              and not (result or {}).get(EARLY_STOPPED)):
            state, value = optuna.trial.TrialState.PRUNED, None
        else:
            state = optuna.trial.TrialState.COMPLETE
        self._ot_study.tell(ot_trial, value, state=state)
        self._completed_trials.add(trial_id)


def _constants_only(trial: optuna.Trial, spec: SweepSpec) -> dict[str, Any]:
    chosen = suggest(trial, spec)
    return {k: v for k, v in chosen.items() if k not in trial.params}


def count_statuses(outcomes: Iterable[tuple[TrialStatus, int | None, str | None]]) -> dict[TrialStatus, int]:
    """How many trials ended each way."""
    counts = dict.fromkeys(TrialStatus, 0)
    for status, _, _ in outcomes:
        counts[status] += 1
    return counts


# ---- progress and outcomes, on the driver -----------------------------------------------------
class _SweepCallback(tune.Callback):
    def __init__(self, spec: SweepSpec, sink: ProgressSink, total: int | None = None, stage: str = "search"):
        self.spec = spec
        self.total = total if total is not None else spec.num_trials()
        self.stage = stage
        self.sink = sink
        self.metric = spec.metric.name
        self.sign = 1.0 if spec.metric.goal == "maximize" else -1.0
        self.outcomes: dict[str, tuple[TrialStatus, int | None, str | None]] = {}
        self.running: set[str] = set()
        self.last: dict[str, dict[str, Any]] = {}
        self.best: tuple[float, str, dict[str, Any]] | None = None
        self.best_completed: tuple[float, str, dict[str, Any]] | None = None
        self.planned = spec.max_epochs()
        self.completed_values: dict[str, tuple[float, dict[str, Any]]] = {}

    def ranked_completed(self) -> list[tuple[str, dict[str, Any]]]:
        """Trials that ran their full budget, best final metric first: (trial_id, config)."""
        ranked = sorted(self.completed_values.items(), key=lambda kv: -kv[1][0])
        return [(trial_id, config) for trial_id, (_, config) in ranked]

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; a live display cannot travel.
        return {**self.__dict__, "sink": None}

    _STATE = ("outcomes", "last", "best", "best_completed", "completed_values")

    def get_state(self) -> dict[str, Any]:
        """What a resumed sweep needs of the trials that ended before the driver stopped."""
        return {key: getattr(self, key) for key in self._STATE}

    def set_state(self, state: dict[str, Any]) -> None:
        for key in self._STATE:
            setattr(self, key, state[key])

    def _emit(self, event: str) -> None:
        if self.sink is None:
            return
        best = self.best_completed or self.best
        counts = count_statuses(self.outcomes.values())
        self.sink.update(SweepSnapshot(
            name=self.spec.name, metric=self.metric, goal=self.spec.metric.goal,
            total=self.total, completed=counts[TrialStatus.COMPLETED],
            stopped_early=counts[TrialStatus.STOPPED_EARLY], failed=counts[TrialStatus.FAILED],
            running=len(self.running), best_value=best[0] * self.sign if best else None,
            best_trial=best[1] if best else None, best_config=best[2] if best else {},
            last_event=f"{self.stage}: {event}" if self.stage != "search" else event,
        ))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._emit(f"trial {trial.trial_id} started")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.last[trial.trial_id] = result
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            if self.best is None or value * self.sign > self.best[0]:
                self.best = (value * self.sign, trial.trial_id, dict(trial.config))
        self._emit(f"trial {trial.trial_id} epoch {result.get('epoch')}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        result = self.last.get(trial.trial_id) or trial.last_result or {}
        epoch = int(result.get("epoch", 0))
        config = trial.config.get(REPEAT_KEY, {}).get("params", trial.config)
        planned = int(config.get("epochs", self.planned))
        if epoch < planned and not result.get(EARLY_STOPPED):
            self.outcomes[trial.trial_id] = (TrialStatus.STOPPED_EARLY, epoch, None)
        else:
            self.outcomes[trial.trial_id] = (TrialStatus.COMPLETED, None, None)
            value = result.get(self.metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.completed_values[trial.trial_id] = (value * self.sign, dict(config))
                if self.best_completed is None or value * self.sign > self.best_completed[0]:
                    self.best_completed = (value * self.sign, trial.trial_id, dict(config))
        self._emit(f"trial {trial.trial_id} {self.outcomes[trial.trial_id][0].value}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.outcomes[trial.trial_id] = (TrialStatus.FAILED, None, _error_reason(trial, "the trial raised an error"))
        self._emit(f"trial {trial.trial_id} failed")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Count as failed every trial that Tune ended in ERROR without telling its callbacks.

        Ray Tune 2.60 errors a trial whose reused actor could not be reset (the previous trial's
        thread had not finished within ``TUNE_FUNCTION_THREAD_TIMEOUT_S``) without calling
        ``on_trial_error`` and without its retries. Left uncounted, such a trial kept the stage
        from ever completing: the sweep ended "interrupted", and so did every ``sweep resume``.
        """
        for trial in trials:
            if trial.trial_id in self.outcomes or getattr(trial, "status", None) != "ERROR":
                continue
            self.running.discard(trial.trial_id)
            reason = _error_reason(trial, "Tune ended the trial in error")
            logger.warning("trial %s ended in error without a report from Tune (%s): counted as failed",
                           trial.trial_id, reason)
            self.outcomes[trial.trial_id] = (TrialStatus.FAILED, None, reason)
            self._emit(f"trial {trial.trial_id} failed")


def _error_reason(trial: Any, default: str) -> str:
    """The last line of what Tune recorded for an errored trial (its error file), else ``default``."""
    text = str(getattr(trial, "error_msg", None) or "")
    if not text.strip():
        try:
            path = getattr(trial, "error_file", None)
            text = Path(path).read_text() if path else ""
        except OSError:
            text = ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip()[:2000] if lines else default


# ---- the builder ------------------------------------------------------------------------------
def new_sweep_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def _ensure_ray(num_cpus: int | None = None) -> None:
    """Start a local Ray unless one is running. Workers can import from the current directory,
    as the driver can, so ``trainer: mypkg.train:fn`` works from a project folder."""
    if not ray.is_initialized():
        pythonpath = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=True,
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        )


def run_sweep(
    spec: SweepSpec,
    *,
    source_text: str | None = None,
    progress: ProgressSink | None = None,
    results_dir: str | Path | None = None,
    resume: ResumeTarget | None = None,
) -> SweepOutcome:
    """Run a validated sweep end to end and return its outcome.

    The search comes first; with a ``repeats:`` block, the best configurations are then
    re-run over fresh seeds and summarized. The dataset is loaded before anything is
    recorded, so a missing data file fails without creating a run. No MLflow run is left
    RUNNING when this returns, also when the sweep is interrupted with Ctrl-C.

    With ``resume`` (from :func:`sweeps.resume.find_resumable`), the interrupted execution
    continues: same sweep id and parent run; each stage's Tune experiment is restored
    (finished trials are not re-run; unfinished ones continue from their checkpoints into
    their own runs); stages that had not started run now.
    """
    started = time.perf_counter()
    sink = progress or LoggingProgress()
    data = load_dataset(spec.data)
    uri = resolve_tracking_uri(spec.tracking.uri)
    sweep_id = resume.sweep_id if resume else new_sweep_id()
    results_dir = resume.results_dir if resume else _absolute(str(results_dir or spec.storage.path))
    storage = Storage.of(results_dir, spec.storage.endpoint_url)
    tracker = SweepTracker(uri, spec.experiment_name(), spec.name, sweep_id)
    if resume:
        parent = tracker.reopen(resume.parent_run_id, {DRIVER_TAG: driver_tag()})
        record_added_variants(tracker, resume, spec, source_text)
    else:
        parent = _start_parent(tracker, spec, source_text, results_dir)
    # the trials earlier executions finished: an interruption or failure of this one leaves them be
    settled = tracker.settled_runs() if resume else set()
    evaluated = EVALUATED_METRIC if spec.trainer == "mlp" else None
    # runs the earlier driver left open, with how often they had been reopened: a worker of this
    # execution that continues one reopens it; the others lost their worker for good
    stale = ({r.info.run_id: r.data.tags.get(T.RESTARTS, "0") for r in tracker.child_runs()
              if r.info.status == "RUNNING"} if resume else {})

    callbacks: list[_SweepCallback] = []
    searches: dict[str | None, _SweepCallback] = {}
    status = "failed"
    fitted = False
    summaries: list[ConfigSummary] = []
    summarized: dict[str | None, list[ConfigSummary]] = {}  # stages summarized in this execution
    if spec.variants:
        tracker.set_tags({T.BASELINE_VARIANT: spec.baseline()})
    try:
        _ensure_ray()
        data_ref = ray.put(data)
        complete = True
        for variant, vspec in spec.variant_specs():
            ctx = TrialContext(
                sweep_name=spec.name, sweep_id=sweep_id, tracking_uri=uri, experiment_id=tracker.experiment_id,
                parent_run_id=parent, trainer=spec.trainer, metric=spec.metric.name,
                max_epochs=vspec.max_epochs(), threads=max(1, int(spec.resources.cpus_per_trial)),
                flush_seconds=spec.tracking.flush_seconds, evaluation=spec.evaluation, data_ref=data_ref,
                data_config=spec.data if spec.repeats is not None and spec.repeats.vary_split else None,
                variant=variant, checkpoint_every=spec.fault_tolerance.checkpoint_every,
                retry_seconds=spec.tracking.retry_seconds,
                cv_folds=spec.cross_validation.folds if spec.cross_validation else None,
                cv_data=spec.data if spec.cross_validation else None,
            )
            search = _SweepCallback(vspec, sink, stage=f"{variant}: search" if variant else "search")
            searches[variant] = search
            callbacks.append(search)
            complete = _search(vspec, ctx, search, storage, sweep_id, variant, restore=resume is not None) \
                and complete
            finish_lost_evaluations(tracker, ctx, search, storage, stale)
            if not complete:
                break
            if vspec.repeats is not None:
                points = repeat_points(vspec, search.ranked_completed())
                repeats = _SweepCallback(vspec, sink, total=len(points),
                                         stage=f"{variant}: repeats" if variant else "repeats")
                callbacks.append(repeats)
                suffix = f"-{variant}" if variant else ""
                _fit(vspec, ctx, repeats, storage, f"{spec.name}-{sweep_id}{suffix}-repeats",
                     tune_config=tune.TuneConfig(num_samples=1,
                                                 max_concurrent_trials=spec.resources.max_concurrent_trials,
                                                 reuse_actors=True),
                     param_space={REPEAT_KEY: tune.grid_search(points)}, restore=resume is not None)
                complete = len(repeats.outcomes) >= len(points)
                finish_lost_evaluations(tracker, ctx, repeats, storage, stale)
                if not complete:
                    break
                # this stage's statistics as soon as its seeds are in, not only when the whole study
                # ends: a study of many variants that is stopped later keeps them (at the end a
                # summary run is updated, never duplicated). No trial runs between stages, so the
                # runs still open are this stage's, closing
                tracker.reconcile({k: v for cb in callbacks for k, v in cb.outcomes.items()}, wait_seconds=10.0,
                                  evaluation_metric=evaluated)
                summarized[variant] = summarize_repeats(tracker, spec, variant)
        fitted = True
        status = "completed" if complete else "interrupted"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        outcomes = {k: v for cb in callbacks for k, v in cb.outcomes.items()}
        closed = tracker.reconcile(outcomes, wait_seconds=10.0 if fitted else 2.0, evaluation_metric=evaluated)
        if closed:
            logger.warning("closed %d trial run(s) that their workers left RUNNING", closed)
        if status != "completed":
            tracker.mark_interrupted(set(outcomes), settled)
        elif resume is not None:
            tracker.retire_orphans(set(outcomes))
        if status == "completed" and spec.repeats is not None:
            for variant, _ in spec.variant_specs():  # a completed execution summarized every stage
                summaries.extend(summarized[variant])
        main_search = searches.get(spec.baseline()) or next(iter(searches.values()), None)
        best_tags = _best_tags(tracker, spec, main_search, summaries) if main_search else {}
        tracker.log_metrics({f"trials_{s.value}": n for s, n in count_statuses(outcomes.values()).items()})
        tracker.finish(status, best_tags)

    search = main_search or _SweepCallback(spec, sink)
    best_cfg = search.best_completed or search.best
    searched = count_statuses(o for cb in searches.values() for o in cb.outcomes.values())
    snapshot = SweepSnapshot(
        name=spec.name, metric=spec.metric.name, goal=spec.metric.goal, total=spec.total_trials(),
        completed=searched[TrialStatus.COMPLETED], stopped_early=searched[TrialStatus.STOPPED_EARLY],
        failed=searched[TrialStatus.FAILED],
        best_value=best_cfg[0] * search.sign if best_cfg else None,
        best_trial=best_cfg[1] if best_cfg else None, best_config=best_cfg[2] if best_cfg else {},
        last_event=f"sweep {status}",
    )
    return SweepOutcome(
        sweep_id=sweep_id, parent_run_id=parent, experiment_id=tracker.experiment_id, tracking_uri=uri,
        status=status, snapshot=snapshot, best_run_id=best_tags.get(T.BEST_RUN),
        trial_statuses={k: v[0].value for cb in searches.values() for k, v in cb.outcomes.items()},
        wall_seconds=time.perf_counter() - started, summaries=summaries,
    )


def _start_parent(tracker: SweepTracker, spec: SweepSpec, source_text: str | None,
                  results_dir: str) -> str:
    """Create the parent run with the sweep's params, its file, resolved spec and environment."""
    parent = tracker.start(spec.description, params={
        "search.algorithm": spec.search.algorithm, "search.trials": spec.num_trials(),
        "search.seed": spec.search.seed, "metric": f"{spec.metric.name} ({spec.metric.goal})",
        "early_stopping": spec.early_stopping.type, "data.dataset": spec.data.dataset,
        "trainer": spec.trainer,
        "repeats": f"top {spec.repeats.top_k} x {spec.repeats.seeds} seeds" if spec.repeats else "none",
        "cross_validation": f"{spec.cross_validation.folds} folds" if spec.cross_validation else "none",
    })
    tracker.set_tags({T.METRIC: f"{spec.metric.name}:{spec.metric.goal}", RESULTS_DIR_TAG: results_dir,
                      DRIVER_TAG: driver_tag()})
    log_spec(tracker, spec, source_text)
    tracker.log_text(json.dumps(_environment(spec.trainer == "mlp"), indent=2), "environment.json")
    return parent


def _search(spec: SweepSpec, ctx: TrialContext, callback: _SweepCallback, storage: Storage,
            sweep_id: str, variant: str | None, restore: bool = False) -> bool:
    """The search stage of one variant; True when every trial finished."""
    es = spec.early_stopping
    scheduler = (
        ASHAScheduler(time_attr="epoch", max_t=spec.max_epochs(), grace_period=es.grace_period,
                      reduction_factor=es.reduction_factor)
        if isinstance(es, ASHASpec) else FIFOScheduler()
    )
    concurrent = spec.resources.max_concurrent_trials
    name = f"{spec.name}-{sweep_id}" + (f"-{variant}" if variant else "")
    # each variant gets the same budget and search seed, in its own study: a fair comparison
    _fit(spec, ctx, callback, storage, name, tune_config=tune.TuneConfig(
        metric=spec.metric.name, mode=spec.metric.mode,
        search_alg=SweepOptunaSearch(spec, study_name=name, concurrent=concurrent),
        scheduler=scheduler, num_samples=spec.num_trials(),
        max_concurrent_trials=concurrent, reuse_actors=True,
    ), restore=restore)
    return len(callback.outcomes) >= spec.num_trials()


def _absolute(path: str) -> str:
    """Local folders are made absolute (workers run elsewhere); URIs stay as they are."""
    return path if "://" in path else str(Path(path).resolve())


@dataclass(frozen=True)
class Storage:
    """Tune's ``storage_path`` and, for S3-compatible stores, the file system that reaches them."""

    uri: str  # what the user gave (absolute folder or s3://bucket/prefix): recorded on the parent run
    path: str  # the path Tune gets
    filesystem: Any = None  # pyarrow.fs.FileSystem, or None: Tune resolves the path itself

    @classmethod
    def of(cls, uri: str, endpoint_url: str | None = None) -> Storage:
        """``s3://`` with an endpoint goes through a path-style S3 client for that endpoint.

        Credentials come from the standard AWS variables (``AWS_ACCESS_KEY_ID``, ...), on the
        driver and on every worker.
        """
        if not uri.startswith("s3://") or endpoint_url is None:
            return cls(uri, uri)
        from urllib.parse import urlparse

        from pyarrow import fs

        endpoint = urlparse(endpoint_url)
        s3 = fs.S3FileSystem(endpoint_override=endpoint.netloc, scheme=endpoint.scheme,
                             region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
        return cls(uri, uri[len("s3://"):].rstrip("/"), s3)

    def experiment(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"


def _fit(spec: SweepSpec, ctx: TrialContext, callback: _SweepCallback, storage: Storage, name: str,
         tune_config: tune.TuneConfig, param_space: dict[str, Any] | None = None, restore: bool = False) -> None:
    """Run one stage as the Tune experiment ``name`` in ``storage``; with ``restore``, continue it if it exists."""
    trainable = tune.with_resources(
        trainable_for(ctx),
        {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial},
    )
    path = storage.experiment(name)
    if restore and tune.Tuner.can_restore(path, storage_filesystem=storage.filesystem):
        # finished trials stay finished; unfinished ones continue from their checkpoints; errored
        # ones already used their retries. The searcher's and our callback's state come back too.
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                   storage_filesystem=storage.filesystem)
        # No public way to give a restored Tuner new callbacks (Ray 2.60): its run config is the
        # unpickled one, whose callback has no live display; ours replaces it, and Tune restores
        # the state it saved into ours (get_state / set_state).
        tuner._local_tuner.get_run_config().callbacks = [callback]
        logger.info("restored Tune experiment %s", path)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune_config,
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage.path,
                storage_filesystem=storage.filesystem,
                verbose=0,
                callbacks=[callback],
                failure_config=tune.FailureConfig(max_failures=spec.fault_tolerance.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the latest state is all a retry needs
            ),
        )
    tuner.fit()


# ---- repeats ----------------------------------------------------------------------------------
def repeat_points(spec: SweepSpec, ranked: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One Tune config per (top configuration, seed). ``ranked``: best first, (trial_id, params)."""
    assert spec.repeats is not None
    top = ranked[: spec.repeats.top_k]
    if len(top) < spec.repeats.top_k:
        logger.warning("repeats.top_k=%d but only %d search trials completed: repeating those",
                       spec.repeats.top_k, len(top))
    return [
        {"params": {**params, "seed": seed}, "config_id": f"rank{rank}", "seed": seed, "source_trial": trial_id}
        for rank, (trial_id, params) in enumerate(top, start=1)
        for seed in spec.repeats.seed_values()
    ]


@dataclass(frozen=True)
class ConfigSummary:
    """A repeated configuration: its params, seeds and per-metric summaries."""

    config_id: str
    source_trial: str
    run_id: str
    seeds: list[int]
    summaries: dict[str, Summary]
    variant: str | None = None


def summarize_repeats(tracker: SweepTracker, spec: SweepSpec, variant: str | None = None) -> list[ConfigSummary]:
    """Mean, SD, SE and a Student-t CI of every final metric over each configuration's seeds.

    Read back from MLflow, so the summaries agree with the runs they summarize. Each
    configuration gets a summary child run (``sweep.stage=summary``).
    """
    assert spec.repeats is not None
    by_config: dict[str, list[Any]] = {}
    for run in tracker.child_runs():
        t = run.data.tags
        if (t.get(T.STAGE) == "repeat" and t.get(T.TRIAL_STATUS) == T.COMPLETED
                and t.get(T.VARIANT) == variant):
            by_config.setdefault(t[T.CONFIG_ID], []).append(run)
    out = []
    for config_id in sorted(by_config, key=lambda c: int(c.removeprefix("rank"))):
        runs = sorted(by_config[config_id], key=lambda r: int(r.data.tags[T.SEED]))
        keys = sorted({k for r in runs for k in r.data.metrics if k.split("_")[0] in ("train", "val", "test")})
        summaries = {}
        for key in keys:
            values = [r.data.metrics[key] for r in runs if key in r.data.metrics]
            if any(math.isfinite(v) for v in values):
                summaries[key] = summarize(values, spec.repeats.confidence)
        params = {k: v for k, v in runs[0].data.params.items() if k != "seed"}
        source = runs[0].data.tags.get(T.SOURCE_TRIAL, "")
        metrics = {m: v for key, s in summaries.items() for m, v in s.as_metrics(key).items()}
        seeds = [int(r.data.tags[T.SEED]) for r in runs]
        run_id = tracker.log_summary_run(config_id, source, params, metrics, seeds=seeds, variant=variant)
        out.append(ConfigSummary(config_id, source, run_id, seeds, summaries, variant))
    return out


def _best_tags(tracker: SweepTracker, spec: SweepSpec, search: _SweepCallback,
               summaries: list[ConfigSummary]) -> dict[str, Any]:
    best = search.best_completed or search.best
    if best is None:
        return {}
    run = next((r for r in tracker.child_runs() if r.data.tags.get(T.TRIAL_ID) == best[1]), None)
    if run is None:
        return {}
    tags_out = {T.BEST_TRIAL: best[1], T.BEST_RUN: run.info.run_id}
    value = run.data.metrics.get(spec.metric.name)
    metrics = {f"best_{spec.metric.name}": value} if value is not None else {}
    mine = [c for c in summaries if c.variant == spec.baseline()]
    if mine:
        top = mine[0]
        tags_out[T.BEST_SUMMARY_RUN] = top.run_id
        for key in ("test_accuracy", "test_loss", spec.metric.name):
            if key in top.summaries:
                metrics.update({f"repeat_{k}": v for k, v in top.summaries[key].as_metrics(key).items()})
    tracker.log_metrics(metrics)
    return tags_out


def _environment(builtin_trainer: bool = True) -> dict[str, str]:
    import mlflow
    import torch

    from trainer import fused

    return {
        "python": platform.python_version(), "platform": platform.platform(), "ray": ray.__version__,
        "optuna": optuna.__version__, "mlflow": mlflow.__version__, "torch": torch.__version__,
        # the built-in MLP's path: fused kernels in the C++ or Python node, or PyTorch's layers (the
        # driver's, built here before the first trial; workers on the same image agree)
        "trainer_kernels": fused.status() if builtin_trainer else "not used (a user trainer)",
    }


