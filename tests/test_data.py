"""Datasets: IDX lookup order and verified downloads (loopback server only), tabular files, tasks, k-fold."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import trainer.data as data_module
from trainer import DataConfig, MLPConfig, cross_validate, load_dataset, train
from trainer.data import infer_task
from trainer.losses import TrainingLoss, class_weights, per_sample_loss

IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def write_idx_set(directory: Path, n_train: int = 100, n_test: int = 20, seed: int = 0) -> dict[str, str]:
    """Four .gz IDX files; returns their "sha256:<hex>" checksums by file name."""
    rng = np.random.default_rng(seed)
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
              rng.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10)
    directory.mkdir(parents=True, exist_ok=True)
    sums = {}
    for stem, array in zip(IDX_STEMS, arrays):
        payload = _idx_bytes(array)
        (directory / f"{stem}.gz").write_bytes(payload)
        sums[f"{stem}.gz"] = "sha256:" + hashlib.sha256(payload).hexdigest()
    return sums


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A loopback HTTP server over a directory; yields (base URL, served directory, requested paths)."""
    served = tmp_path / "served"
    served.mkdir()
    requested: list[str] = []

    class Handler(_Quiet):
        def do_GET(self) -> None:
            requested.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served, requested
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def no_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    debian = tmp_path / "debian"
    debian.mkdir()
    monkeypatch.setattr(data_module, "DEBIAN_DATASETS", debian)
    return debian


# ---- IDX lookup and download ---------------------------------------------------------------------
def test_download_verifies_checksums_into_the_cache(mirror, no_debian: Path, tmp_path: Path) -> None:
    url, served, requested = mirror
    sums = write_idx_set(served)
    cache = tmp_path / "cache"
    config = DataConfig(dataset="mnist", cache_dir=str(cache), mirror=url, checksums=sums, val_fraction=0.2)
    ds = load_dataset(config)
    assert len(ds.x_train) == 80 and len(ds.x_test) == 20 and ds.class_names[3] == "3"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in IDX_STEMS)
    assert len(requested) == 4
    load_dataset(config)  # now from the cache: no new request
    assert len(requested) == 4


def test_checksum_mismatch_is_refused_and_nothing_is_kept(mirror, no_debian: Path, tmp_path: Path) -> None:
    url, served, _ = mirror
    sums = write_idx_set(served)
    sums["t10k-images-idx3-ubyte.gz"] = "sha256:" + "0" * 64
    cache = tmp_path / "cache"
    config = DataConfig(dataset="fashion_mnist", cache_dir=str(cache), mirror=url, checksums=sums)
    with pytest.raises(FileNotFoundError, match="sha256 checksum .* does not match"):
        load_dataset(config)
    assert not (cache / "t10k-images-idx3-ubyte.gz").exists()
    assert not list(cache.glob("*.part"))


def test_md5_checksums_are_accepted(mirror, no_debian: Path, tmp_path: Path) -> None:
    url, served, _ = mirror
    write_idx_set(served)
    md5 = {p.name: "md5:" + hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}
    ds = load_dataset(DataConfig(dataset="mnist", cache_dir=str(tmp_path / "c"), mirror=url, checksums=md5))
    assert ds.n_features == 784


def test_no_download_when_switched_off(no_debian: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download is off"):
        load_dataset(DataConfig(dataset="mnist", cache_dir=str(tmp_path / "empty"), download=False))


def test_lookup_order_debian_then_cache(no_debian: Path, tmp_path: Path) -> None:
    write_idx_set(no_debian / "mnist", n_train=50)
    write_idx_set(tmp_path / "cache", n_train=70)
    ds = load_dataset(DataConfig(dataset="mnist", cache_dir=str(tmp_path / "cache"), val_fraction=0.2))
    assert len(ds.x_train) == 40  # Debian's 50, not the cache's 70
    ds = load_dataset(DataConfig(dataset="fashion_mnist", cache_dir=str(tmp_path / "cache"), val_fraction=0.2,
                                 download=False))
    assert len(ds.x_train) == 56  # no Debian fashion-mnist here: the cache


def test_explicit_path_is_authoritative(no_debian: Path, tmp_path: Path) -> None:
    write_idx_set(no_debian / "mnist")
    with pytest.raises(FileNotFoundError, match="not found in path="):
        load_dataset(DataConfig(dataset="mnist", path=str(tmp_path / "nowhere")))


def test_bad_checksum_format_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="must look like 'sha256:<hex>'"):
        DataConfig(dataset="mnist", checksums={"x.gz": "abc"})


# ---- scikit-learn datasets and tasks -------------------------------------------------------------
def test_breast_cancer_is_binary_and_diabetes_is_regression() -> None:
    bc = load_dataset(DataConfig(dataset="breast_cancer"))
    assert bc.task == "binary" and bc.n_outputs == 1 and bc.class_names == ("malignant", "benign")
    db = load_dataset(DataConfig(dataset="diabetes"))
    assert db.task == "regression" and db.n_classes == 0 and db.y_train.dtype == torch.float32
    assert len(db.x_train) + len(db.x_val) + len(db.x_test) == 442


def test_task_contradicting_the_dataset_is_refused() -> None:
    with pytest.raises(ValueError, match="task='regression': dataset 'digits' is a multiclass task"):
        DataConfig(dataset="digits", task="regression")


def test_binary_training_reports_accuracy() -> None:
    result = train(MLPConfig(hidden_size=16, epochs=5, lr=3e-3), load_dataset(DataConfig(dataset="breast_cancer")),
                   threads=1)
    assert result.history[-1].val_accuracy > 0.9
    assert set(result.test) == {"test_loss", "test_accuracy"}
    assert "val_mse" not in result.history[-1].as_dict()


def test_regression_reports_mse_not_accuracy() -> None:
    data = load_dataset(DataConfig(dataset="diabetes"))
    config = MLPConfig(hidden_size=32, epochs=5, lr=0.01, output_bias_prior=True, loss="huber", huber_delta=50.0)
    result = train(config, data, threads=1)
    keys = set(result.history[-1].as_dict())
    assert {"train_loss", "val_loss", "val_mse", "val_mae", "train_mse"} <= keys
    assert not keys & {"train_accuracy", "val_accuracy"}
    assert set(result.test) == {"test_loss", "test_mse", "test_mae"}
    assert result.history[-1].val_mse < float(((data.y_val - data.y_val.mean()) ** 2).mean()) * 1.2


def test_config_that_does_not_fit_the_task_fails_before_training() -> None:
    data = load_dataset(DataConfig(dataset="diabetes"))
    with pytest.raises(ValueError, match="class_weight='balanced': only classification"):
        train(MLPConfig(class_weight="balanced", epochs=1), data, threads=1)
    digits = load_dataset(DataConfig(dataset="digits"))
    with pytest.raises(ValueError, match=r"class_weight=\[1.0, 2.0\]: has 2 weights; the dataset has 10 classes"):
        train(MLPConfig(class_weight=(1.0, 2.0), epochs=1), digits, threads=1)


# ---- losses ------------------------------------------------------------------------------------
def test_regression_losses_match_their_formulas() -> None:
    out = torch.tensor([[1.0], [4.0], [-2.0]])
    y = torch.tensor([0.0, 1.0, 0.5])
    r = out[:, 0] - y
    assert torch.allclose(per_sample_loss("regression", out, y, loss="mse"), r**2)
    assert torch.allclose(per_sample_loss("regression", out, y, loss="mae"), r.abs())
    huber = torch.where(r.abs() <= 2.0, 0.5 * r**2, 2.0 * (r.abs() - 1.0))
    assert torch.allclose(per_sample_loss("regression", out, y, loss="huber", huber_delta=2.0), huber)


def test_balanced_class_weights_make_rare_classes_count_more() -> None:
    y = torch.tensor([0] * 8 + [1] * 2)
    w = class_weights(MLPConfig(class_weight="balanced"), y, 2)
    assert torch.allclose(w, torch.tensor([10 / (2 * 8), 10 / (2 * 2)]))
    out = torch.randn(10, 2)
    per = per_sample_loss("multiclass", out, y)
    expected = (w[y] * per).sum() / w[y].sum()
    assert float(TrainingLoss(MLPConfig(), "multiclass", w)(out, y)) == pytest.approx(float(expected), rel=1e-6)
    z = torch.randn(10, 1)
    per_b = per_sample_loss("binary", z, y)
    got_b = TrainingLoss(MLPConfig(), "binary", w)(z, y)
    assert float(got_b) == pytest.approx(float((w[y] * per_b).sum() / w[y].sum()), rel=1e-6)


# ---- csv / npz ---------------------------------------------------------------------------------
def test_csv_with_a_named_target_and_inferred_tasks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    path = tmp_path / "d.csv"
    labels = np.where(x[:, 0] > 0, "yes", "no")
    lines = ["a,b,label,c"] + [f"{r[0]},{r[1]},{lab},{r[2]}" for r, lab in zip(x, labels)]
    path.write_text("\n".join(lines) + "\n")
    ds = load_dataset(DataConfig(dataset="csv", path=str(path), target="label"))
    assert ds.task == "binary" and ds.class_names == ("no", "yes") and ds.n_features == 3
    with pytest.raises(ValueError, match="target='y': no such column"):
        load_dataset(DataConfig(dataset="csv", path=str(path), target="y"))


def test_npz_regression_target(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, price=x[:, 0] * 3.5 + 0.25)
    ds = load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "d.npz"), target="price", normalize="none"))
    assert ds.task == "regression" and ds.n_features == 4
    forced = load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "d.npz"), target="price", task="regression"))
    assert forced.task == "regression"


def test_task_inference_rules() -> None:
    assert infer_task(np.array([0, 1, 0])) == "binary"
    assert infer_task(np.array([0, 1, 2, 2])) == "multiclass"
    assert infer_task(np.arange(100)) == "regression"  # more than 20 distinct integers
    assert infer_task(np.array([1.0, 2.0, 3.0])) == "multiclass"  # integral floats
    assert infer_task(np.array([0.1, 2.0])) == "regression"


def test_csv_needs_a_path() -> None:
    with pytest.raises(ValueError, match="dataset='csv': needs path"):
        DataConfig(dataset="csv")


# ---- k-fold cross-validation ---------------------------------------------------------------------
def test_cross_validate_reports_every_fold_and_mean_and_spread() -> None:
    cv = cross_validate(MLPConfig(hidden_size=16, epochs=2, lr=3e-3), DataConfig(dataset="digits"), k=3, threads=1)
    assert cv["k"] == 3 and len(cv["folds"]) == 3
    accs = [f["val_accuracy"] for f in cv["folds"]]
    assert cv["mean"]["val_accuracy"] == pytest.approx(float(np.mean(accs)))
    assert cv["std"]["val_accuracy"] == pytest.approx(float(np.std(accs, ddof=1)))
    assert len(set(accs)) > 1  # different folds, different numbers
    with pytest.raises(ValueError, match="k=1: cross-validation needs"):
        cross_validate(MLPConfig(), DataConfig(), k=1)


def test_cross_validate_regression_uses_regression_metrics() -> None:
    cv = cross_validate(MLPConfig(hidden_size=8, epochs=1), DataConfig(dataset="diabetes"), k=2, threads=1)
    assert set(cv["mean"]) == {"val_loss", "val_mse", "val_mae"}
