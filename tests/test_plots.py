"""tracking.plots: PNG bytes of the documented size, for 2 and 10 classes, and the JSON report."""

from __future__ import annotations

import io
import json
import threading

import matplotlib
import numpy as np
import pytest
from matplotlib import cbook
from matplotlib import image as mpimg
from matplotlib.figure import Figure
from sklearn import metrics as skm
from sklearn.metrics import classification_report
from threadpoolctl import threadpool_limits

from tracking import plots
from tracking.plots import (
    DPI,
    FIGURE_PIXELS,
    PNG_SIGNATURE,
    classification_report_json,
    confusion_matrix_png,
    embedding_png,
    learning_curves_png,
    legend_entries,
    png_dimensions,
    pr_steps,
    release_figures,
    residuals_png,
    roc_pr_png,
)
from trainer.metrics import classification_metrics, one_vs_rest_curves

FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
NAMES = {2: ("negative", "positive"), 10: FASHION}


def _data(c: int, n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += 2.0
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return y, p, p.argmax(axis=1)


def _check_png(png: bytes, kind: str) -> None:
    assert isinstance(png, bytes) and png.startswith(PNG_SIGNATURE)
    assert png_dimensions(png) == FIGURE_PIXELS[kind]
    pixels = mpimg.imread(io.BytesIO(png), format="png")  # decodes: a real PNG of that size
    assert pixels.shape[:2] == (FIGURE_PIXELS[kind][1], FIGURE_PIXELS[kind][0])


def test_documented_sizes() -> None:
    assert DPI == 100
    assert FIGURE_PIXELS == {
        "learning_curves": (1200, 450),
        "confusion_matrix": (1500, 700),
        "roc_pr": (1400, 600),
        "embedding": (900, 700),
        "residuals": (1200, 500),
    }
    assert plots.PCA_MAX_POINTS == 4_000 and plots.TSNE_MAX_POINTS == 2_000  # drawing points dominates


def test_learning_curves() -> None:
    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e + e / 30, "train_accuracy": 1 - 1 / e, "val_accuracy": 0.7}
        for e in range(1, 13)
    ]
    _check_png(learning_curves_png(history, early_stop_epoch=5, stopped_epoch=9), "learning_curves")


def test_learning_curves_loss_only_nan_and_objects() -> None:
    class Epoch:  # like trainer.loop.EpochMetrics
        def __init__(self, e: int) -> None:
            self.e = e

        def as_dict(self) -> dict[str, float]:
            return {"epoch": self.e, "train_loss": 1 / self.e, "val_loss": float("nan") if self.e == 3 else 1.0}

    png = learning_curves_png([Epoch(e) for e in range(1, 5)])
    assert png_dimensions(png) == FIGURE_PIXELS["learning_curves"]
    png = learning_curves_png([{"train_loss": float("inf")}, {"train_loss": 0.5}], stopped_epoch=2)
    assert png_dimensions(png) == FIGURE_PIXELS["learning_curves"]


@pytest.mark.parametrize(
    ("call", "quoted"),
    [
        (lambda: learning_curves_png([]), "history is empty"),
        (lambda: learning_curves_png([{"lr": 0.1}]), "need 'train_loss'"),
        (lambda: learning_curves_png([{"train_loss": 1.0}], early_stop_epoch=0), "early_stop_epoch=0"),
        (lambda: confusion_matrix_png([0, 1, 2], [0, 1, 1], ["a", "b"]), "y_true contains label 2"),
        (lambda: confusion_matrix_png([0, 1], [0], ["a", "b"]), "y_pred has 1 values"),
        (lambda: confusion_matrix_png([0], [0], ["a"]), "class_names=['a']"),
        (lambda: roc_pr_png([0, 1], np.full((2, 3), 1 / 3), ["a", "b"]), "proba.shape=(2, 3)"),
        (lambda: embedding_png(np.zeros((4, 2)), [0, 1, 0, 1], ["a", "b"], method="umap"), "method='umap'"),
        (lambda: embedding_png(np.zeros(4), [0, 1, 0, 1], ["a", "b"]), "hidden.shape=(4,)"),
        (lambda: residuals_png([1.0, 2.0], [1.0]), "y_pred 1"),
        (lambda: png_dimensions(b"GIF89a" + bytes(30)), "not a PNG"),
    ],
)
def test_errors_quote_parameter_and_value(call, quoted: str) -> None:
    with pytest.raises(ValueError) as err:
        call()
    assert quoted in str(err.value)


@pytest.mark.parametrize("c", [2, 10])
def test_confusion_matrix(c: int) -> None:
    y, _, pred = _data(c)
    _check_png(confusion_matrix_png(y, pred, NAMES[c]), "confusion_matrix")


def test_confusion_matrix_with_absent_class() -> None:
    png = confusion_matrix_png([0, 0, 1], [0, 2, 1], ["a", "b", "c"])  # class 2 never true: zero row
    assert png_dimensions(png) == FIGURE_PIXELS["confusion_matrix"]


@pytest.mark.parametrize("c", [2, 10])
def test_roc_pr(c: int) -> None:
    y, p, _ = _data(c)
    _check_png(roc_pr_png(y, p, NAMES[c]), "roc_pr")


def test_roc_pr_binary_positive_probs_and_degenerate() -> None:
    y, p, _ = _data(2, n=50)
    assert png_dimensions(roc_pr_png(y, p[:, 1], NAMES[2])) == FIGURE_PIXELS["roc_pr"]
    assert png_dimensions(roc_pr_png(np.zeros(5, int), np.full(5, 0.3), NAMES[2])) == FIGURE_PIXELS["roc_pr"]
    y3 = np.array([0, 1, 0, 1])  # class 2 absent: no curve for it, no error
    p3 = np.full((4, 3), 1 / 3)
    assert png_dimensions(roc_pr_png(y3, p3, ["a", "b", "c"])) == FIGURE_PIXELS["roc_pr"]


@pytest.mark.parametrize("c", [2, 10])
def test_embedding_pca(c: int) -> None:
    rng = np.random.default_rng(c)
    y = np.arange(400) % c
    hidden = rng.normal(size=(400, 32)).astype(np.float32)
    hidden[np.arange(400), y] += 3.0
    _check_png(embedding_png(hidden, y, NAMES[c]), "embedding")


def test_embedding_tsne_subsample_and_width_one() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(500) % 3
    hidden = rng.normal(size=(500, 8))
    with threadpool_limits(1):  # one OpenMP thread, as on a 1-CPU Ray worker: no thread-pool start-up cost
        png = embedding_png(hidden, y, ["a", "b", "c"], method="tsne", max_points=40)
    assert png_dimensions(png) == FIGURE_PIXELS["embedding"]
    png = embedding_png(hidden[:, :1], y, ["a", "b", "c"], max_points=100)  # a width-1 hidden layer
    assert png_dimensions(png) == FIGURE_PIXELS["embedding"]


@pytest.mark.parametrize("c", [2, 10])
def test_classification_report_json(c: int) -> None:
    y, _, pred = _data(c)
    report = json.loads(classification_report_json(y, pred, NAMES[c]))
    expected = classification_report(y, pred, target_names=list(NAMES[c]), output_dict=True, zero_division=0)
    assert report.keys() == expected.keys()
    for name in NAMES[c]:
        assert report[name] == pytest.approx(expected[name])
    assert report["accuracy"] == pytest.approx(expected["accuracy"])
    assert report["macro avg"] == pytest.approx(expected["macro avg"])


def test_classification_report_json_lists_absent_classes() -> None:
    report = json.loads(classification_report_json([0, 0, 1], [0, 1, 1], ["a", "b", "c"]))
    assert report["c"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}


def test_residuals() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=500)
    _check_png(residuals_png(y, (y + rng.normal(scale=0.2, size=500)).reshape(-1, 1)), "residuals")


# --------------------------------------------------------------------------- reuse, legend values, PR vertices


def _history(shift: float) -> list[dict[str, float]]:
    return [{"epoch": e, "train_loss": 1 / e + shift, "val_loss": 1 / e + e / 30 + shift,
             "train_accuracy": 1 - 1 / e, "val_accuracy": 0.7 - shift} for e in range(1, 11)]


def _plot_calls(seed: int) -> dict[str, object]:
    """Every plot of one synthetic 10-class trial; ``seed`` makes another trial's data."""
    y, p, pred = _data(10, n=600, seed=seed)
    hidden = np.random.default_rng(seed).normal(size=(600, 16)) + y[:, None] * (1 + seed)
    return {
        "learning_curves": lambda: learning_curves_png(_history(0.1 * seed), early_stop_epoch=4 + seed,
                                                       stopped_epoch=9 if seed else None),
        "confusion_matrix": lambda: confusion_matrix_png(y, pred, FASHION),
        "roc_pr": lambda: roc_pr_png(y, p, FASHION),
        "embedding": lambda: embedding_png(hidden, y, FASHION),
        "residuals": lambda: residuals_png(p[:, 0], p[:, 1]),
    }


def test_reused_figures_leave_nothing_of_the_previous_trial() -> None:
    release_figures()
    first = {k: f() for k, f in _plot_calls(0).items()}  # builds each figure
    other = {k: f() for k, f in _plot_calls(1).items()}  # reuses them with other data, limits, legends
    again = {k: f() for k, f in _plot_calls(0).items()}
    assert release_figures() == 4  # learning curves, confusion matrix, ROC / PR, embedding
    fresh = {k: f() for k, f in _plot_calls(0).items()}  # figures built anew
    for kind in first:
        assert other[kind] != first[kind], kind
        assert again[kind] == first[kind], kind  # byte for byte: no artist, limit or text left behind
        assert fresh[kind] == first[kind], kind
        _check_png(first[kind], kind)


def test_plots_from_several_threads_match_and_restore_rc_params() -> None:
    hinting = matplotlib.rcParams["text.hinting"]
    expected = {k: f() for k, f in _plot_calls(2).items()}
    results: list[dict[str, bytes]] = []

    def work() -> None:
        results.append({k: f() for k, f in _plot_calls(2).items()})

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(r == expected for r in results)
    assert matplotlib.rcParams["text.hinting"] == hinting


@pytest.mark.parametrize("c", [2, 10])
def test_roc_pr_legend_carries_exact_scikit_learn_auc_and_ap(c: int, monkeypatch: pytest.MonkeyPatch) -> None:
    y, p, _ = _data(c, n=2000, seed=3)
    curves = one_vs_rest_curves(y, p)
    for cv in curves:  # exactly scikit-learn's values, from the very curves that are drawn
        assert cv.auc == skm.roc_auc_score(y == cv.index, p[:, cv.index])
        assert cv.ap == skm.average_precision_score(y == cv.index, p[:, cv.index])
    legends: list[list[str]] = []
    original = Figure.legend

    def spy(self, handles, labels, **kwargs):
        legends.append(list(labels))
        return original(self, handles, labels, **kwargs)

    monkeypatch.setattr(Figure, "legend", spy)
    png = roc_pr_png(y, p, NAMES[c])
    assert roc_pr_png(y, p, NAMES[c], curves=curves) == png  # precomputed curves: the same plot
    labels = legends[0]
    m = classification_metrics(y, p, prefix="test")
    assert plots.LEGEND_TITLE == "ROC AUC | AP"
    if c == 2:
        auc, ap = skm.roc_auc_score(y, p[:, 1]), skm.average_precision_score(y, p[:, 1])
        assert labels[0] == f"positive  {auc:.3f} | {ap:.3f}"
        assert labels[-1] == f"chance  0.500 | {np.mean(y == 1):.3f}"
    else:
        for name, label, k in zip(FASHION, labels, range(c)):
            auc = skm.roc_auc_score(y == k, p[:, k])
            assert label == f"{name}  {auc:.3f} | {skm.average_precision_score(y == k, p[:, k]):.3f}"
        assert labels[c] == f"macro average  {m['test_roc_auc_ovr_macro']:.3f} | {m['test_average_precision_macro']:.3f}"
        assert labels[-1] == "chance"
        assert labels == legend_entries(curves, FASHION)
    assert len(labels) == (2 if c == 2 else c + 2)  # one entry per class for both panels, macro, chance


def test_pr_steps_draw_the_same_step_function_with_fewer_vertices() -> None:
    y, p, _ = _data(10, n=3000, seed=4)
    for cv in one_vs_rest_curves(y, p):
        full = np.column_stack(cbook.pts_to_poststep(cv.recall[::-1], cv.precision[::-1]))
        thin = pr_steps(cv)
        assert len(thin) < len(full) / 2
        assert set(map(tuple, thin)) <= set(map(tuple, full))  # no new vertex
        for r in np.unique(full[:, 0]):  # at every recall, the vertical segment spans the same precisions
            f, t = full[full[:, 0] == r, 1], thin[thin[:, 0] == r, 1]
            assert (f.min(), f.max()) == (t.min(), t.max()), r
        assert (thin[0] == full[0]).all() and (thin[-1] == full[-1]).all()


def test_encode_png_round_trips_pixels() -> None:
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    png = plots.encode_png(rgb)
    assert png_dimensions(png) == (5, 7)
    with Image.open(io.BytesIO(png)) as im:
        assert im.mode == "RGB" and round(im.info["dpi"][0]) == DPI
        assert np.array_equal(np.asarray(im), rgb)
    assert np.array_equal((mpimg.imread(io.BytesIO(png), format="png") * 255).round().astype(np.uint8), rgb)
