"""Datasets as in-memory tensors, split into train / validation / test.

Normalization statistics are fitted on the training split only, so nothing of
the validation or test split leaks into training.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

logger = logging.getLogger(__name__)

DatasetName = Literal["digits", "fashion_mnist"]
DEBIAN_DATASETS = Path("/usr/share/datasets")  # where Debian's dataset-* packages install IDX files

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DataConfig(BaseModel):
    """Which dataset to train on and how to split and scale it.

    Example:
        >>> DataConfig(dataset="digits").val_fraction
        0.2
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: DatasetName = "digits"  # digits (scikit-learn, offline) or fashion_mnist (IDX files)
    path: str | None = None  # directory with the IDX files; default: Debian's /usr/share/datasets/<name>/
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # share of the training pool held out for validation
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # share held out for test (datasets without an official test split)
    split_seed: int = Field(0, ge=0)  # seed of the stratified splits
    normalize: Literal["none", "minmax", "standardize"] = "standardize"  # fitted on the train split only
    max_train_samples: int | None = Field(None, ge=1)  # subsample the train split for cheap coarse searches

    @model_validator(mode="after")
    def _check_fractions(self) -> DataConfig:
        if self.dataset == "digits" and self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g}: must be < 1"
            )
        return self


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test tensors of a classification task."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: tuple[str, ...]

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split={name!r}: must be one of 'train', 'val', 'test'")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = int(np.prod(dims))
    if data.size != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} values) but holds {data.size}")
    return data.reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def idx_directory(name: str, path: str | None) -> Path:
    """Locate the IDX files of ``name``: the explicit path, then Debian's install location."""
    # An explicit path is authoritative: silently reading other files would be worse than failing.
    candidates = [Path(path).expanduser()] if path else [DEBIAN_DATASETS / name.replace("_", "-")]
    for directory in candidates:
        if all(_find_idx(directory, stem) for stem in _IDX_FILES.values()):
            return directory
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"dataset {name!r}: IDX files ({', '.join(_IDX_FILES.values())}, optionally .gz) not found in: {tried}. "
        f"Install Debian's 'dataset-{name.replace('_', '-')}' package or set data.path."
    )


def _load_idx_dataset(name: str, path: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    directory = idx_directory(name, path)
    arrays = {key: read_idx(_find_idx(directory, stem)) for key, stem in _IDX_FILES.items()}  # type: ignore[arg-type]
    x_train = arrays["train_images"].reshape(len(arrays["train_images"]), -1).astype(np.float32) / 255.0
    x_test = arrays["test_images"].reshape(len(arrays["test_images"]), -1).astype(np.float32) / 255.0
    return x_train, arrays["train_labels"].astype(np.int64), x_test, arrays["test_labels"].astype(np.int64)


def load_dataset(config: DataConfig) -> Dataset:
    """Load, split and normalize a dataset into in-memory float32 tensors.

    Example:
        >>> ds = load_dataset(DataConfig(dataset="digits"))
        >>> ds.n_features, ds.n_classes
        (64, 10)
    """
    from sklearn.model_selection import train_test_split

    if config.dataset == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = bunch.data.astype(np.float32) / 16.0
        y = bunch.target.astype(np.int64)
        x_pool, x_test, y_pool, y_test = train_test_split(
            x, y, test_size=config.test_fraction, stratify=y, random_state=config.split_seed
        )
        class_names = tuple(str(c) for c in bunch.target_names)
    else:
        x_pool, y_pool, x_test, y_test = _load_idx_dataset(config.dataset, config.path)
        class_names = FASHION_MNIST_CLASSES
    x_train, x_val, y_train, y_val = train_test_split(
        x_pool, y_pool, test_size=config.val_fraction, stratify=y_pool, random_state=config.split_seed
    )
    if config.max_train_samples is not None and config.max_train_samples < len(x_train):
        rng = np.random.default_rng(config.split_seed)
        keep = np.sort(rng.choice(len(x_train), size=config.max_train_samples, replace=False))
        x_train, y_train = x_train[keep], y_train[keep]
    x_train, x_val, x_test = _normalize(config.normalize, x_train, x_val, x_test)
    logger.debug("loaded %s: train %d, val %d, test %d", config.dataset, len(x_train), len(x_val), len(x_test))

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    return Dataset(
        name=config.dataset,
        x_train=t(x_train), y_train=t(y_train),
        x_val=t(x_val), y_val=t(y_val),
        x_test=t(x_test), y_test=t(y_test),
        class_names=class_names,
    )


def _normalize(kind: str, train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    if kind == "none":
        return (train, *others)
    if kind == "minmax":
        lo, hi = train.min(axis=0), train.max(axis=0)
        scale = np.where(hi > lo, hi - lo, 1.0)
        return tuple(((a - lo) / scale).astype(np.float32) for a in (train, *others))
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return tuple(((a - mean) / std).astype(np.float32) for a in (train, *others))


def default_threads() -> int:
    """CPUs this process may use (respects affinity masks)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
