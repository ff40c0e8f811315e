"""k-fold cross-validation of one configuration, the folds trained in lockstep.

The test split is held out exactly as :func:`trainer.data.load_dataset` holds it out;
the rest (train + validation, the *pool*) is cut into ``k`` folds with ``data.split_seed``
(``StratifiedKFold`` for classification, ``KFold`` for regression, both shuffled). Fold ``i``
trains on the other k - 1 folds, normalized on them only, and validates on fold ``i``; every
fold is tested on the same test split (normalized with its own training statistics).

:func:`train_folds` trains the k folds **in lockstep**: epoch e of every fold, then the
fold mean of epoch e is yielded (so a scheduler judges the fold-mean curve, and a stop costs
only the epochs run). The fold mean of epoch e is, for every epoch metric m (``val_loss``,
``train_accuracy``, ``lr``, an extra metric such as ``val_f1_macro``, ...):

    mean_e(m) = (1 / k) * sum_i m_i(min(e, last_i))

where ``last_i`` is the last epoch fold i trained: a fold whose early-stopping patience ran
out stops training and keeps its last epoch's metrics in the mean until every fold stopped.
``epoch_seconds`` is the exception: the *sum* over the folds trained in epoch e (the wall time
of the lockstep epoch). The fold mean carries :data:`trainer.loop.EARLY_STOPPED` when every
fold has stopped by patience. Folds share the config and its seed: the same initial weights
(global torch RNG seeded per fold) and the same data-order seed; a fold trained in lockstep is
bit-identical to the same fold trained alone with :func:`trainer.loop.train`.

At the end (:meth:`CVResult.summary`), over the k folds: the mean and sample standard deviation
(n - 1) of each final ``val_*`` metric (of the weights each fold ends with: the best epoch's
with ``restore_best_weights``) and of each test metric.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.config import MLPConfig
from trainer.data import IDX_DATASETS, DataConfig, Dataset, RawData, assemble, load_raw, split_pool_and_test
from trainer.loop import (
    EARLY_STOPPED,
    Checkpoint,
    EpochMetrics,
    Epochs,
    Report,
    TrainResult,
    TrainState,
    drive,
    epoch_metric_names,
    train_epochs,
)

logger = logging.getLogger(__name__)

CV_STATE_VERSION = 1
CV_KIND = "cross_validation"  # the "kind" of a train_folds state (a plain train state has none)
EpochHook = Callable[[nn.Module], dict[str, float]]

# Training-pool size and smallest class count of the IDX datasets' official training split,
# so a sweep file is checked without reading (or downloading) them.
IDX_POOL_COUNTS: dict[str, tuple[int, int]] = {"mnist": (60_000, 5_421), "fashion_mnist": (60_000, 6_000)}


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k={k!r}: cross-validation needs an integer number of folds >= 2")
    return k


def fold_problem(k: int, n_pool: int, smallest_class: int | None) -> str | None:
    """Why ``k`` folds cannot be cut from a pool of ``n_pool`` samples, or None.

    ``smallest_class``: the smallest class count of a classification pool (a stratified fold
    must be able to hold a sample of every class), None for regression.

    Example:
        >>> fold_problem(5, 100, 3)
        'stratified folds need folds <= 3, the sample count of the smallest class in the pool (train + validation, 100 samples)'
    """
    if k > n_pool:
        return f"more folds than the {n_pool} samples of the pool (train + validation) they are cut from"
    if smallest_class is not None and k > smallest_class:
        return (f"stratified folds need folds <= {smallest_class}, the sample count of the smallest class "
                f"in the pool (train + validation, {n_pool} samples)")
    return None


def _pool_counts(task: str, y_pool: np.ndarray) -> tuple[int, int | None]:
    if task == "regression":
        return len(y_pool), None
    counts = np.unique(y_pool, return_counts=True)[1]
    return len(y_pool), int(counts.min()) if len(counts) else 0


def pool_counts(data_config: DataConfig) -> tuple[int, int | None]:
    """(samples in the pool, smallest class count or None for regression) of a data block.

    The IDX datasets' counts are known (their official training split); the others are read.
    """
    if data_config.dataset in IDX_DATASETS:
        return IDX_POOL_COUNTS[data_config.dataset]
    raw = load_raw(data_config)
    _, y_pool, _, _ = split_pool_and_test(raw, data_config)
    return _pool_counts(raw.task, y_pool)


def fold_datasets(data_config: DataConfig, k: int, raw: RawData | None = None) -> list[Dataset]:
    """The k cross-validation datasets: fold i validates on the i-th part of the pool.

    Raises:
        ValueError: ``k`` is not an integer >= 2, or the pool cannot be cut into k folds.
    """
    _check_k(k)
    from sklearn.model_selection import KFold, StratifiedKFold

    raw = raw if raw is not None else load_raw(data_config)
    x_pool, y_pool, x_test, y_test = split_pool_and_test(raw, data_config)
    why = fold_problem(k, *_pool_counts(raw.task, y_pool))
    if why:
        raise ValueError(f"k={k}: {why}")
    splitter = (
        KFold(n_splits=k, shuffle=True, random_state=data_config.split_seed) if raw.task == "regression"
        else StratifiedKFold(n_splits=k, shuffle=True, random_state=data_config.split_seed)
    )
    return [
        assemble(raw, data_config, (x_pool[train_idx], y_pool[train_idx]), (x_pool[val_idx], y_pool[val_idx]),
                 (x_test, y_test))
        for train_idx, val_idx in splitter.split(x_pool, y_pool)
    ]


@dataclass
class CVResult:
    """The k folds' results and the fold-mean learning curve."""

    folds: list[TrainResult]
    history: list[EpochMetrics] = field(default_factory=list)  # the fold mean, one entry per lockstep epoch
    stopped_epoch: int | None = None  # set when the caller stopped the folds (send(True) / StopTraining)

    @property
    def k(self) -> int:
        return len(self.folds)

    @property
    def early_stopped_epoch(self) -> int | None:
        """The epoch the last fold stopped by patience, when every fold did; else None."""
        ends = [f.early_stopped_epoch for f in self.folds]
        return max(ends) if ends and all(e is not None for e in ends) else None  # type: ignore[type-var]

    def fold_val_metrics(self) -> list[dict[str, float]]:
        """Each fold's final ``val_*`` metrics (of the weights it ends with)."""
        return [{k: v for k, v in f.final_metrics.as_dict().items() if k.startswith("val_")} for f in self.folds]

    def summary(self) -> dict[str, float]:
        """``cv_<m>_mean`` and ``cv_<m>_std`` (sample SD, n - 1) over folds.

        For every final ``val_*`` metric m of the folds (e.g. ``cv_val_accuracy_mean``) and every
        test metric (``cv_test_accuracy_mean``, ...).
        """
        out: dict[str, float] = {}
        for per_fold in (self.fold_val_metrics(), [f.test for f in self.folds]):
            for name in per_fold[0]:
                values = [m[name] for m in per_fold if name in m]
                if len(values) == len(per_fold):
                    out[f"cv_{name}_mean"] = float(np.mean(values))
                    out[f"cv_{name}_std"] = statistics.stdev(values)
        return out


def _fold_mean(epoch: int, latest: Sequence[EpochMetrics], trained: Sequence[EpochMetrics],
               all_stopped: bool) -> EpochMetrics:
    """The fold mean of one lockstep epoch (see the module docstring)."""
    values: dict[str, Any] = {"epoch": epoch}
    for f in fields(EpochMetrics):
        if f.name in ("epoch", "extra", "epoch_seconds"):
            continue
        present = [getattr(m, f.name) for m in latest if getattr(m, f.name) is not None]
        if len(present) == len(latest):
            mean = float(np.mean(present))
            values[f.name] = round(mean) if f.name == "batch_size" else mean
    values["epoch_seconds"] = float(sum(m.epoch_seconds for m in trained))
    names = [n for n in latest[0].extra if n != EARLY_STOPPED]
    extra = {n: float(np.mean([m.extra[n] for m in latest])) for n in names if all(n in m.extra for m in latest)}
    if all_stopped:
        extra[EARLY_STOPPED] = 1.0
    return EpochMetrics(**values, extra=extra)


def train_folds(
    config: MLPConfig,
    folds: Sequence[Dataset],
    *,
    threads: int | None = None,
    epoch_metrics: Sequence[EpochHook | None] | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 1,
    resume: TrainState | None = None,
    device: str | torch.device | None = None,
) -> Epochs[CVResult]:
    """Train ``config`` on every fold in lockstep: a generator of the fold-mean :class:`EpochMetrics`.

    The protocol of :func:`trainer.loop.train_epochs`: each ``next`` / ``send(False)`` trains
    one epoch of every fold still training and yields the fold mean; ``send(True)`` stops every
    fold after that epoch (a fold whose patience ran out at that epoch ends as early-stopped);
    the generator returns a :class:`CVResult`. :func:`train_cv` drives it with a ``report``.

    Args:
        folds: from :func:`fold_datasets` (at least 2).
        epoch_metrics: one hook per fold (each computes on its own fold's validation split).
        checkpoint: receives, after every ``checkpoint_every``-th lockstep epoch and before that
            epoch is yielded, one state holding every fold's state (a fold that already stopped:
            its final state) and the fold-mean curve. ``resume=`` that state continues all folds
            exactly, as :func:`trainer.loop.train` does for one run.

    Raises:
        ValueError: fewer than 2 folds, a hook list of another length, a state that is not a
            cross-validation state of as many folds, or anything :func:`train_epochs` refuses.
    """
    k = len(folds)
    if k < 2:
        raise ValueError(f"folds: {k} given; cross-validation needs >= 2")
    hooks = list(epoch_metrics) if epoch_metrics is not None else [None] * k
    if len(hooks) != k:
        raise ValueError(f"epoch_metrics: {len(hooks)} hooks for {k} folds; give one per fold")
    fold_states: list[TrainState | None] = [None] * k
    if resume is not None:
        if resume.get("kind") != CV_KIND or resume.get("version") != CV_STATE_VERSION:
            raise ValueError(f"checkpoint kind={resume.get('kind')!r} version={resume.get('version')!r}: not a "
                             f"cross-validation state (kind {CV_KIND!r}, version {CV_STATE_VERSION})")
        if len(resume["folds"]) != k:
            raise ValueError(f"the checkpoint holds {len(resume['folds'])} folds; this run has {k}")
        fold_states = list(resume["folds"])
    latest_states: list[TrainState | None] = list(fold_states)

    def keep(i: int) -> Checkpoint:
        return lambda state: latest_states.__setitem__(i, state)

    gens = [
        train_epochs(config, fold, threads=threads, epoch_metrics=hooks[i],
                     checkpoint=keep(i) if checkpoint is not None else None, checkpoint_every=checkpoint_every,
                     resume=fold_states[i], device=device, checkpoint_finished=True)
        for i, fold in enumerate(folds)
    ]
    history = [EpochMetrics(**m) for m in resume["history"]] if resume is not None else []
    return _lockstep(gens, history, checkpoint, checkpoint_every, latest_states)


def _lockstep(gens: list[Epochs[TrainResult]], history: list[EpochMetrics], checkpoint: Checkpoint | None,
              checkpoint_every: int, latest_states: list[TrainState | None]) -> Epochs[CVResult]:
    k = len(gens)
    results: list[TrainResult | None] = [None] * k
    latest: list[EpochMetrics | None] = [None] * k  # each fold's last epoch: kept in the mean once it stops
    stopped_by_patience = [False] * k
    started = [False] * k
    active = list(range(k))
    stopped_epoch = None
    try:
        while active:
            trained: dict[int, EpochMetrics] = {}
            for i in list(active):
                try:
                    m = gens[i].send(False) if started[i] else next(gens[i])
                except StopIteration as done:  # its budget was spent, or its patience ran out, last epoch
                    results[i] = done.value
                    active.remove(i)
                    if latest[i] is None and done.value.history:  # restored as finished
                        latest[i] = done.value.history[-1]
                        stopped_by_patience[i] = done.value.early_stopped_epoch is not None
                    continue
                started[i] = True
                trained[i] = latest[i] = m
                stopped_by_patience[i] = bool(m.extra.get(EARLY_STOPPED))
            if not trained:
                break
            epochs = {m.epoch for m in trained.values()}
            if len(epochs) != 1:
                raise RuntimeError(f"folds out of step: epochs {sorted(epochs)}")  # a bug, not bad input
            epoch = epochs.pop()
            missing = [i + 1 for i, m in enumerate(latest) if m is None]
            if missing:
                raise ValueError(f"folds {missing} have no epoch to average at epoch {epoch}: "
                                 "the checkpoint's folds are not at the same epoch")
            mean = _fold_mean(epoch, latest, list(trained.values()), all(stopped_by_patience))  # type: ignore[arg-type]
            history.append(mean)
            if checkpoint is not None and epoch % checkpoint_every == 0:
                # folds still training checkpointed this epoch; stopped ones hold their final state
                checkpoint({"version": CV_STATE_VERSION, "kind": CV_KIND, "epoch": epoch,
                            "folds": list(latest_states), "history": [asdict(h) for h in history]})
            if (yield mean):
                stopped_epoch = epoch
                for i in active:  # a fold whose patience ran out this epoch ends as early-stopped
                    try:
                        gens[i].send(not bool(trained.get(i) and trained[i].extra.get(EARLY_STOPPED)))
                    except StopIteration as done:
                        results[i] = done.value
                active = []
                logger.debug("cross-validation stopped by the caller after epoch %d", epoch)
    finally:
        for g in gens:
            g.close()
    return CVResult(folds=results, history=history, stopped_epoch=stopped_epoch)  # type: ignore[arg-type]


def train_cv(
    config: MLPConfig,
    folds: Sequence[Dataset],
    report: Report | None = None,
    **kwargs: Any,
) -> CVResult:
    """:func:`train_folds` driven to its end, ``report`` called with each fold-mean epoch.

    ``report`` may raise :class:`trainer.loop.StopTraining` to stop every fold after that epoch.
    The keyword arguments are :func:`train_folds`'s.
    """
    return drive(train_folds(config, folds, **kwargs), report)


def cross_validate(config: MLPConfig, data_config: DataConfig, k: int, *, threads: int | None = None) -> dict[str, Any]:
    """Train ``config`` on each of ``k`` folds; per-fold and mean / std (sample, n - 1) val metrics.

    The val metrics of a fold are those of the weights the model ends with (the best
    epoch's when ``restore_best_weights``). The folds train in lockstep (:func:`train_folds`).

    Returns:
        ``{"k": k, "folds": [{"val_loss": ..., ...}, ...], "mean": {...}, "std": {...}}``

    Example:
        >>> cv = cross_validate(MLPConfig(epochs=1, hidden_size=8), DataConfig(dataset="digits"), k=2)
        >>> len(cv["folds"]), sorted(cv["mean"])
        (2, ['val_accuracy', 'val_loss'])
    """
    _check_k(k)
    raw = load_raw(data_config)
    folds = fold_datasets(data_config, k, raw)
    result = train_cv(config, folds, threads=threads)
    names = [m for m in epoch_metric_names(raw.task) if m.startswith("val_")]
    per_fold = [{m: f[m] for m in names} for f in result.fold_val_metrics()]
    for i, metrics in enumerate(per_fold):
        logger.info("fold %d/%d: %s", i + 1, k, metrics)
    return {
        "k": k,
        "folds": per_fold,
        "mean": {m: float(np.mean([f[m] for f in per_fold])) for m in names},
        "std": {m: statistics.stdev([f[m] for f in per_fold]) for m in names},
    }
