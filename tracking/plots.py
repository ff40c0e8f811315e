"""End-of-trial plots as PNG bytes, plus the classification report as JSON text.

Logging them: write the bytes to ``<tmpdir>/<name>.png`` and call
``MlflowClient.log_artifact(run_id, path, "plots")``; or pass
``PIL.Image.open(io.BytesIO(png))`` to ``MlflowClient.log_image`` (which takes
images, not bytes). The report goes through ``MlflowClient.log_text``.

Every function builds a :class:`matplotlib.figure.Figure` directly (never
``pyplot``), so there is no global figure registry, no backend switching and
nothing to leak between trials that share a Ray worker; the figure is rendered
by Agg into memory and cleared. Numpy in, ``bytes`` (or a JSON ``str``) out.

Figure sizes are fixed, so logged images line up in the MLflow UI: every PNG is
``figsize * DPI`` pixels (see :data:`FIGURE_PIXELS`; :func:`png_dimensions`
reads them back from the PNG header).

======================  ==========================  ==========
function                panels                      pixels
======================  ==========================  ==========
learning_curves_png     loss | accuracy             1200 x 450
confusion_matrix_png    counts | row-normalized     1500 x 700
roc_pr_png              ROC | precision-recall      1400 x 600
embedding_png           2-D PCA / t-SNE scatter     900 x 700
residuals_png           predicted vs true | hist    1200 x 500
======================  ==========================  ==========

Cost: all five plots of a 10-class, 10,000-point test split take a few tenths
of a second together (PCA embedding; t-SNE is optional and slow, so it is
capped at :data:`TSNE_MAX_POINTS` points).
"""

from __future__ import annotations

import io
import json
import math
import struct
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from sklearn import metrics as skm

DPI = 100
LEARNING_CURVES_SIZE: tuple[float, float] = (12.0, 4.5)  # inches
CONFUSION_MATRIX_SIZE: tuple[float, float] = (15.0, 7.0)
ROC_PR_SIZE: tuple[float, float] = (14.0, 6.0)
EMBEDDING_SIZE: tuple[float, float] = (9.0, 7.0)
RESIDUALS_SIZE: tuple[float, float] = (12.0, 5.0)
FIGURE_PIXELS: dict[str, tuple[int, int]] = {
    name: (round(size[0] * DPI), round(size[1] * DPI))
    for name, size in {
        "learning_curves": LEARNING_CURVES_SIZE,
        "confusion_matrix": CONFUSION_MATRIX_SIZE,
        "roc_pr": ROC_PR_SIZE,
        "embedding": EMBEDDING_SIZE,
        "residuals": RESIDUALS_SIZE,
    }.items()
}  # (width, height) of each PNG
PCA_MAX_POINTS = 4_000  # embedding_png subsamples to at most this many points for PCA (drawing dominates)
TSNE_MAX_POINTS = 2_000  # ...and this many for t-SNE (about 5-10 s on one core)
NORMALIZED_ANNOTATE_MIN = 0.05  # off-diagonal shares below this stay unlabelled (their colour shows them)
ANNOTATE_MAX_CLASSES = 20  # confusion matrices with more classes get no per-cell numbers
_CURVE_GRID = np.linspace(0.0, 1.0, 201)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- helpers


def png_dimensions(png: bytes) -> tuple[int, int]:
    """``(width, height)`` in pixels, read from the PNG's IHDR chunk.

    Example:
        >>> png_dimensions(residuals_png([1.0, 2.0, 3.0], [1.1, 1.9, 3.2])) == FIGURE_PIXELS["residuals"]
        True
    """
    if len(png) < 24 or png[:8] != PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ValueError(f"png starts with {bytes(png[:16])!r}: not a PNG (signature then IHDR chunk)")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def _figure(size: tuple[float, float], **margins: float) -> Figure:
    # Fixed margins instead of constrained layout: the sizes are fixed anyway, and
    # constrained layout draws every text twice (about half of the rendering time).
    fig = Figure(figsize=size, dpi=DPI)
    fig.subplots_adjust(**margins)
    return fig


def _render(fig: Figure) -> bytes:
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a legend without artists on a degenerate input
            fig.savefig(buf, format="png", dpi=DPI)
    finally:
        fig.clear()  # free the artists now; the Figure itself has no global registry to leave
    return buf.getvalue()


def _class_names(class_names: Sequence[str]) -> list[str]:
    names = [str(c) for c in class_names]
    if len(names) < 2:
        raise ValueError(f"class_names={list(class_names)!r}: need at least 2 classes")
    return names


def _labels(name: str, y: Any, n_classes: int, n: int | None = None) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name}.shape={arr.shape}: must be 1-D (n,) class indices")
    if arr.size == 0:
        raise ValueError(f"{name} has 0 samples: need at least 1")
    if n is not None and arr.size != n:
        raise ValueError(f"{name} has {arr.size} values: must have {n} (one per sample)")
    if arr.dtype.kind not in "iub" and not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
        raise ValueError(f"{name}.dtype={arr.dtype}: must be integer class indices 0..{n_classes - 1}")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= n_classes)
    if bad.any():
        raise ValueError(
            f"{name} contains label {int(arr[bad][0])}: must be in 0..{n_classes - 1} "
            f"(one per class_names entry)"
        )
    return arr


def _colors(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    if n <= 20:
        return [cmap(i) for i in range(n)]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


# --------------------------------------------------------------------------- learning curves


def learning_curves_png(
    history: Sequence[Mapping[str, float]],
    early_stop_epoch: int | None = None,
    stopped_epoch: int | None = None,
) -> bytes:
    """Train vs validation loss (left) and accuracy (right, when recorded) per epoch.

    Args:
        history: one mapping per epoch with ``train_loss`` / ``val_loss`` and
            optionally ``train_accuracy`` / ``val_accuracy`` and ``epoch``
            (1-based; defaults to the position). ``EpochMetrics.as_dict()`` fits;
            objects with an ``as_dict()`` method are accepted too.
        early_stop_epoch: the epoch whose weights were kept (best validation),
            drawn as a dashed vertical line.
        stopped_epoch: the epoch where the scheduler stopped the trial, drawn
            as a dotted vertical line.

    Example:
        >>> h = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e + e / 20} for e in range(1, 8)]
        >>> png_dimensions(learning_curves_png(h, early_stop_epoch=4))
        (1200, 450)
    """
    rows = [dict(h.as_dict()) if hasattr(h, "as_dict") else dict(h) for h in history]
    if not rows:
        raise ValueError("history is empty: need at least one epoch")
    for name, value in (("early_stop_epoch", early_stop_epoch), ("stopped_epoch", stopped_epoch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name}={value!r}: must be None or an integer epoch >= 1")

    def column(key: str) -> np.ndarray | None:
        if not any(key in r for r in rows):
            return None
        vals = np.array([float(r.get(key, math.nan)) for r in rows], dtype=np.float64)
        vals[~np.isfinite(vals)] = np.nan  # diverged epochs become gaps
        return vals

    epochs = column("epoch")
    if epochs is None or np.isnan(epochs).any():
        epochs = np.arange(1, len(rows) + 1, dtype=np.float64)
    losses = {k: column(k) for k in ("train_loss", "val_loss")}
    accs = {k: column(k) for k in ("train_accuracy", "val_accuracy")}
    if all(v is None for v in losses.values()):
        raise ValueError(f"history keys {sorted(rows[0])}: need 'train_loss' and/or 'val_loss'")
    has_acc = any(v is not None for v in accs.values())

    fig = _figure(LEARNING_CURVES_SIZE, left=0.06, right=0.98, bottom=0.12, top=0.92, wspace=0.18)
    axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
    marker = "o" if len(rows) <= 30 else None
    panels = [(axes[0], losses, "loss")] + ([(axes[1], accs, "accuracy")] if has_acc else [])
    for ax, series, what in panels:
        for key, values in series.items():
            if values is not None:
                split = key.split("_")[0]
                ax.plot(epochs, values, marker=marker, markersize=3, label=f"{split} {what}",
                        color="tab:blue" if split == "train" else "tab:orange")
        if early_stop_epoch is not None:
            ax.axvline(early_stop_epoch, color="tab:green", linestyle="--",
                       label=f"early stop (best) epoch {early_stop_epoch}")
        if stopped_epoch is not None:
            ax.axvline(stopped_epoch, color="tab:red", linestyle=":", label=f"stopped at epoch {stopped_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.set_title(f"{what}: train vs validation")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right" if what == "loss" else "lower right")
    return _render(fig)


# --------------------------------------------------------------------------- confusion matrix


def confusion_matrix_png(
    y_true: np.ndarray | Sequence[int],
    y_pred: np.ndarray | Sequence[int],
    class_names: Sequence[str],
) -> bytes:
    """Confusion matrix as counts (left) and row-normalized recall per class (right).

    Rows are true classes, columns predicted; x labels are rotated so ten long
    names (Fashion-MNIST's "T-shirt/top", "Ankle boot"...) fit. Cells carry
    their value up to :data:`ANNOTATE_MAX_CLASSES` classes (blank cells are 0, and in the
    normalized panel off-diagonal shares under :data:`NORMALIZED_ANNOTATE_MIN` are not labelled;
    above that, a colorbar instead). Rows of classes absent from ``y_true`` are
    all zero in the normalized panel.

    Example:
        >>> png = confusion_matrix_png([0, 1, 1, 2], [0, 1, 2, 2], ["a", "b", "c"])
        >>> png_dimensions(png)
        (1500, 700)
    """
    names = _class_names(class_names)
    c = len(names)
    yt = _labels("y_true", y_true, c)
    yp = _labels("y_pred", y_pred, c, yt.size)
    cm = skm.confusion_matrix(yt, yp, labels=list(range(c)))
    support = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, support, out=np.zeros(cm.shape, dtype=np.float64), where=support > 0)

    fig = _figure(CONFUSION_MATRIX_SIZE, left=0.08, right=0.98, bottom=0.17, top=0.94, wspace=0.3)
    axes = fig.subplots(1, 2)
    font = 10 if c <= 10 else 7
    for ax, data, title, fmt in (
        (axes[0], cm, f"counts (n = {yt.size})", "d"),
        (axes[1], norm, "row-normalized (recall per class)", ".2f"),
    ):
        vmax = 1.0 if data is norm else max(int(cm.max()), 1)
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
        if c > ANNOTATE_MAX_CLASSES:  # annotated cells make a colorbar redundant (and it costs time)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        ax.set_xticks(range(c), names, rotation=45, ha="right", rotation_mode="anchor", fontsize=font)
        ax.set_yticks(range(c), names, fontsize=font)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        if c <= ANNOTATE_MAX_CLASSES:
            cell_font = FontProperties(size=font - 2)  # shared: cheaper than a fontsize per text
            for i in range(c):
                for j in range(c):
                    v = data[i, j]
                    if v == 0 or (data is norm and i != j and v < NORMALIZED_ANNOTATE_MIN):
                        continue  # blank cells are zero (or, normalized, a confusion under 5%): fewer texts
                    ax.text(j, i, format(v, fmt), ha="center", va="center", fontproperties=cell_font,
                            color="white" if v > vmax / 2 else "black")
    return _render(fig)


# --------------------------------------------------------------------------- ROC / PR


def _proba(proba: Any, n: int, c: int) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1 and c == 2:
        p = np.column_stack([1.0 - p, p])
    if p.ndim != 2 or p.shape != (n, c):
        raise ValueError(
            f"proba.shape={np.shape(proba)}: must be (n, C) = ({n}, {c})"
            + (" or (n,) positive-class probabilities" if c == 2 else "")
        )
    if not np.all(np.isfinite(p)):
        raise ValueError("proba contains NaN or inf: must be finite probabilities")
    return p


def _interp_precision(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Interpolated precision (max precision at recall >= r) on the common recall grid."""
    r, p = recall[::-1], precision[::-1]  # recall increasing
    p_interp = np.maximum.accumulate(p[::-1])[::-1]
    return np.interp(_CURVE_GRID, r, p_interp)


def roc_pr_png(
    y_true: np.ndarray | Sequence[int],
    proba: np.ndarray,
    class_names: Sequence[str],
) -> bytes:
    """ROC curves (left) and precision-recall curves (right) with AUC / AP in the legends.

    Multiclass: one one-vs-rest curve per class plus the macro average (the mean
    of the per-class curves interpolated on a common grid; its legend value is
    the mean of the per-class AUCs / APs, matching ``roc_auc_ovr_macro`` and
    ``average_precision_macro`` of :mod:`trainer.metrics`). Classes absent from
    ``y_true`` have no curve. Binary (2 names): a single curve of the second
    (positive) class; ``proba`` may be ``(n,)`` positive-class probabilities.

    Example:
        >>> import numpy as np
        >>> y = np.array([0, 1, 1, 0, 1]); p = np.array([.2, .7, .6, .4, .3])
        >>> png_dimensions(roc_pr_png(y, p, ["neg", "pos"]))
        (1400, 600)
    """
    names = _class_names(class_names)
    c = len(names)
    yt = _labels("y_true", y_true, c)
    p = _proba(proba, yt.size, c)

    fig = _figure(ROC_PR_SIZE, left=0.05, right=0.98, bottom=0.09, top=0.94, wspace=0.15)
    ax_roc, ax_pr = fig.subplots(1, 2)
    classes = [1] if c == 2 else list(range(c))
    colors = [np.array([0.12, 0.47, 0.71, 1.0])] if c == 2 else _colors(c)
    tprs, precs, aucs, aps = [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for color, k in zip(colors, classes):
            pos = yt == k
            if not pos.any() or pos.all():
                continue  # ROC / PR undefined without both positives and negatives
            fpr, tpr, _ = skm.roc_curve(pos, p[:, k], drop_intermediate=True)
            prec, rec, _ = skm.precision_recall_curve(pos, p[:, k], drop_intermediate=True)
            auc = skm.auc(fpr, tpr)
            # average_precision_score's sum of (R_n - R_n-1) P_n; drop_intermediate keeps the
            # first point of each recall level, so the sum is unchanged (and one sort is saved).
            ap = float(-np.sum(np.diff(rec) * prec[:-1]))
            lw = 2.0 if c == 2 else 1.0
            ax_roc.plot(fpr, tpr, color=color, lw=lw, label=f"{names[k]} (AUC = {auc:.3f})")
            ax_pr.plot(rec, prec, color=color, lw=lw, drawstyle="steps-post", label=f"{names[k]} (AP = {ap:.3f})")
            tprs.append(np.interp(_CURVE_GRID, fpr, tpr))
            precs.append(_interp_precision(rec, prec))
            aucs.append(auc)
            aps.append(ap)
    if c > 2 and tprs:
        ax_roc.plot(_CURVE_GRID, np.mean(tprs, axis=0), color="black", lw=2.5, linestyle="--",
                    label=f"macro average (AUC = {np.mean(aucs):.3f})")
        ax_pr.plot(_CURVE_GRID, np.mean(precs, axis=0), color="black", lw=2.5, linestyle="--",
                   label=f"macro average (AP = {np.mean(aps):.3f})")
    if not tprs:
        for ax in (ax_roc, ax_pr):
            ax.text(0.5, 0.5, "undefined: y_true has a single class", ha="center", va="center")
    ax_roc.plot([0, 1], [0, 1], color="grey", lw=0.8, linestyle=":", label="chance")
    if c == 2:
        ax_pr.axhline(float(np.mean(yt == 1)), color="grey", lw=0.8, linestyle=":", label="chance (prevalence)")
    for ax, title, xl, yl in (
        (ax_roc, "ROC (one-vs-rest)" if c > 2 else "ROC", "false positive rate", "true positive rate"),
        (ax_pr, "precision-recall" + (" (one-vs-rest)" if c > 2 else ""), "recall", "precision"),
    ):
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7 if c > 10 else 8, loc="lower right" if ax is ax_roc else "lower left")
    return _render(fig)


# --------------------------------------------------------------------------- embedding


def embedding_png(
    hidden: np.ndarray,
    y: np.ndarray | Sequence[int],
    class_names: Sequence[str],
    method: Literal["pca", "tsne"] = "pca",
    *,
    max_points: int | None = None,
    random_state: int = 0,
) -> bytes:
    """2-D view of the last hidden layer's activations, coloured by class.

    ``method="pca"`` (default, milliseconds) projects onto the first two
    principal components; ``"tsne"`` runs ``sklearn.manifold.TSNE`` (seconds).
    A random subsample (seeded by ``random_state``) of at most ``max_points``
    points is used: default :data:`PCA_MAX_POINTS` / :data:`TSNE_MAX_POINTS`.

    Example:
        >>> import numpy as np
        >>> h = np.random.default_rng(0).normal(size=(60, 8)); y = np.arange(60) % 3
        >>> png_dimensions(embedding_png(h, y, ["a", "b", "c"]))
        (900, 700)
    """
    if method not in ("pca", "tsne"):
        raise ValueError(f"method={method!r}: must be 'pca' or 'tsne'")
    names = _class_names(class_names)
    h = np.asarray(hidden, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"hidden.shape={np.shape(hidden)}: must be (n, d) activations")
    if not np.all(np.isfinite(h)):
        raise ValueError("hidden contains NaN or inf: must be finite activations")
    labels = _labels("y", y, len(names), h.shape[0])
    cap = max_points if max_points is not None else (PCA_MAX_POINTS if method == "pca" else TSNE_MAX_POINTS)
    if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 2:
        raise ValueError(f"max_points={max_points!r}: must be None or an integer >= 2")
    min_n = 2 if method == "pca" else 5
    if h.shape[0] < min_n:
        raise ValueError(f"hidden has {h.shape[0]} rows: method={method!r} needs at least {min_n}")
    rng = np.random.default_rng(random_state)
    if h.shape[0] > cap:
        idx = np.sort(rng.choice(h.shape[0], size=int(cap), replace=False))
        h, labels = h[idx], labels[idx]
    if h.shape[1] == 1:
        h = np.column_stack([h, np.zeros_like(h)])  # a width-1 layer: show it as a strip

    if method == "pca":
        # Eigenvectors of the d x d covariance: cheaper than an SVD of the n x d data.
        centered = (h - h.mean(axis=0)).astype(np.float32)
        cov = (centered.T @ centered).astype(np.float64) / max(h.shape[0] - 1, 1)
        var, vecs = np.linalg.eigh(cov)  # ascending
        var, vecs = np.clip(var[::-1], 0.0, None), vecs[:, ::-1]
        xy = centered @ vecs[:, :2].astype(np.float32)
        share = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
        axis_labels = (f"PC1 ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%} of variance)")
    else:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (h.shape[0] - 1) / 3))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                  max_iter=500, random_state=random_state).fit_transform(h)
        axis_labels = ("t-SNE 1", "t-SNE 2")

    fig = _figure(EMBEDDING_SIZE, left=0.09, right=0.78, bottom=0.08, top=0.94)
    ax: Axes = fig.subplots()
    size = 2.0 if xy.shape[0] > 2000 else 4.0
    for k, (name, color) in enumerate(zip(names, _colors(len(names)))):
        mask = labels == k
        if mask.any():  # plot() markers render faster than a scatter collection
            ax.plot(xy[mask, 0], xy[mask, 1], ".", markersize=size, color=color, alpha=0.6, label=name)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(f"last hidden layer, {method.upper() if method == 'pca' else 't-SNE'} ({xy.shape[0]} points)")
    # Outside the axes: no points hidden, and no costly search for the "best" corner.
    ax.legend(fontsize=8, markerscale=3, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              ncol=1 if len(names) <= 20 else 2)
    return _render(fig)


# --------------------------------------------------------------------------- report / regression


def classification_report_json(
    y_true: np.ndarray | Sequence[int],
    y_pred: np.ndarray | Sequence[int],
    class_names: Sequence[str],
) -> str:
    """scikit-learn's ``classification_report(output_dict=True, zero_division=0)`` as JSON text.

    Every class in ``class_names`` appears, present in ``y_true`` or not.

    Example:
        >>> import json
        >>> r = json.loads(classification_report_json([0, 1, 1], [0, 1, 0], ["cat", "dog"]))
        >>> r["dog"]["recall"], r["accuracy"]
        (0.5, 0.6666666666666666)
    """
    names = _class_names(class_names)
    yt = _labels("y_true", y_true, len(names))
    yp = _labels("y_pred", y_pred, len(names), yt.size)
    report = skm.classification_report(
        yt, yp, labels=list(range(len(names))), target_names=names, output_dict=True, zero_division=0
    )

    def plain(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"not JSON serializable: {type(o).__name__}")

    return json.dumps(report, indent=2, default=plain)


def residuals_png(
    y_true: np.ndarray | Sequence[float],
    y_pred: np.ndarray | Sequence[float],
) -> bytes:
    """Regression diagnostics: predicted vs true with the identity line (left),
    histogram of residuals ``y_true - y_pred`` (right).

    Example:
        >>> png_dimensions(residuals_png([1.0, 2.0, 3.0], [1.2, 1.8, 3.1]))
        (1200, 500)
    """
    yt = np.asarray(y_true, dtype=np.float64).reshape(-1) if np.ndim(y_true) <= 2 else None
    yp = np.asarray(y_pred, dtype=np.float64).reshape(-1) if np.ndim(y_pred) <= 2 else None
    if yt is None or yp is None or (np.ndim(y_true) == 2 and np.shape(y_true)[1] != 1) or (
        np.ndim(y_pred) == 2 and np.shape(y_pred)[1] != 1
    ):
        raise ValueError(
            f"y_true.shape={np.shape(y_true)}, y_pred.shape={np.shape(y_pred)}: must be (n,) or (n, 1)"
        )
    if yt.size == 0 or yt.shape != yp.shape:
        raise ValueError(f"y_true has {yt.size} values and y_pred {yp.size}: must be equal and >= 1")
    if not (np.all(np.isfinite(yt)) and np.all(np.isfinite(yp))):
        raise ValueError("y_true or y_pred contains NaN or inf: must be finite")
    resid = yt - yp
    rmse = float(np.sqrt(np.mean(resid**2)))

    fig = _figure(RESIDUALS_SIZE, left=0.06, right=0.98, bottom=0.1, top=0.92, wspace=0.18)
    ax_sc, ax_h = fig.subplots(1, 2)
    ax_sc.plot(yt, yp, ".", markersize=2.0 if yt.size > 2000 else 4.0, alpha=0.5)
    lo, hi = float(min(yt.min(), yp.min())), float(max(yt.max(), yp.max()))
    ax_sc.plot([lo, hi], [lo, hi], color="black", lw=1, linestyle="--", label="y_pred = y_true")
    ax_sc.set_xlabel("true")
    ax_sc.set_ylabel("predicted")
    ax_sc.set_title(f"predicted vs true (RMSE = {rmse:.4g})")
    ax_sc.legend(fontsize=8, loc="upper left")
    ax_sc.grid(alpha=0.3)
    ax_h.hist(resid, bins=min(50, max(5, int(np.sqrt(yt.size)))), color="tab:blue", alpha=0.8)
    ax_h.axvline(0.0, color="black", lw=1, linestyle="--")
    ax_h.set_xlabel("residual (true - predicted)")
    ax_h.set_ylabel("count")
    ax_h.set_title(f"residuals (mean = {resid.mean():.3g}, sd = {resid.std():.3g})")
    ax_h.grid(alpha=0.3)
    return _render(fig)
