"""End-of-trial plots as PNG bytes, plus the classification report as JSON text.

Logging them: write the bytes to ``<tmpdir>/<name>.png`` and call
``MlflowClient.log_artifact(run_id, path, "plots")``; or pass
``PIL.Image.open(io.BytesIO(png))`` to ``MlflowClient.log_image`` (which takes
images, not bytes). The report goes through ``MlflowClient.log_text``.

Every function builds on a :class:`matplotlib.figure.Figure` directly (never
``pyplot``), so there is no global figure registry and no backend switching; the
figure is rendered by Agg into memory. Numpy in, ``bytes`` (or a JSON ``str``) out.

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

Cost (issue #4: evaluation plus plots at most 5% of a 10-epoch trial). Agg spends
most of its time on text: FreeType loads and renders every glyph of every string
anew, a tick costs several artists, a legend entry a packed box of its own. So:

- the figure of each plot (axes, ticks, axis labels, titles, fixed limits) is built
  once per thread and kept (:data:`SKELETON_CACHE_SIZE` of them); each call adds its
  data artists, renders, and removes them again, so nothing of one trial's data is
  left for the next (a test renders A, B, A and compares A's bytes). Reused, a
  figure keeps its tick artists and its renderer, whose cache knows the size of
  every label it drew before; :func:`release_figures` drops them;
- what does not depend on the data (the axes of ROC / PR and of the confusion
  matrix, the embedding's legend) is even rendered once, and each call only draws
  its own artists onto a copy of it (matplotlib's blitting);
- one legend for the two panels of the ROC / PR and of the learning-curve figure
  (same colours in both), curves of all classes as one ``LineCollection`` per panel;
- glyphs without hinting (:data:`RENDER_RC`, about half the cost of hinted ones;
  set only while drawing, under a lock: matplotlib is not thread-safe), and RGB PNGs
  with unfiltered rows at zlib level :data:`PNG_COMPRESS_LEVEL` (:func:`encode_png`);
- the ROC / PR curves come from :func:`trainer.metrics.one_vs_rest_curves`, which the
  test metrics already computed (``TrialEvaluation.test_curves``): scikit-learn's
  curves are computed once per class and trial.

``benchmarks/evaluation_cost.py`` measures the whole end-of-trial evaluation.
"""

from __future__ import annotations

import json
import math
import struct
import threading
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import matplotlib
import numpy as np
from matplotlib import cbook
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from sklearn import metrics as skm
from threadpoolctl import ThreadpoolController

from trainer.metrics import ClassCurves, one_vs_rest_curves

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
SKELETON_CACHE_SIZE = 8  # figures kept per thread for reuse (a few MB of Agg buffer each)
RENDER_RC: dict[str, Any] = {"text.hinting": "no_hinting"}  # hinted glyphs cost about twice as much
PNG_COMPRESS_LEVEL = 1  # zlib level: the default 6 costs more and saves only a few per cent of bytes
_CURVE_GRID = np.linspace(0.0, 1.0, 201)  # where the macro-average curves are evaluated
_UNIT_TICKS = np.linspace(0.0, 1.0, 6)  # ticks of the [0, 1] axes of ROC and PR
LEGEND_TITLE = "ROC AUC | AP"  # the ROC / PR legend's entries read "name  AUC | AP"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_local = threading.local()  # this thread's kept figures
_RENDER_LOCK = threading.Lock()  # matplotlib is not thread-safe, and RENDER_RC is set process-wide while drawing


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


@dataclass(frozen=True)
class _Skeleton:
    """A figure kept for reuse, and the artists that belong to it (everything else is a call's data)."""

    fig: Figure
    axes: tuple[Axes, ...]
    keep: frozenset[int]  # ids of the skeleton's own artists: alive as long as the figure, so never reused
    varying: frozenset[int]  # ids of the skeleton artists a call changes (an image's data, a title)
    background: Any = None  # the static rest, rendered once (blitted figures)


def _children(fig: Figure, axes: Sequence[Axes]) -> list[Artist]:
    return [*fig.get_children(), *(a for ax in axes for a in ax.get_children())]


Build = Callable[[], tuple[Figure, Sequence[Axes], Sequence[Artist]]]


def _skeleton(key: tuple[Any, ...], build: Build, *, blit: bool = False) -> _Skeleton:
    """The figure for ``key``, built by ``build`` on the first call in this thread, then reused.

    ``key`` must hold everything ``build`` depends on; ``build`` returns the figure, its axes and
    the skeleton artists that calls change. With ``blit``, everything else (axes, ticks, labels,
    grid) is rendered once here and :func:`_blit` only draws what a call adds or changes onto a
    copy of it: the limits of a blitted figure must not depend on the data.
    The returned figure carries no data artists (see :func:`_strip`).
    """
    skeletons: OrderedDict[tuple[Any, ...], _Skeleton] = _local.__dict__.setdefault("skeletons", OrderedDict())
    sk = skeletons.get(key)
    if sk is not None:
        skeletons.move_to_end(key)
        _strip(sk)  # in case a call failed half-way
        return sk
    fig, axes, varying = build()
    canvas = FigureCanvasAgg(fig)  # attached: savefig keeps its renderer (and the text sizes cached on it)
    background = None
    if blit:
        for artist in varying:
            artist.set_visible(False)
        with _RENDER_LOCK, matplotlib.rc_context(RENDER_RC):
            canvas.draw()
        background = canvas.copy_from_bbox(fig.bbox)
        for artist in varying:
            artist.set_visible(True)
    sk = skeletons[key] = _Skeleton(fig, tuple(axes), frozenset(map(id, _children(fig, axes))),
                                    frozenset(map(id, varying)), background)
    while len(skeletons) > SKELETON_CACHE_SIZE:
        skeletons.popitem(last=False)
    return sk


def release_figures() -> int:
    """Drop the figures this thread keeps for reuse (the next plot builds its figure anew).

    Returns how many there were. Nothing needs it for correctness; it frees their memory.
    """
    skeletons = _local.__dict__.pop("skeletons", {})
    return len(skeletons)


def _strip(sk: _Skeleton) -> None:
    """Remove every artist a call added, and forget the data limits it set."""
    for artist in _children(sk.fig, sk.axes):
        if id(artist) not in sk.keep:
            artist.remove()
    for ax in sk.axes:
        ax.relim()  # data limits of the skeleton's own artists only


def _render_skeleton(sk: _Skeleton) -> bytes:
    """Render the figure (:func:`_blit` when it has a background), then strip the call's artists."""
    try:
        return _blit(sk) if sk.background is not None else _render(sk.fig)
    finally:
        _strip(sk)


def _blit(sk: _Skeleton) -> bytes:
    """Restore the static background, draw the call's and the varying artists on it, encode."""
    def changed(artists: Sequence[Artist]) -> list[Artist]:
        return sorted((a for a in artists if id(a) not in sk.keep or id(a) in sk.varying),
                      key=lambda a: a.get_zorder())  # the order Figure.draw / Axes.draw use

    canvas = sk.fig.canvas
    with _RENDER_LOCK, warnings.catch_warnings(), matplotlib.rc_context(RENDER_RC):
        warnings.simplefilter("ignore")
        canvas.restore_region(sk.background)
        renderer = canvas.get_renderer()
        for ax in sk.axes:
            if id(ax) not in sk.varying:  # a varying axes is drawn whole, below
                for artist in changed(ax.get_children()):
                    artist.draw(renderer)
        for artist in changed(sk.fig.get_children()):  # figure legends, varying axes
            artist.draw(renderer)
    return _encode(canvas)


def _render(fig: Figure) -> bytes:
    """Draw the whole figure with Agg (glyphs unhinted, see :data:`RENDER_RC`) and encode it."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    with _RENDER_LOCK, warnings.catch_warnings(), matplotlib.rc_context(RENDER_RC):
        warnings.simplefilter("ignore")  # e.g. a legend without artists on a degenerate input
        canvas.draw()
    return _encode(canvas)


def _encode(canvas: FigureCanvasAgg) -> bytes:
    """The canvas as a PNG (see :func:`encode_png`)."""
    return encode_png(np.asarray(canvas.buffer_rgba())[:, :, :3])


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(rgb: np.ndarray, dpi: int = DPI) -> bytes:
    """An ``(h, w, 3)`` uint8 image as an 8-bit RGB PNG, every row unfiltered, zlib level 1.

    Pillow (behind ``savefig``) picks the best of five PNG filters for every row: two thirds
    of its encoding time, and no smaller files for plots, which are mostly flat colour. The
    figures are opaque, so RGB without alpha: a quarter fewer bytes to compress.

    Example:
        >>> png = encode_png(np.zeros((2, 3, 3), dtype=np.uint8))
        >>> png_dimensions(png)
        (3, 2)
    """
    h, w, _ = rgb.shape
    rows = np.empty((h, 1 + 3 * w), dtype=np.uint8)
    rows[:, 0] = 0  # filter type 0 (none)
    rows[:, 1:] = rgb.reshape(h, 3 * w)
    ppm = round(dpi / 0.0254)  # pixels per metre
    return b"".join([
        PNG_SIGNATURE,
        _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)),  # 8-bit RGB, not interlaced
        _png_chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1)),
        _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), PNG_COMPRESS_LEVEL)),
        _png_chunk(b"IEND", b""),
    ])


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
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    if n <= 20:
        return [cmap(i) for i in range(n)]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


@cache
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()  # inspecting the loaded libraries takes tens of ms: once per process


# --------------------------------------------------------------------------- learning curves


def learning_curves_png(
    history: Sequence[Mapping[str, float]],
    early_stop_epoch: int | None = None,
    stopped_epoch: int | None = None,
) -> bytes:
    """Train vs validation loss (left) and accuracy (right, when recorded) per epoch, one legend above.

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

    sk = _skeleton(("learning_curves", has_acc), lambda: _learning_curves_skeleton(has_acc))
    marker = "o" if len(rows) <= 30 else None
    handles: dict[str, Artist] = {}
    panels = [(sk.axes[0], losses)] + ([(sk.axes[1], accs)] if has_acc else [])
    for ax, series in panels:
        for key, values in series.items():
            if values is not None:
                split = "train" if key.startswith("train") else "validation"
                (handles[split],) = ax.plot(epochs, values, marker=marker, markersize=3,
                                            color="tab:blue" if split == "train" else "tab:orange")
        if early_stop_epoch is not None:
            handles[f"early stop (best weights): epoch {early_stop_epoch}"] = ax.axvline(
                early_stop_epoch, color="tab:green", linestyle="--")
        if stopped_epoch is not None:
            handles[f"stopped by the scheduler: epoch {stopped_epoch}"] = ax.axvline(
                stopped_epoch, color="tab:red", linestyle=":")
    # One legend for both panels (same colours), above them: it hides no curve.
    sk.fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.995),
                  ncol=len(handles), fontsize=9, frameon=False)
    return _render_skeleton(sk)


def _learning_curves_skeleton(has_acc: bool) -> tuple[Figure, Sequence[Axes], Sequence[Artist]]:
    fig = _figure(LEARNING_CURVES_SIZE, left=0.06, right=0.98, bottom=0.12, top=0.9, wspace=0.18)
    axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
    for ax, what in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))  # epochs: no 1.25, 1.50...
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6))  # 'auto' gives ~9: each tick label costs
        ax.grid(alpha=0.3)
    return fig, list(axes), []


# --------------------------------------------------------------------------- confusion matrix


def confusion_matrix_png(
    y_true: np.ndarray | Sequence[int],
    y_pred: np.ndarray | Sequence[int],
    class_names: Sequence[str],
) -> bytes:
    """Confusion matrix as counts (left) and row-normalized recall per class (right).

    Rows are true classes (named on the left panel only: the rows are the same), columns
    predicted; x labels are rotated so ten long
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

    sk = _skeleton(("confusion_matrix", tuple(names)), lambda: _confusion_matrix_skeleton(names), blit=True)
    ax_counts, ax_norm = sk.axes
    ax_counts.set_title(f"counts (n = {yt.size})")
    vmax = max(int(cm.max()), 1)
    for ax, data, top, fmt in ((ax_counts, cm, vmax, "d"), (ax_norm, norm, 1.0, ".2f")):
        image = next(a for a in ax.get_children() if isinstance(a, AxesImage))
        image.set_data(data)
        image.set_clim(0, top)
        if c <= ANNOTATE_MAX_CLASSES:
            _annotate_cells(ax, data, fmt, top, normalized=data is norm, size=(10 if c <= 10 else 7) - 2)
    return _render_skeleton(sk)


def _annotate_cells(ax: Axes, data: np.ndarray, fmt: str, vmax: float, *, normalized: bool, size: float) -> None:
    """Write each cell's value, skipping zeros (blank) and, normalized, off-diagonal shares under 5%."""
    font = FontProperties(size=size)  # shared: cheaper than a fontsize per text
    for i, j in zip(*np.nonzero(data)):
        v = data[i, j]
        if normalized and i != j and v < NORMALIZED_ANNOTATE_MIN:
            continue
        ax.text(j, i, format(v, fmt), ha="center", va="center", fontproperties=font,
                color="white" if v > vmax / 2 else "black")


def _confusion_matrix_skeleton(names: list[str]) -> tuple[Figure, Sequence[Axes], Sequence[Artist]]:
    c = len(names)
    fig = _figure(CONFUSION_MATRIX_SIZE, left=0.08, right=0.98, bottom=0.17, top=0.94, wspace=0.12)
    axes = fig.subplots(1, 2)
    font = 10 if c <= 10 else 7
    for ax, title in zip(axes, ("counts", "row-normalized (recall per class)")):
        image = ax.imshow(np.zeros((c, c)), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        if c > ANNOTATE_MAX_CLASSES:  # annotated cells make a colorbar redundant (and it costs time)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
        ax.set_xticks(range(c), names, rotation=45, ha="right", rotation_mode="anchor", fontsize=font)
        ax.set_xlabel("predicted")
        ax.set_title(title)
    axes[0].set_yticks(range(c), names, fontsize=font)
    axes[0].set_ylabel("true")
    axes[1].set_yticks(range(c))
    axes[1].tick_params(labelleft=False)  # the same rows as on the left: their names once
    # Varying: the images, the counts title (n); the spines are drawn again over the images.
    varying = [*axes[0].images, *axes[1].images, axes[0].title, *axes[0].spines.values(), *axes[1].spines.values()]
    return fig, list(axes), varying


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


def pr_steps(curve: ClassCurves) -> np.ndarray:
    """The PR curve as drawn: ``(m, 2)`` vertices of the step function AP integrates.

    Recall increasing, post-steps (``drawstyle="steps-post"``). Of a run of thresholds with
    the same recall only the first and the last point are kept: the others lie on the
    vertical segment between them, so the drawing is the same with a tenth of the vertices.
    """
    r, p = curve.recall[::-1], curve.precision[::-1]
    inner = (r[1:-1] != r[:-2]) | (r[1:-1] != r[2:])
    keep = np.concatenate([[True], inner, [True]]) if r.size > 2 else np.ones(r.size, dtype=bool)
    return np.column_stack(cbook.pts_to_poststep(r[keep], p[keep]))


def roc_pr_png(
    y_true: np.ndarray | Sequence[int],
    proba: np.ndarray,
    class_names: Sequence[str],
    *,
    curves: Sequence[ClassCurves] | None = None,
) -> bytes:
    """ROC curves (left) and precision-recall curves (middle), one legend with AUC and AP (right).

    Multiclass: one one-vs-rest curve per class plus the macro average (the mean
    of the per-class curves interpolated on a common grid; its legend value is
    the mean of the per-class AUCs / APs, matching ``roc_auc_ovr_macro`` and
    ``average_precision_macro`` of :mod:`trainer.metrics`). Classes absent from
    ``y_true`` have no curve. Binary (2 names): a single curve of the second
    (positive) class; ``proba`` may be ``(n,)`` positive-class probabilities.
    A class has the same colour in both panels, so one legend entry carries both its
    AUC and its AP: the exact scikit-learn values (see :func:`legend_entries`).

    ``curves``: :func:`trainer.metrics.one_vs_rest_curves` of ``(y_true, proba)`` when the
    caller has them already (``TrialEvaluation.test_curves``); computed here otherwise.

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
    if curves is None:
        curves = one_vs_rest_curves(yt, p)
    shown = [cv for cv in curves if c > 2 or cv.index == 1]  # binary: the positive class only
    sk = _skeleton(("roc_pr", c == 2), lambda: _roc_pr_skeleton(binary=c == 2), blit=True)
    ax_roc, ax_pr = sk.axes
    palette = [(0.12, 0.47, 0.71, 1.0)] * 2 if c == 2 else _colors(c)
    colors = [palette[cv.index] for cv in shown]
    lw = 2.0 if c == 2 else 1.0
    # One collection per panel: one artist and one draw call instead of one Line2D per class.
    ax_roc.add_collection(LineCollection([np.column_stack([cv.fpr, cv.tpr]) for cv in shown],
                                         colors=colors, linewidths=lw), autolim=False)
    ax_pr.add_collection(LineCollection([pr_steps(cv) for cv in shown], colors=colors, linewidths=lw),
                         autolim=False)
    handles: list[Artist] = [Line2D([], [], color=col, lw=lw) for col in colors]
    if c > 2 and shown:
        macro = {"color": "black", "lw": 2.5, "linestyle": "--"}
        ax_roc.plot(_CURVE_GRID, np.mean([np.interp(_CURVE_GRID, cv.fpr, cv.tpr) for cv in shown], axis=0),
                    **macro)
        (line,) = ax_pr.plot(_CURVE_GRID, np.mean([_interp_precision(cv.recall, cv.precision) for cv in shown],
                                                  axis=0), **macro)
        handles.append(line)
    if not shown:
        for ax in (ax_roc, ax_pr):
            ax.text(0.5, 0.5, "undefined: y_true has a single class", ha="center", va="center")
    chance = next(a for a in ax_roc.get_lines())  # the skeleton's diagonal
    if c == 2:
        ax_pr.axhline(float(np.mean(yt == 1)), color="grey", lw=0.8, linestyle=":")
    handles.append(chance)
    labels = legend_entries(shown, names, prevalence=float(np.mean(yt == 1)) if c == 2 else None)
    # Outside the panels: it hides no curve, and a fixed place needs no search for the emptiest corner.
    sk.fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.785, 0.94), borderaxespad=0.0,
                  fontsize=7 if c > 10 else 8, title=LEGEND_TITLE, title_fontsize=8)
    return _render_skeleton(sk)


def legend_entries(curves: Sequence[ClassCurves], names: Sequence[str], prevalence: float | None = None) -> list[str]:
    """The ROC / PR legend's labels: one per curve, the macro average (multiclass), then chance.

    Each reads ``name  AUC | AP`` under the legend title :data:`LEGEND_TITLE` (short labels:
    legend text is the costliest part of the figure). AUC and AP are the curves' own, i.e.
    scikit-learn's ``roc_auc_score`` and ``average_precision_score`` of each class, to three
    decimals; ``prevalence`` (binary) is the PR chance level.

    Example:
        >>> import numpy as np
        >>> from trainer.metrics import one_vs_rest_curves
        >>> y = np.array([0, 1, 1, 0, 1]); p = np.array([.2, .7, .6, .4, .3])
        >>> legend_entries(one_vs_rest_curves(y, np.column_stack([1 - p, p]), [1]), ["neg", "pos"], 0.6)
        ['pos  0.833 | 0.917', 'chance  0.500 | 0.600']
    """
    labels = [f"{names[cv.index]}  {cv.auc:.3f} | {cv.ap:.3f}" for cv in curves]
    if prevalence is None and curves:
        labels.append(f"macro average  {np.mean([cv.auc for cv in curves]):.3f} | "
                      f"{np.mean([cv.ap for cv in curves]):.3f}")
    labels.append("chance" if prevalence is None else f"chance  0.500 | {prevalence:.3f}")
    return labels


def _roc_pr_skeleton(binary: bool) -> tuple[Figure, Sequence[Axes], Sequence[Artist]]:
    fig = _figure(ROC_PR_SIZE, left=0.045, right=0.775, bottom=0.09, top=0.94, wspace=0.17)
    ax_roc, ax_pr = fig.subplots(1, 2)
    ax_roc.plot([0, 1], [0, 1], color="grey", lw=0.8, linestyle=":")
    for ax, title, xl, yl in (
        (ax_roc, "ROC" if binary else "ROC (one-vs-rest)", "false positive rate", "true positive rate"),
        (ax_pr, "precision-recall" if binary else "precision-recall (one-vs-rest)", "recall", "precision"),
    ):
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xticks=_UNIT_TICKS, yticks=_UNIT_TICKS,
               xlabel=xl, ylabel=yl, title=title)
        ax.grid(alpha=0.3)
    return fig, [ax_roc, ax_pr], []


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
    """2-D view of the last hidden layer's activations, coloured by class (every class in the legend).

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
    h = np.asarray(hidden)
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
    h = h.astype(np.float64)
    if h.shape[1] == 1:
        h = np.column_stack([h, np.zeros_like(h)])  # a width-1 layer: show it as a strip

    if method == "pca":
        xy, axis_labels = _pca_2d(h)
    else:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (h.shape[0] - 1) / 3))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                  max_iter=500, random_state=random_state).fit_transform(h)
        axis_labels = ("t-SNE 1", "t-SNE 2")

    sk = _skeleton(("embedding", tuple(names)), lambda: _embedding_skeleton(names), blit=True)
    (ax,) = sk.axes
    size = 2.0 if xy.shape[0] > 2000 else 4.0
    for k, color in enumerate(_colors(len(names))):
        mask = labels == k
        if mask.any():  # plot() markers render faster than a scatter collection
            ax.plot(xy[mask, 0], xy[mask, 1], ".", markersize=size, color=color, alpha=0.6)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(f"last hidden layer, {method.upper() if method == 'pca' else 't-SNE'} ({xy.shape[0]} points)")
    return _render_skeleton(sk)


def _pca_2d(h: np.ndarray) -> tuple[np.ndarray, tuple[str, str]]:
    """Project onto the first two principal components; the axis labels give their share of variance."""
    # Eigenvectors of the d x d covariance: cheaper than an SVD of the n x d data. One BLAS
    # thread: at this size, waking a second one costs more than it saves (5x on a busy machine).
    with _threadpools().limit(limits=1, user_api="blas"):
        centered = (h - h.mean(axis=0)).astype(np.float32)
        cov = (centered.T @ centered).astype(np.float64) / max(h.shape[0] - 1, 1)
        var, vecs = np.linalg.eigh(cov)  # ascending
        var, vecs = np.clip(var[::-1], 0.0, None), vecs[:, ::-1]
        xy = centered @ vecs[:, :2].astype(np.float32)
    share = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    return xy, (f"PC1 ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%} of variance)")


def _embedding_skeleton(names: list[str]) -> tuple[Figure, Sequence[Axes], Sequence[Artist]]:
    fig = _figure(EMBEDDING_SIZE, left=0.09, right=0.78, bottom=0.08, top=0.94)
    ax = fig.subplots()
    handles = [Line2D([], [], marker=".", linestyle="", markersize=7, color=color, alpha=0.6)
               for color in _colors(len(names))]
    # Every class, outside the axes (no point hidden) and static: rendered once, with the figure.
    fig.legend(handles, names, fontsize=8, loc="upper left", bbox_to_anchor=(0.79, 0.94), borderaxespad=0.0,
               ncol=1 if len(names) <= 20 else 2)
    return fig, [ax], [ax]  # the axes (limits, ticks, points) vary: drawn whole by each call


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
