"""The trainer: determinism, stopping, divergence, penalties, dropout and IDX files."""

from __future__ import annotations

import gzip
import math
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import DataConfig, MLPConfig, StopTraining, TrainingDiverged, load_dataset, train
from trainer.data import Dataset, idx_directory, read_idx
from trainer.model import build_mlp, weight_matrices
from trainer.optim import build_optimizer


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataConfig(dataset="digits"))


def tiny(n: int = 64, features: int = 5, classes: int = 3, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return Dataset("tiny", x, y, x[:16], y[:16], x[16:32], y[16:32], tuple(str(i) for i in range(classes)))


def test_digits_splits_are_stratified_and_disjoint(digits: Dataset) -> None:
    assert digits.n_features == 64 and digits.n_classes == 10
    n = len(digits.x_train) + len(digits.x_val) + len(digits.x_test)
    assert n == 1797
    assert len(digits.x_test) == math.ceil(0.2 * 1797)  # scikit-learn rounds the test share up
    # standardized on the train split only: train columns have mean ~0, other splits do not exactly
    assert torch.allclose(digits.x_train.mean(0), torch.zeros(64), atol=1e-4)
    for split in (digits.y_train, digits.y_val, digits.y_test):
        counts = torch.bincount(split, minlength=10).float()
        assert counts.min() / counts.max() > 0.8  # every class present in similar proportion


def test_same_seed_same_curves(digits: Dataset) -> None:
    config = MLPConfig(epochs=3, hidden_size=32, dropout=0.2, seed=7)
    a = train(config, digits, threads=1)
    b = train(config, digits, threads=1)
    assert [m.val_loss for m in a.history] == [m.val_loss for m in b.history]
    assert [m.train_loss for m in a.history] == [m.train_loss for m in b.history]
    c = train(config.model_copy(update={"seed": 8}), digits, threads=1)
    assert [m.val_loss for m in a.history] != [m.val_loss for m in c.history]


def test_training_learns_digits(digits: Dataset) -> None:
    result = train(MLPConfig(epochs=8, hidden_size=64, lr=3e-3), digits, threads=1)
    assert result.completed
    assert result.history[-1].val_accuracy > 0.9
    assert result.test["test_accuracy"] > 0.9
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_report_can_stop_training_and_test_metrics_still_come(digits: Dataset) -> None:
    seen = []

    def report(m) -> None:
        seen.append(m.epoch)
        if m.epoch == 2:
            raise StopTraining

    result = train(MLPConfig(epochs=10, hidden_size=16), digits, report, threads=1)
    assert seen == [1, 2]
    assert result.stopped_epoch == 2 and not result.completed
    assert set(result.test) == {"test_loss", "test_accuracy"}


def _subnormals_left(threads: int) -> int:
    """How many of 2^22 float32 subnormals survive ``x * 1.0`` on this thread's ``threads`` workers."""
    torch.set_num_threads(threads)
    return int((torch.full((1 << 22,), 1e-39) * 1.0 != 0).sum())


def test_training_flushes_subnormals_on_its_thread_and_its_workers(digits: Dataset) -> None:
    # each check runs in a new thread, as Tune runs a trial: a thread's OpenMP workers take its
    # floating-point mode when its first parallel region starts them
    def in_thread(fn: Callable[[], int]) -> int:
        out: list[int] = []
        t = threading.Thread(target=lambda: out.append(fn()))
        t.start()
        t.join()
        return out[0]

    def ieee() -> int:  # the default mode: the check can see subnormals
        torch.set_flush_denormal(False)
        return _subnormals_left(2)

    def trained() -> int:
        torch.set_flush_denormal(False)
        train(MLPConfig(epochs=1, hidden_size=8), digits, threads=2)
        return _subnormals_left(2)

    assert in_thread(ieee) == 1 << 22
    assert in_thread(trained) == 0  # flushed on the thread and on both of its workers


def test_divergence_raises() -> None:
    data = tiny()
    bad = Dataset(data.name, data.x_train * 1e30, data.y_train, data.x_val, data.y_val,
                  data.x_test, data.y_test, data.class_names)
    with pytest.raises(TrainingDiverged, match="training loss is"):
        train(MLPConfig(epochs=2, optimizer="sgd", lr=10.0), bad, threads=1)


def test_l2_penalty_gradient_matches_formula() -> None:
    """loss = CE + l2 * sum(w^2) over weights, biases excluded: its gradient adds 2*l2*w."""
    data = tiny(n=8)
    lam = 0.1
    config = MLPConfig(hidden_sizes=(4,), optimizer="sgd", lr=1.0, l2=lam, epochs=1, batch_size=8)
    torch.manual_seed(0)
    model = build_mlp(config, 5, 3)
    torch.manual_seed(0)
    twin = build_mlp(config, 5, 3)
    ce = torch.nn.functional.cross_entropy(model(data.x_train), data.y_train)
    (ce + lam * sum((w * w).sum() for w in weight_matrices(model))).backward()
    torch.nn.functional.cross_entropy(twin(data.x_train), data.y_train).backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        expected = q.grad + (2 * lam * q.detach() if name.endswith("weight") else 0)
        assert torch.allclose(p.grad, expected, atol=1e-6), name


@pytest.mark.parametrize("task", ["multiclass", "binary", "regression"])
def test_epoch_train_metrics_weigh_batches_by_their_size(task: str) -> None:
    """Batches of 20, 20 and 10 at a learning rate too small to move the weights: the epoch's
    train_loss is the mean loss of the initial model over all 50 samples (sum_b n_b l_b / n), and
    train_accuracy / train_mse are those of the initial model."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=g)
    if task == "regression":
        y, names = 2 * x[:, 0] - x[:, 1], ()
    elif task == "binary":
        y, names = (x[:, 0] > 0.3).long(), ("no", "yes")
    else:
        y, names = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long(), ("a", "b", "c")
    data = Dataset("t", x, y, x[:10], y[:10], x[:10], y[:10], names, task=task)
    config = MLPConfig(hidden_sizes=(6,), optimizer="sgd", lr=1e-9, batch_size=20, epochs=1, seed=2)
    torch.manual_seed(config.seed)
    model = build_mlp(config, 4, data.n_outputs)
    with torch.no_grad():
        out = model(x)
    epoch = train(config, data, threads=1).history[0]
    if task == "regression":
        mse = float(((out[:, 0] - y) ** 2).mean())
        assert epoch.train_loss == pytest.approx(mse, rel=1e-6)
        assert epoch.train_mse == pytest.approx(mse, rel=1e-6)
        return
    if task == "binary":
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], y.float())
        accuracy = float(((out[:, 0] > 0).long() == y).double().mean())
    else:
        loss = torch.nn.functional.cross_entropy(out, y)
        accuracy = float((out.argmax(1) == y).double().mean())
    assert epoch.train_loss == pytest.approx(float(loss), rel=1e-6)
    assert epoch.train_accuracy == accuracy and 0 < accuracy < 1


def test_dropout_is_inverted_and_off_in_eval() -> None:
    model = build_mlp(MLPConfig(hidden_sizes=(1000,), dropout=0.5, activation="relu"), 3, 2)
    dropout = model[2]
    x = torch.ones(200, 1000)
    dropout.train()
    torch.manual_seed(0)
    out = dropout(x)
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 2.0))  # scaled by 1 / (1 - p)
    assert abs(float(out.mean()) - 1.0) < 0.02  # expectation preserved
    dropout.eval()
    assert torch.equal(dropout(x), x)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adamw"])
def test_optimizers_by_name(name: str) -> None:
    config = MLPConfig(optimizer=name, lr=0.01, momentum=0.5, weight_decay=0.1)
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer(config, [p])
    assert opt.param_groups[0]["lr"] == 0.01


def test_sgd_momentum_step_matches_the_rule() -> None:
    """v <- alpha v - eta g; w <- w + v, for two steps with a constant gradient g = w."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = build_optimizer(MLPConfig(optimizer="momentum", lr=0.1, momentum=0.9), [w])
    v = torch.zeros(2)
    ref = w.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        (0.5 * (w * w).sum()).backward()
        opt.step()
        v = 0.9 * v - 0.1 * ref
        ref = ref + v
    assert torch.allclose(w.detach(), ref)


def test_widths_and_activation() -> None:
    assert MLPConfig(hidden_layers=3, hidden_size=8).widths() == (8, 8, 8)
    assert MLPConfig(hidden_sizes=(5, 2)).widths() == (5, 2)
    model = build_mlp(MLPConfig(hidden_layers=0), 4, 3)
    assert len(model) == 1  # no hidden layer: logistic regression


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_from_generated_idx_files(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, size=(200, 28, 28))
    train_y = np.arange(200) % 10
    test_x = rng.integers(0, 256, size=(50, 28, 28))
    test_y = np.arange(50) % 10
    _write_idx(tmp_path / "train-images-idx3-ubyte", train_x, compress)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", train_y, compress)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", test_x, compress)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", test_y, compress)
    suffix = ".gz" if compress else ""
    assert read_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}").tolist() == test_y.tolist()
    ds = load_dataset(DataConfig(dataset="fashion_mnist", path=str(tmp_path), val_fraction=0.2, normalize="none"))
    assert ds.n_features == 784 and ds.n_classes == 10
    assert len(ds.x_train) == 160 and len(ds.x_val) == 40 and len(ds.x_test) == 50
    assert torch.allclose(ds.x_test[0], torch.from_numpy(test_x[0].reshape(-1) / 255.0).float())
    assert ds.class_names[0] == "T-shirt/top"


def test_missing_idx_files_say_where_they_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        idx_directory("fashion_mnist", str(tmp_path))


def test_corrupt_idx_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x"
    bad.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(ValueError, match="holds 3"):
        read_idx(bad)


def test_max_train_samples_subsamples() -> None:
    ds = load_dataset(DataConfig(dataset="digits", max_train_samples=100))
    assert len(ds.x_train) == 100


def test_epoch_predictions_match_a_per_batch_argmax(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.loop import _Predictions

    monkeypatch.setattr(_Predictions, "PENDING", 7)  # an argmax every batch or two
    g = torch.Generator().manual_seed(0)
    outs = [torch.randn(n, 3, generator=g) for n in (4, 1, 5, 2)]
    multiclass, binary = _Predictions(multiclass=True), _Predictions(multiclass=False)
    for out in outs:
        multiclass.add(out)
        binary.add(out[:, :1])
    assert torch.equal(multiclass.result(), torch.cat([out.argmax(dim=1) for out in outs]))
    assert len(multiclass.done) == 3  # 12 elements, then 3 + 15, then the last 6
    assert torch.equal(binary.result(), torch.cat([out[:, 0] for out in outs]))


def test_loop_doctests() -> None:
    import doctest

    from trainer import loop

    assert doctest.testmod(loop, raise_on_error=False).failed == 0
