"""Image augmentation (trainer/augment.py): each output is a flip / shift of its input, drawn uniformly,
normalization-consistent, reproducible, and checked against the data before anything trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import curves, roundtrip
from trainer import DataConfig, Dataset, MLPConfig, StopTraining, load_dataset, train
from trainer.augment import ImageAugmenter
from trainer.data import _normalize


def _by_hand(image: np.ndarray, dy: int, dx: int, flip: bool) -> np.ndarray:
    """out(i, j) = f(i - dy, j - dx) with f the (mirrored) image, blank (0) outside."""
    f = image[:, ::-1] if flip else image
    out = np.zeros_like(f)
    h, w = f.shape
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[i, j] = f[i - dy, j - dx]
    return out


def _which(row: np.ndarray, image: np.ndarray, shift: int, flips: tuple[bool, ...]) -> list[tuple[int, int, bool]]:
    return [(dy, dx, f) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1) for f in flips
            if np.array_equal(row.reshape(image.shape), _by_hand(image, dy, dx, f))]


def test_every_output_is_one_transform_and_all_are_drawn_uniformly() -> None:
    h, w, shift, n = 4, 5, 1, 3600
    image = np.arange(1, h * w + 1, dtype=np.float32).reshape(h, w)  # all pixels distinct and non-blank
    aug = ImageAugmenter((h, w), shift, True, generator=torch.Generator().manual_seed(0))
    assert aug.transforms == 18
    out = aug(torch.from_numpy(np.tile(image.reshape(1, -1), (n, 1)))).numpy()
    counts: dict[tuple[int, int, bool], int] = {}
    for row in out:
        (t,) = _which(row, image, shift, (False, True))  # exactly one transform explains each row
        counts[t] = counts.get(t, 0) + 1
    assert len(counts) == 18
    expected = n / 18
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 40.8  # chi-square, 17 degrees of freedom: p = 0.001
    flipped = sum(c for (_, _, f), c in counts.items() if f)
    assert abs(flipped / n - 0.5) < 0.04


def test_flip_only_and_shift_only() -> None:
    image = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    x = torch.from_numpy(np.tile(image.reshape(1, -1), (200, 1)))
    flips = ImageAugmenter((3, 4), 0, True, generator=torch.Generator().manual_seed(1))(x).numpy()
    seen = {tuple(_which(r, image, 0, (False, True))) for r in flips}
    assert seen == {((0, 0, False),), ((0, 0, True),)}
    shifts = ImageAugmenter((3, 4), 1, False, generator=torch.Generator().manual_seed(1))(x).numpy()
    seen = {t for r in shifts for t in _which(r, image, 1, (False,))}
    assert len(seen) == 9 and all(not f for _, _, f in seen)


def test_normalized_rows_are_the_normalized_augmented_images() -> None:
    rng = np.random.default_rng(0)
    raw = (rng.random((64, 36)) * (rng.random((64, 36)) > 0.4)).astype(np.float32)  # 6x6 images, blank pixels
    for kind in ("standardize", "standardize_all", "minmax"):
        (z,), offset, scale = _normalize(kind, raw)
        on_z = ImageAugmenter((6, 6), 2, True, offset=torch.from_numpy(offset), scale=torch.from_numpy(scale),
                              generator=torch.Generator().manual_seed(3))(torch.from_numpy(z))
        on_raw = ImageAugmenter((6, 6), 2, True, generator=torch.Generator().manual_seed(3))(torch.from_numpy(raw))
        expected = (on_raw - torch.from_numpy(offset)) / torch.from_numpy(scale)
        torch.testing.assert_close(on_z, expected, rtol=1e-5, atol=1e-5)
        # a blank pixel shifted in is the normalized value of raw 0, not 0
        assert torch.isclose(expected, torch.from_numpy(-offset / scale).expand_as(expected)).any()


def test_bad_shift_and_half_a_normalization_are_refused() -> None:
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"shift=3: must be an integer in \[0, 2\] for 3x4 images"):
        ImageAugmenter((3, 4), 3, False, generator=g)
    with pytest.raises(ValueError, match="offset and scale: give both"):
        ImageAugmenter((3, 4), 1, False, offset=torch.zeros(12), generator=g)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataConfig(dataset="digits", max_train_samples=300, normalize="standardize_all"))


def test_datasets_know_their_image_shape(digits: Dataset) -> None:
    assert digits.image_shape == (8, 8)
    assert load_dataset(DataConfig(dataset="breast_cancer")).image_shape is None
    assert DataConfig(dataset="fashion_mnist").known_image_shape() == (28, 28)
    assert DataConfig(dataset="csv", path="x.csv", image_shape=(2, 3)).known_image_shape() == (2, 3)
    with pytest.raises(ValueError, match=r"image_shape=\[8, 8\]: only for csv / npz files; dataset 'digits' has "
                                         r"its own \(8x8 images\)"):
        DataConfig(dataset="digits", image_shape=(8, 8))


def test_an_image_shape_that_does_not_fit_the_rows_is_an_error(tmp_path) -> None:
    path = tmp_path / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((40, 12)).astype(np.float32), target=np.arange(40) % 2)
    assert load_dataset(DataConfig(dataset="npz", path=str(path), image_shape=(3, 4))).image_shape == (3, 4)
    with pytest.raises(ValueError, match=r"image_shape=\[3, 5\]: 3 x 5 = 15 pixels, but .* has 12 features"):
        load_dataset(DataConfig(dataset="npz", path=str(path), image_shape=(3, 5)))


def test_standardize_all_uses_one_mean_and_deviation() -> None:
    x = np.array([[0.0, 2.0], [4.0, 6.0]], dtype=np.float32)
    (z,), offset, scale = _normalize("standardize_all", x)
    assert np.allclose(offset, 3.0) and np.allclose(scale, np.sqrt(5.0))
    assert np.allclose(z, (x - 3.0) / np.sqrt(5.0))


def test_training_refuses_augmentation_without_images() -> None:
    data = load_dataset(DataConfig(dataset="breast_cancer"))
    with pytest.raises(ValueError, match="augment_flip=True: augmentation needs image rows; dataset 'breast_cancer'"):
        train(MLPConfig(epochs=1, augment_flip=True), data)
    with pytest.raises(ValueError, match="augment_shift=8: must be smaller than the shorter side of the 8x8"):
        train(MLPConfig(epochs=1, augment_shift=8), load_dataset(DataConfig(dataset="digits")))


@pytest.mark.parametrize("normalize", ["standardize", "minmax"])
def test_augmentation_refuses_a_per_pixel_scale(normalize: str) -> None:
    data = load_dataset(DataConfig(dataset="digits", normalize=normalize))
    for config, key in ((MLPConfig(epochs=1, augment_shift=1), "augment_shift=1"),
                        (MLPConfig(epochs=1, augment_flip=True), "augment_flip=True")):
        with pytest.raises(ValueError, match=f"{key}: moves content between pixels.*data.normalize='{normalize}'"):
            train(config, data)
    # a pixel that is nearly always blank has a scale near 0: content moved into it is huge
    scale = data.feature_scale
    assert scale is not None and scale[scale != 1].min() < 0.1 * scale.median()
    for fine in ("standardize_all", "none"):
        ok = load_dataset(DataConfig(dataset="digits", normalize=fine, max_train_samples=50))
        assert len(train(MLPConfig(epochs=1, hidden_size=8, augment_shift=1), ok).history) == 1


def test_augmented_training_is_seeded_and_regularizes(digits: Dataset) -> None:
    base = MLPConfig(epochs=4, hidden_size=32, lr=3e-3, batch_size=32, seed=2)
    config = base.model_copy(update={"augment_shift": 1})
    plain, first, again = train(base, digits), train(config, digits), train(config, digits)
    assert curves(first.history) == curves(again.history)  # same seed, same draws
    # augmented batches are harder to fit: the training accuracy curve differs and is lower
    assert curves(first.history) != curves(plain.history)
    assert first.history[-1].train_accuracy < plain.history[-1].train_accuracy
    # the validation split is not augmented: evaluating the trained model reproduces val_accuracy
    with torch.no_grad():
        acc = (first.model(digits.x_val).argmax(1) == digits.y_val).float().mean().item()
    assert acc == pytest.approx(first.history[-1].val_accuracy)


def test_a_resumed_augmented_run_is_the_uninterrupted_run(digits: Dataset) -> None:
    config = MLPConfig(epochs=4, hidden_size=16, lr=3e-3, batch_size=32, augment_shift=1, augment_flip=True, seed=4)
    straight = train(config, digits)
    states: dict[int, dict] = {}

    def crash(_) -> None:
        if states:
            raise StopTraining

    train(config, digits, crash, checkpoint=lambda s: states.__setitem__(s["epoch"], s))
    resumed = train(config, digits, resume=roundtrip(states[1]))
    assert curves(resumed.history) == curves(straight.history) and resumed.test == straight.test
    with pytest.raises(ValueError, match="other augmentation settings"):
        train(config.model_copy(update={"augment_shift": 0, "augment_flip": False}), digits,
              resume=roundtrip(states[1]))
