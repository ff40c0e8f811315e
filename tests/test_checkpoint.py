"""Checkpoint and resume in the training loop: a resumed run is the uninterrupted run, bit for bit."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.helpers import curves, roundtrip
from trainer import DataConfig, Dataset, MLPConfig, StopTraining, load_dataset, train
from trainer.loop import EpochMetrics, TrainState

EPOCHS = 6


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataConfig(dataset="digits", max_train_samples=300))




CONFIGS: dict[str, dict[str, Any]] = {
    "plain_sgd": {"optimizer": "sgd", "lr": 0.05},
    "everything": {
        "optimizer": "adam", "lr": 3e-3, "dropout": 0.3, "norm": "batchnorm", "l1": 1e-5, "l2": 1e-4,
        "input_noise": 0.05, "weight_noise": 0.01, "grad_noise": 0.01, "lr_schedule": "cosine", "warmup_epochs": 2,
        "batch_size": 32, "batch_size_growth": 2.0, "batch_growth_every": 2,
    },
    "plateau_and_early_stopping": {
        "optimizer": "momentum", "lr": 0.05, "lr_schedule": "reduce_on_plateau", "plateau_patience": 1,
        "early_stopping_patience": 3, "restore_best_weights": True, "dropout": 0.2,
    },
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("after", [1, 3])
def test_resumed_training_is_the_uninterrupted_run(digits: Dataset, name: str, after: int) -> None:
    config = MLPConfig(epochs=EPOCHS, hidden_size=24, seed=5, **CONFIGS[name])
    straight = train(config, digits)

    states: dict[int, TrainState] = {}

    def crash_after(_: EpochMetrics) -> None:
        if max(states) >= after:
            raise StopTraining  # the worker "dies" once the checkpoint after `after` is written

    first = train(config, digits, crash_after, checkpoint=lambda s: states.__setitem__(s["epoch"], s))
    assert first.stopped_epoch == after and sorted(states) == list(range(1, after + 1))

    resumed = train(config, digits, resume=roundtrip(states[after]))
    assert curves(resumed.history) == curves(straight.history)
    assert resumed.model_epoch == straight.model_epoch
    assert resumed.early_stopped_epoch == straight.early_stopped_epoch
    assert resumed.test == straight.test
    for (key, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), key


def test_checkpoint_every_n_epochs(digits: Dataset) -> None:
    seen: list[int] = []
    train(MLPConfig(epochs=7, hidden_size=8), digits, checkpoint=lambda s: seen.append(s["epoch"]), checkpoint_every=3)
    assert seen == [3, 6]


def test_state_is_a_copy_not_a_view(digits: Dataset) -> None:
    states: list[TrainState] = []
    result = train(MLPConfig(epochs=3, hidden_size=8), digits, checkpoint=states.append)
    first = states[0]["model"]
    assert any(not torch.equal(first[k], v) for k, v in result.model.state_dict().items())
    assert [len(s["history"]) for s in states] == [1, 2, 3]


def test_checkpoint_every_must_be_positive(digits: Dataset) -> None:
    with pytest.raises(ValueError, match=r"checkpoint_every=0: must be an integer >= 1"):
        train(MLPConfig(epochs=1, hidden_size=8), digits, checkpoint=lambda s: None, checkpoint_every=0)


def test_state_from_other_settings_is_refused(digits: Dataset) -> None:
    states: list[TrainState] = []
    train(MLPConfig(epochs=1, hidden_size=8), digits, checkpoint=states.append)
    with pytest.raises(ValueError, match="other early-stopping settings"):
        train(MLPConfig(epochs=2, hidden_size=8, early_stopping_patience=2), digits, resume=states[0])
    with pytest.raises(ValueError, match="checkpoint version"):
        train(MLPConfig(epochs=2, hidden_size=8), digits, resume={**states[0], "version": 99})


def test_explicit_cpu_device_is_the_default_path(digits: Dataset) -> None:
    config = MLPConfig(epochs=3, hidden_size=16, dropout=0.2, seed=3)
    default, cpu = train(config, digits), train(config, digits, device="cpu")
    assert curves(default.history) == curves(cpu.history) and default.test == cpu.test


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the GPU path of Ray trials)")
def test_gpu_training_matches_the_cpu_run(digits: Dataset) -> None:
    config = MLPConfig(epochs=3, hidden_size=32, seed=3, class_weight="balanced")
    cpu, gpu = train(config, digits), train(config, digits, device="cuda")
    assert next(gpu.model.parameters()).device.type == "cpu", "the trained model comes back to the CPU"
    for a, b in zip(cpu.history, gpu.history):
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-3)
    assert gpu.predict(digits.x_test).shape[0] == len(digits.y_test)


@pytest.mark.parametrize("from_epoch", [2, 3])
def test_stop_after_finishes_a_run_stopped_there_from_its_checkpoint(digits: Dataset, from_epoch: int) -> None:
    """What a sweep does for a trial whose worker died after ASHA stopped it at epoch 3."""
    from trainer.loop import drive, train_epochs

    config = MLPConfig(epochs=EPOCHS, hidden_size=16, dropout=0.2, restore_best_weights=True, lr=0.05,
                       early_stopping_patience=10)
    states: list[dict] = []

    def stop_at_3(m: EpochMetrics) -> None:
        if m.epoch == 3:
            raise StopTraining

    stopped = train(config, digits, stop_at_3, checkpoint=states.append, threads=1)
    again = drive(train_epochs(config, digits, resume=roundtrip(states[from_epoch - 1]), stop_after=3, threads=1))
    assert again.stopped_epoch == stopped.stopped_epoch == 3
    assert again.test == stopped.test and again.model_epoch == stopped.model_epoch
    assert curves(again.history) == curves(stopped.history)
    with pytest.raises(ValueError, match="stop_after=0"):
        train_epochs(config, digits, stop_after=0)
