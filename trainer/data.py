"""Datasets as in-memory tensors, split into train / validation / test.

Sources:

- ``mnist``, ``fashion_mnist``: IDX files (optionally .gz), looked for in this order:
  the explicit ``path`` (authoritative: missing files there are an error), Debian's
  ``/usr/share/datasets/<name-with-dashes>/``, the cache directory, then downloaded
  from a mirror into the cache with checksum verification.
- ``digits`` (multiclass), ``breast_cancer`` (binary), ``diabetes`` (regression): scikit-learn.
- ``csv``, ``npz``: a user's file at ``path`` with a ``target`` column; the task is
  ``task`` or inferred from the target.

Normalization statistics are fitted on the training split only, so nothing of the
validation or test split leaks into training. Classification splits are stratified.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainer.config import Task

logger = logging.getLogger(__name__)

DatasetName = Literal["digits", "mnist", "fashion_mnist", "breast_cancer", "diabetes", "csv", "npz"]
DEBIAN_DATASETS = Path("/usr/share/datasets")  # where Debian's dataset-* packages install IDX files
DEFAULT_CACHE = Path("~/.cache/sweeps")  # downloads land in <this>/<dataset>/ unless cache_dir is set

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASSES = tuple(str(i) for i in range(10))
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_DATASETS = ("mnist", "fashion_mnist")
# The mirrors torchvision and the datasets' authors publish, tried in order.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}
# Official MD5s of the published .gz files (as in torchvision); "<algorithm>:<hex digest>".
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
    },
}
KNOWN_TASKS: dict[str, Task] = {
    "digits": "multiclass", "mnist": "multiclass", "fashion_mnist": "multiclass",
    "breast_cancer": "binary", "diabetes": "regression",
}
KNOWN_CLASSES: dict[str, int] = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "breast_cancer": 2}
# (height, width) of the built-in datasets whose rows are images, row-major (augmentation needs it)
KNOWN_IMAGE_SHAPES: dict[str, tuple[int, int]] = {"digits": (8, 8), "mnist": (28, 28), "fashion_mnist": (28, 28)}
MAX_INFERRED_CLASSES = 20  # an integer target with more distinct values is inferred to be regression


class DataConfig(BaseModel):
    """Which dataset to train on and how to split and scale it.

    Example:
        >>> DataConfig(dataset="digits").val_fraction
        0.2
        >>> DataConfig(dataset="diabetes").known_task()
        'regression'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: DatasetName = "digits"  # built-in name, or csv / npz for a file at path
    path: str | None = None  # IDX directory (mnist, fashion_mnist; authoritative) or the csv / npz file
    cache_dir: str | None = None  # where IDX downloads go; default ~/.cache/sweeps/<dataset>
    mirror: str | None = None  # base URL to download IDX .gz files from; default: the standard mirrors
    download: bool = True  # download IDX files that are nowhere on disk
    checksums: dict[str, str] | None = None  # file name -> "sha256:<hex>" or "md5:<hex>"; default: official
    target: str = "target"  # csv / npz: the column (array) holding the target
    task: Task | None = None  # multiclass, binary or regression; default: the dataset's, or inferred
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # share of the training pool held out for validation
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # share held out for test (datasets without an official test split)
    split_seed: int = Field(0, ge=0)  # seed of the (stratified) splits
    normalize: Literal["none", "minmax", "standardize", "standardize_all"] = "standardize"  # fitted on the train split only
    max_train_samples: int | None = Field(None, ge=1)  # subsample the train split for cheap coarse searches
    image_shape: tuple[int, int] | None = None  # [height, width] of csv / npz rows that are row-major images

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.dataset not in IDX_DATASETS and self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g}: must be < 1"
            )
        if self.dataset in ("csv", "npz") and not self.path:
            raise ValueError(f"dataset={self.dataset!r}: needs path, the {self.dataset} file to read")
        known = KNOWN_TASKS.get(self.dataset)
        if known is not None and self.task is not None and self.task != known:
            raise ValueError(f"task={self.task!r}: dataset {self.dataset!r} is a {known} task")
        if self.image_shape is not None:
            if self.dataset not in ("csv", "npz"):
                raise ValueError(f"image_shape={list(self.image_shape)!r}: only for csv / npz files; dataset "
                                 f"{self.dataset!r} has its own ({_shape_text(KNOWN_IMAGE_SHAPES.get(self.dataset))})")
            if min(self.image_shape) < 1:
                raise ValueError(f"image_shape={list(self.image_shape)!r}: height and width must be >= 1")
        if self.checksums is not None:
            for name, value in self.checksums.items():
                algorithm, _, digest = value.partition(":")
                if algorithm not in ("sha256", "md5") or not digest:
                    raise ValueError(f"checksums[{name!r}] = {value!r}: must look like 'sha256:<hex>' or 'md5:<hex>'")
        return self

    def known_classes(self) -> int | None:
        """Number of classes, when known without reading the data."""
        return KNOWN_CLASSES.get(self.dataset)

    def known_task(self) -> Task | None:
        """The task, when it is known without reading the data (None: inferred from a file)."""
        return self.task or KNOWN_TASKS.get(self.dataset)

    def known_image_shape(self) -> tuple[int, int] | None:
        """(height, width) when the rows are images: the built-in image datasets', or ``image_shape``."""
        return self.image_shape or KNOWN_IMAGE_SHAPES.get(self.dataset)


def _shape_text(shape: tuple[int, int] | None) -> str:
    return f"{shape[0]}x{shape[1]} images" if shape else "no images"


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test tensors of one task.

    Labels are int64 class indices for classification (0/1 for binary) and float32
    targets for regression, whose ``class_names`` is empty.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: tuple[str, ...]
    task: Task = "multiclass"
    image_shape: tuple[int, int] | None = None  # (height, width) when each row is a row-major image
    # the normalization x_norm = (x - feature_offset) / feature_scale fitted on the train split
    # (per feature; None: the rows are raw), which image augmentation undoes and reapplies
    feature_offset: torch.Tensor | None = None
    feature_scale: torch.Tensor | None = None
    normalization: str | None = None  # DataConfig.normalize that made the rows (None: not known)

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_outputs(self) -> int:
        """Output units: one logit per class for multiclass, one for binary and regression."""
        return self.n_classes if self.task == "multiclass" else 1

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split={name!r}: must be one of 'train', 'val', 'test'")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


# ---- IDX files --------------------------------------------------------------------------------
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


def _complete(directory: Path) -> bool:
    return all(_find_idx(directory, stem) for stem in _IDX_FILES.values())


def cache_directory(name: str, cache_dir: str | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else (DEFAULT_CACHE / name).expanduser()


def idx_directory(
    name: str,
    path: str | None,
    *,
    cache_dir: str | None = None,
    mirror: str | None = None,
    download: bool = False,
    checksums: dict[str, str] | None = None,
) -> Path:
    """Locate (or download) the IDX files of ``name``; see the module docstring for the order."""
    files = ", ".join(_IDX_FILES.values())
    debian = f"dataset-{name.replace('_', '-')}"
    if path:  # authoritative: silently reading other files would be worse than failing
        directory = Path(path).expanduser()
        if _complete(directory):
            return directory
        raise FileNotFoundError(
            f"dataset {name!r}: IDX files ({files}, optionally .gz) not found in path={str(directory)!r}. "
            f"Install Debian's {debian!r} package and drop data.path, or point data.path at them."
        )
    tried = [DEBIAN_DATASETS / name.replace("_", "-"), cache_directory(name, cache_dir)]
    for directory in tried:
        if _complete(directory):
            return directory
    if download:
        return download_idx(name, tried[1], mirror=mirror, checksums=checksums)
    raise FileNotFoundError(
        f"dataset {name!r}: IDX files ({files}, optionally .gz) not found in: {', '.join(map(str, tried))}; "
        f"download is off. Install Debian's {debian!r} package, set data.path, or set data.download: true."
    )


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_idx(
    name: str, directory: Path, *, mirror: str | None = None, checksums: dict[str, str] | None = None
) -> Path:
    """Download the four .gz IDX files of ``name`` into ``directory``, verifying each checksum.

    Mirrors are tried in order per file; a file whose checksum does not match is deleted.
    """
    expected_sums = checksums if checksums is not None else CHECKSUMS.get(name, {})
    mirrors = (mirror,) if mirror else MIRRORS.get(name, ())
    if not mirrors:
        raise ValueError(f"dataset {name!r}: no download mirror known; set data.mirror")
    directory.mkdir(parents=True, exist_ok=True)
    for stem in _IDX_FILES.values():
        if _find_idx(directory, stem):
            continue
        filename = f"{stem}.gz"
        expected = expected_sums.get(filename)
        if expected is None:
            raise ValueError(f"dataset {name!r}: no checksum for {filename}; set data.checksums[{filename!r}]")
        failures = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + filename
            try:
                _fetch_verified(url, directory / filename, expected)
                break
            except (OSError, ValueError) as e:
                failures.append(f"{url}: {e}")
        else:
            raise FileNotFoundError(f"dataset {name!r}: could not download {filename}: " + "; ".join(failures))
    return directory


def _fetch_verified(url: str, dest: Path, expected: str) -> None:
    algorithm, _, want = expected.partition(":")
    partial = dest.with_name(dest.name + ".part")
    logger.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        got = file_digest(partial, algorithm)
        if got != want.lower():
            raise ValueError(f"{algorithm} checksum {got} does not match the expected {want}")
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)


def _load_idx_dataset(config: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    directory = idx_directory(config.dataset, config.path, cache_dir=config.cache_dir, mirror=config.mirror,
                              download=config.download, checksums=config.checksums)
    arrays = {key: read_idx(_find_idx(directory, stem)) for key, stem in _IDX_FILES.items()}  # type: ignore[arg-type]
    x_train = arrays["train_images"].reshape(len(arrays["train_images"]), -1).astype(np.float32) / 255.0
    x_test = arrays["test_images"].reshape(len(arrays["test_images"]), -1).astype(np.float32) / 255.0
    return x_train, arrays["train_labels"].astype(np.int64), x_test, arrays["test_labels"].astype(np.int64)


# ---- tabular files ----------------------------------------------------------------------------
def _read_table(config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Features and raw target of a csv / npz file."""
    path = Path(config.path or "").expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"dataset {config.dataset!r}: path={str(path)!r} is not a file")
    if config.dataset == "csv":
        import pandas as pd

        frame = pd.read_csv(path)
        if config.target not in frame.columns:
            raise ValueError(f"target={config.target!r}: no such column in {path}; columns: {', '.join(frame.columns)}")
        features = frame.drop(columns=[config.target])
        bad = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
        if bad:
            raise ValueError(f"{path}: feature columns must be numeric; not numeric: {', '.join(map(str, bad))}")
        x, y = features.to_numpy(dtype=np.float32), frame[config.target].to_numpy()
    else:
        with np.load(path, allow_pickle=False) as archive:
            if config.target not in archive.files:
                raise ValueError(f"target={config.target!r}: no such array in {path}; arrays: {', '.join(archive.files)}")
            y = archive[config.target]
            parts = [archive[k].reshape(len(y), -1).astype(np.float32) for k in archive.files if k != config.target]
        if not parts:
            raise ValueError(f"{path}: holds only the target array {config.target!r}; no features")
        x = np.concatenate(parts, axis=1)
    if y.ndim != 1:
        raise ValueError(f"target={config.target!r}: must be one value per row, got shape {y.shape}")
    if np.isnan(x).any() or (y.dtype.kind == "f" and np.isnan(y).any()):
        raise ValueError(f"{path}: has missing (NaN) values; fill or drop them first")
    return x, y


def infer_task(y: np.ndarray) -> Task:
    """multiclass / binary / regression from a target column.

    Non-numeric: classification. Non-integer numbers: regression. Integers: binary
    with 2 distinct values, multiclass with up to 20, regression beyond.

    Example:
        >>> infer_task(np.array([0, 1, 1])), infer_task(np.array([0.5, 1.2])), infer_task(np.array(["a", "b", "c"]))
        ('binary', 'regression', 'multiclass')
    """
    distinct = np.unique(y)
    if y.dtype.kind in "fiub" and (y.dtype.kind != "f" or np.all(np.mod(y, 1) == 0)):
        if len(distinct) <= 2:
            return "binary"
        return "multiclass" if len(distinct) <= MAX_INFERRED_CLASSES else "regression"
    if y.dtype.kind == "f":
        return "regression"
    return "binary" if len(distinct) == 2 else "multiclass"


def _encode_labels(y: np.ndarray, task: Task, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    names, codes = np.unique(y, return_inverse=True)
    if task == "binary" and len(names) != 2:
        raise ValueError(f"task='binary': {where} has {len(names)} distinct target values, must have 2")
    if len(names) < 2:
        raise ValueError(f"task={task!r}: {where} has a single class; nothing to classify")
    return codes.astype(np.int64), tuple(str(n) for n in names)


# ---- assembling -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawData:
    """A dataset before splitting: the pool to train / validate on and an optional official test split."""

    name: str
    task: Task
    x_pool: np.ndarray
    y_pool: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: tuple[str, ...]


def load_raw(config: DataConfig) -> RawData:
    """Read the dataset named by ``config`` into numpy arrays, labels encoded."""
    name = config.dataset
    if name in IDX_DATASETS:
        x, y, xt, yt = _load_idx_dataset(config)
        classes = FASHION_MNIST_CLASSES if name == "fashion_mnist" else MNIST_CLASSES
        return RawData(name, "multiclass", x, y, xt, yt, classes)
    if name in ("digits", "breast_cancer", "diabetes"):
        import sklearn.datasets as skd

        bunch = getattr(skd, f"load_{name}")()
        task = KNOWN_TASKS[name]
        x = bunch.data.astype(np.float32) / (16.0 if name == "digits" else 1.0)
        if task == "regression":
            return RawData(name, task, x, bunch.target.astype(np.float32), None, None, ())
        return RawData(name, task, x, bunch.target.astype(np.int64), None, None,
                       tuple(str(c) for c in bunch.target_names))
    x, y = _read_table(config)
    task = config.task or infer_task(y)
    logger.info("%s: task %s (%s)", config.path, task, "given" if config.task else "inferred")
    if task == "regression":
        if y.dtype.kind not in "fiub":
            raise ValueError(f"task='regression': target {config.target!r} in {config.path} is not numeric")
        return RawData(name, task, x, y.astype(np.float32), None, None, ())
    codes, classes = _encode_labels(y, task, f"target {config.target!r} in {config.path}")
    return RawData(name, task, x, codes, None, None, classes)


def _stratify(raw: RawData, y: np.ndarray) -> np.ndarray | None:
    return y if raw.task != "regression" else None


def split_pool_and_test(raw: RawData, config: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training pool and the test split: the official one, or ``test_fraction`` of the data."""
    if raw.x_test is not None and raw.y_test is not None:
        return raw.x_pool, raw.y_pool, raw.x_test, raw.y_test
    from sklearn.model_selection import train_test_split

    x_pool, x_test, y_pool, y_test = train_test_split(
        raw.x_pool, raw.y_pool, test_size=config.test_fraction, stratify=_stratify(raw, raw.y_pool),
        random_state=config.split_seed,
    )
    return x_pool, y_pool, x_test, y_test


def assemble(
    raw: RawData, config: DataConfig,
    train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
) -> Dataset:
    """Subsample the train split, normalize on it, and wrap the splits as tensors."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = train, val, test
    if config.max_train_samples is not None and config.max_train_samples < len(x_train):
        rng = np.random.default_rng(config.split_seed)
        keep = np.sort(rng.choice(len(x_train), size=config.max_train_samples, replace=False))
        x_train, y_train = x_train[keep], y_train[keep]
    (x_train, x_val, x_test), offset, scale = _normalize(config.normalize, x_train, x_val, x_test)
    shape = config.known_image_shape()
    if shape is not None and shape[0] * shape[1] != x_train.shape[1]:
        raise ValueError(f"image_shape={list(shape)!r}: {shape[0]} x {shape[1]} = {shape[0] * shape[1]} pixels, "
                         f"but {config.path or raw.name} has {x_train.shape[1]} features per row")

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    return Dataset(
        name=raw.name,
        x_train=t(x_train), y_train=t(y_train),
        x_val=t(x_val), y_val=t(y_val),
        x_test=t(x_test), y_test=t(y_test),
        class_names=raw.class_names, task=raw.task, image_shape=shape,
        feature_offset=None if offset is None else torch.from_numpy(offset),
        feature_scale=None if scale is None else torch.from_numpy(scale),
        normalization=config.normalize,
    )


def load_dataset(config: DataConfig) -> Dataset:
    """Load, split and normalize a dataset into in-memory float32 tensors.

    Example:
        >>> ds = load_dataset(DataConfig(dataset="digits"))
        >>> ds.n_features, ds.n_classes, ds.task
        (64, 10, 'multiclass')
    """
    from sklearn.model_selection import train_test_split

    raw = load_raw(config)
    x_pool, y_pool, x_test, y_test = split_pool_and_test(raw, config)
    x_train, x_val, y_train, y_val = train_test_split(
        x_pool, y_pool, test_size=config.val_fraction, stratify=_stratify(raw, y_pool),
        random_state=config.split_seed,
    )
    data = assemble(raw, config, (x_train, y_train), (x_val, y_val), (x_test, y_test))
    logger.debug("loaded %s (%s): train %d, val %d, test %d", config.dataset, data.task,
                 len(data.x_train), len(data.x_val), len(data.x_test))
    return data


def _normalize(
    kind: str, train: np.ndarray, *others: np.ndarray,
) -> tuple[tuple[np.ndarray, ...], np.ndarray | None, np.ndarray | None]:
    """The splits as (x - offset) / scale with statistics of ``train``, and (offset, scale).

    ``minmax`` / ``standardize`` are per feature; ``standardize_all`` uses one mean and standard
    deviation over all features (the usual image normalization: a translated or mirrored image
    stays on the same scale). A constant feature gets scale 1.
    """
    if kind == "none":
        return (train, *others), None, None
    if kind == "minmax":
        offset, hi = train.min(axis=0), train.max(axis=0)
        scale = np.where(hi > offset, hi - offset, 1.0)
    elif kind == "standardize_all":
        std = float(train.std())
        offset = np.full(train.shape[1], train.mean(), dtype=np.float64)
        scale = np.full(train.shape[1], std if std > 0 else 1.0)
    else:
        offset, scale = train.mean(axis=0), train.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
    offset, scale = offset.astype(np.float32), scale.astype(np.float32)
    return tuple(((a - offset) / scale).astype(np.float32) for a in (train, *others)), offset, scale


def default_threads() -> int:
    """CPUs this process may use (respects affinity masks)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1

