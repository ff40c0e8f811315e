"""k-fold cross-validation in lockstep: each fold is the fold trained alone, the curve is their mean."""

from __future__ import annotations

import os
import statistics
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.helpers import curves, roundtrip
from trainer import DataConfig, Dataset, MLPConfig, StopTraining, train
from trainer.crossval import (
    CVResult,
    fold_datasets,
    fold_problem,
    pool_counts,
    train_cv,
    train_folds,
)
from trainer.data import load_raw, split_pool_and_test
from trainer.evaluation import val_metric
from trainer.loop import EARLY_STOPPED, EpochMetrics, TrainState

CONFIG = MLPConfig(epochs=4, hidden_size=16, lr=3e-3, seed=3)


@pytest.fixture(scope="module")
def folds() -> list[Dataset]:
    return fold_datasets(DataConfig(dataset="digits", max_train_samples=300), 3)


@pytest.fixture(scope="module")
def uneven(folds: list[Dataset]) -> list[Dataset]:
    """Two folds whose patience runs out at different epochs: the second validates on shuffled labels."""
    g = torch.Generator().manual_seed(0)
    noisy = replace(folds[1], y_val=folds[1].y_val[torch.randperm(len(folds[1].y_val), generator=g)])
    return [folds[0], noisy]




def _same_folds(a: CVResult, b: CVResult) -> None:
    assert curves(a.history) == curves(b.history)
    for fa, fb in zip(a.folds, b.folds):
        assert curves(fa.history) == curves(fb.history)
        assert fa.test == fb.test and fa.model_epoch == fb.model_epoch
        assert fa.early_stopped_epoch == fb.early_stopped_epoch and fa.stopped_epoch == fb.stopped_epoch
        for (key, x), y in zip(fa.model.state_dict().items(), fb.model.state_dict().values()):
            assert torch.equal(x, y), key


def test_folds_partition_the_pool_and_share_the_test_split(folds: list[Dataset]) -> None:
    val_sizes = [len(f.y_val) for f in folds]
    assert max(val_sizes) - min(val_sizes) <= 1  # k equal parts of the pool
    assert all(torch.equal(f.y_test, folds[0].y_test) for f in folds)  # load_dataset's held-out test split
    n_pool, _ = pool_counts(DataConfig(dataset="digits"))
    assert sum(val_sizes) == n_pool


def test_lockstep_folds_are_the_folds_trained_alone_and_the_curve_is_their_mean(folds: list[Dataset]) -> None:
    hooks = [val_metric("val_f1_macro", f) for f in folds]
    cv = train_cv(CONFIG, folds, threads=1, epoch_metrics=hooks)
    alone = [train(CONFIG, f, threads=1, epoch_metrics=h) for f, h in zip(folds, hooks)]
    for lock, single in zip(cv.folds, alone):
        assert curves(lock.history) == curves(single.history)
        assert lock.test == single.test
    assert [m.epoch for m in cv.history] == [1, 2, 3, 4]
    for e, mean in enumerate(cv.history):
        for name in ("val_loss", "val_accuracy", "train_loss", "train_accuracy", "lr", "val_f1_macro"):
            per_fold = [r.history[e].as_dict()[name] for r in alone]
            assert mean.as_dict()[name] == pytest.approx(float(np.mean(per_fold)), rel=1e-12), (e, name)
        assert mean.epoch_seconds == pytest.approx(sum(f.history[e].epoch_seconds for f in cv.folds))
        assert EARLY_STOPPED not in mean.extra
    summary = cv.summary()
    for name in ("val_accuracy", "val_loss", "val_f1_macro"):
        values = [r.final_metrics.as_dict()[name] for r in alone]
        assert summary[f"cv_{name}_mean"] == pytest.approx(float(np.mean(values)))
        assert summary[f"cv_{name}_std"] == pytest.approx(statistics.stdev(values))
    tests = [r.test["test_accuracy"] for r in alone]
    assert summary["cv_test_accuracy_mean"] == pytest.approx(float(np.mean(tests)))
    assert summary["cv_test_accuracy_std"] == pytest.approx(statistics.stdev(tests))
    assert {"cv_test_loss_mean", "cv_test_loss_std"} <= set(summary)


def test_a_stop_ends_every_fold_after_that_epoch(folds: list[Dataset]) -> None:
    def stop_at_two(m: EpochMetrics) -> None:
        if m.epoch == 2:
            raise StopTraining

    cv = train_cv(CONFIG, folds, stop_at_two, threads=1)
    assert cv.stopped_epoch == 2 and len(cv.history) == 2
    assert all(f.stopped_epoch == 2 and len(f.history) == 2 and f.test for f in cv.folds)


ES = MLPConfig(epochs=8, hidden_size=16, lr=3e-3, seed=3, early_stopping_patience=1, restore_best_weights=True)


def test_a_fold_whose_patience_ran_out_keeps_its_last_metrics_in_the_mean(uneven: list[Dataset]) -> None:
    cv = train_cv(ES, uneven, threads=1)
    alone = [train(ES, f, threads=1) for f in uneven]
    ends = [len(r.history) for r in alone]
    assert ends[1] < ends[0], ends  # the shuffled-label fold stops first
    for lock, single in zip(cv.folds, alone):
        assert curves(lock.history) == curves(single.history) and lock.test == single.test
    assert len(cv.history) == max(ends)
    for e, mean in enumerate(cv.history):
        carried = [r.history[min(e, len(r.history) - 1)] for r in alone]
        assert mean.val_loss == pytest.approx(float(np.mean([m.val_loss for m in carried])), rel=1e-12)
        trained = [r.history[e].epoch_seconds for r in cv.folds if e < len(r.history)]
        assert mean.epoch_seconds == pytest.approx(sum(trained))
    stopped_all = all(r.early_stopped_epoch is not None for r in alone)
    assert bool(cv.history[-1].extra.get(EARLY_STOPPED)) == stopped_all
    assert cv.early_stopped_epoch == (max(ends) if stopped_all else None)
    # the final val metrics are those of the weights each fold keeps (the best epoch's)
    assert cv.fold_val_metrics()[1]["val_loss"] == alone[1].final_metrics.val_loss


@pytest.mark.parametrize("case", ["plain", "finished_fold"])
def test_a_resumed_cv_run_continues_identically(folds: list[Dataset], uneven: list[Dataset], case: str) -> None:
    config, data = (CONFIG, folds) if case == "plain" else (ES, uneven)
    straight = train_cv(config, data, threads=1)
    after = 2 if case == "plain" else len(straight.folds[1].history) + 1  # fold 2 had already stopped
    assert after < len(straight.history)
    states: dict[int, TrainState] = {}

    def crash(m: EpochMetrics) -> None:
        if m.epoch == after:
            raise StopTraining  # the worker "dies" once the checkpoint of `after` is written

    train_cv(config, data, crash, threads=1, checkpoint=lambda s: states.__setitem__(s["epoch"], s))
    assert sorted(states) == list(range(1, after + 1))
    state = roundtrip(states[after])
    assert len(state["folds"]) == len(data) and len(state["history"]) == after
    if case == "finished_fold":
        assert state["folds"][1]["finished"] and state["folds"][1]["epoch"] < after
    resumed = train_cv(config, data, threads=1, resume=state)
    _same_folds(resumed, straight)


def test_a_checkpoint_every_n_epochs_holds_all_folds(folds: list[Dataset]) -> None:
    states: list[TrainState] = []
    train_cv(CONFIG, folds, threads=1, checkpoint=states.append, checkpoint_every=2)
    assert [s["epoch"] for s in states] == [2, 4]
    assert all(f["epoch"] == 2 for f in states[0]["folds"])


def test_bad_states_and_fold_counts_are_refused(folds: list[Dataset]) -> None:
    plain: list[TrainState] = []
    train(CONFIG, folds[0], threads=1, checkpoint=plain.append)
    with pytest.raises(ValueError, match="not a cross-validation state"):
        train_folds(CONFIG, folds, resume=plain[0])
    states: list[TrainState] = []
    train_cv(CONFIG, folds[:2], threads=1, checkpoint=states.append)
    with pytest.raises(ValueError, match="holds 2 folds; this run has 3"):
        train_folds(CONFIG, folds, resume=states[0])
    with pytest.raises(ValueError, match="cross-validation needs >= 2"):
        train_folds(CONFIG, folds[:1])
    with pytest.raises(ValueError, match="2 hooks for 3 folds"):
        train_folds(CONFIG, folds, epoch_metrics=[None, None])


def test_too_many_folds_are_refused_with_the_rule() -> None:
    config = DataConfig(dataset="digits")
    _, y_pool, _, _ = split_pool_and_test(load_raw(config), config)
    n_pool, smallest = pool_counts(config)
    assert (n_pool, smallest) == (len(y_pool), int(np.bincount(y_pool).min()))
    with pytest.raises(ValueError, match=rf"k={smallest + 1}: stratified folds need folds <= {smallest}, the "
                                         "sample count of the smallest class"):
        fold_datasets(DataConfig(dataset="digits"), smallest + 1)
    assert "pool (train + validation)" in fold_problem(500, 442, None)
    assert fold_problem(5, 442, None) is None
    assert pool_counts(DataConfig(dataset="diabetes"))[1] is None
    with pytest.raises(ValueError, match="k=1: cross-validation needs"):
        fold_datasets(DataConfig(dataset="digits"), 1)


# ---- a cross-validated trial of the sweep, retried from its checkpoint (no Ray: Tune's calls faked) ----
class _FakeContext:
    def get_trial_id(self) -> str:
        return "trial_cv"

    def get_trial_name(self) -> str:
        return "trial_cv"


def test_a_retried_cv_trial_resumes_every_fold_into_the_same_run(tracking_uri: str, tmp_path, monkeypatch) -> None:
    import shutil

    from mlflow import MlflowClient

    import sweeps.tune as st
    from sweeps.spec import EvaluationSpec
    from tracking import SweepTracker
    from tracking import tags as T

    monkeypatch.setenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")
    monkeypatch.setattr(st, "_placement", lambda: {})
    monkeypatch.setattr(st, "_device", lambda: None)
    monkeypatch.setattr(st.tune, "get_context", lambda: _FakeContext())
    tracker = SweepTracker(tracking_uri, "cv-trial", "cv-trial", "s1")
    parent = tracker.start()
    data = DataConfig(dataset="digits", max_train_samples=300)
    ctx = st.TrialContext(
        sweep_name="cv-trial", sweep_id="s1", tracking_uri=tracking_uri, experiment_id=tracker.experiment_id,
        parent_run_id=parent, trainer="mlp", metric="val_accuracy", max_epochs=4, threads=1, flush_seconds=0.0,
        evaluation=EvaluationSpec(), data_ref=None, checkpoint_every=1, cv_folds=3, cv_data=data)
    config = {"epochs": 4, "hidden_size": 16, "lr": 3e-3, "seed": 3}
    saved = tmp_path / "checkpoint"
    reported: list[dict] = []

    def dies_after_two(metrics: dict, checkpoint=None) -> None:
        if checkpoint is not None:
            shutil.rmtree(saved, ignore_errors=True)
            shutil.copytree(checkpoint.path, saved)
        reported.append(metrics)
        if metrics["epoch"] == 2:
            raise RuntimeError("the worker died")

    monkeypatch.setattr(st.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(st.tune, "report", dies_after_two)
    with pytest.raises(RuntimeError, match="the worker died"):
        st.run_trial(dict(config), ctx)
    assert [m["epoch"] for m in reported] == [1, 2]

    monkeypatch.setattr(st.tune, "get_checkpoint", lambda: st.tune.Checkpoint.from_directory(str(saved)))
    monkeypatch.setattr(st.tune, "report", lambda metrics, checkpoint=None: reported.append(metrics))
    st.run_trial(dict(config), ctx)
    assert [m["epoch"] for m in reported] == [1, 2, 3, 4]  # the retry continued after epoch 2
    assert os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] == "630"  # the actor reset outwaits retry_seconds=600

    straight = train_cv(MLPConfig(**config), fold_datasets(data, 3), threads=1)
    assert [{k: v for k, v in m.items() if k != "epoch_seconds"} for m in reported] == curves(straight.history)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([tracker.experiment_id], f"tags.`{T.ROLE}` = 'trial'")
    assert run.data.tags[T.RESTARTS] == "1" and run.data.tags[T.RESUMED_FROM_EPOCH] == "2"
    assert run.data.tags[T.CV_FOLDS] == "3" and run.data.tags[T.TRIAL_STATUS] == "completed"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [(h.step, h.value) for h in history] == [(m.epoch, m.val_loss) for m in straight.history]
    for key, value in straight.summary().items():
        assert run.data.metrics[key] == pytest.approx(value, rel=1e-12), key
    assert run.data.metrics["test_accuracy"] == pytest.approx(straight.folds[0].test["test_accuracy"])
    tracker.finish("completed")
