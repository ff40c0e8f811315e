"""k-fold cross-validation of one configuration.

The test split is held out exactly as :func:`trainer.data.load_dataset` holds it out;
the rest (train + validation) is cut into ``k`` folds (stratified for classification).
Each fold trains on k - 1 folds, normalized on them only, and validates on the
remaining one.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

import numpy as np

from trainer.config import MLPConfig
from trainer.data import DataConfig, assemble, load_raw, split_pool_and_test
from trainer.loop import epoch_metric_names, train

logger = logging.getLogger(__name__)


def cross_validate(config: MLPConfig, data_config: DataConfig, k: int, *, threads: int | None = None) -> dict[str, Any]:
    """Train ``config`` on each of ``k`` folds; per-fold and mean / std (sample, n - 1) val metrics.

    The val metrics of a fold are those of the weights the model ends with (the best
    epoch's when ``restore_best_weights``).

    Returns:
        ``{"k": k, "folds": [{"val_loss": ..., ...}, ...], "mean": {...}, "std": {...}}``

    Example:
        >>> cv = cross_validate(MLPConfig(epochs=1, hidden_size=8), DataConfig(dataset="digits"), k=2)
        >>> len(cv["folds"]), sorted(cv["mean"])
        (2, ['val_accuracy', 'val_loss'])
    """
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"k={k!r}: cross-validation needs an integer number of folds >= 2")
    from sklearn.model_selection import KFold, StratifiedKFold

    raw = load_raw(data_config)
    x_pool, y_pool, x_test, y_test = split_pool_and_test(raw, data_config)
    if k > len(x_pool):
        raise ValueError(f"k={k}: more folds than the {len(x_pool)} samples to cross-validate on")
    splitter = (
        KFold(n_splits=k, shuffle=True, random_state=data_config.split_seed) if raw.task == "regression"
        else StratifiedKFold(n_splits=k, shuffle=True, random_state=data_config.split_seed)
    )
    names = [m for m in epoch_metric_names(raw.task) if m.startswith("val_")]
    folds: list[dict[str, float]] = []
    for i, (train_idx, val_idx) in enumerate(splitter.split(x_pool, y_pool)):
        data = assemble(raw, data_config, (x_pool[train_idx], y_pool[train_idx]),
                        (x_pool[val_idx], y_pool[val_idx]), (x_test, y_test))
        metrics = train(config, data, threads=threads).final_metrics.as_dict()
        folds.append({m: metrics[m] for m in names})
        logger.info("fold %d/%d: %s", i + 1, k, folds[-1])
    return {
        "k": k,
        "folds": folds,
        "mean": {m: float(np.mean([f[m] for f in folds])) for m in names},
        "std": {m: statistics.stdev([f[m] for f in folds]) for m in names},
    }
