"""Regularizers against their formulas: penalties, dropout, noise, smoothing, clipping, early stopping."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import trainer.loop as loop
from tests.helpers import data_gradient, initial_model, tiny, tiny_regression
from trainer import Dataset, MLPConfig, train
from trainer.losses import TrainingLoss
from trainer.model import InvertedDropout, build_mlp, penalized_parameters
from trainer.regularizers import (
    EarlyStopping,
    WeightNoise,
    add_gradient_noise,
    add_penalty_gradients,
    penalty_value,
)


# ---- L1 / L2 -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("l1", "l2"), [(0.1, 0.0), (0.0, 0.1), (0.05, 0.2)], ids=["l1", "l2", "elastic"])
@pytest.mark.parametrize("penalize_bias", [False, True])
def test_penalty_gradient_is_the_gradient_of_the_penalty(l1: float, l2: float, penalize_bias: bool) -> None:
    """Added gradient == autograd of l1 sum|w| + l2 sum w^2 over the penalized parameters."""
    config = MLPConfig(hidden_sizes=(4,), l1=l1, l2=l2, penalize_bias=penalize_bias, norm="layernorm")
    model = build_mlp(config, 5, 3)
    params = penalized_parameters(model, penalize_bias)
    assert len(params) == (len(list(model.parameters())) if penalize_bias else 2)
    penalty_value(params, l1, l2).backward()
    expected = {id(p): p.grad.clone() for p in params}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    add_penalty_gradients(params, l1, l2)
    for name, p in model.named_parameters():
        want = expected.get(id(p), torch.zeros_like(p))
        assert torch.allclose(p.grad, want, atol=1e-7), name
        if not penalize_bias and not name.endswith("weight"):
            assert not p.grad.any(), f"{name} is a bias and must not be penalized by default"


def test_penalty_formula_on_numbers() -> None:
    w = torch.tensor([[-2.0, 0.0], [0.5, 3.0]], requires_grad=True)
    w.grad = torch.zeros(2, 2)
    add_penalty_gradients([w], l1=0.1, l2=0.5)
    # l1 sign(w) + 2 l2 w
    assert torch.allclose(w.grad, torch.tensor([[-2.1, 0.0], [0.6, 3.1]]))
    assert float(penalty_value([w.detach()], 0.1, 0.5)) == pytest.approx(0.1 * 5.5 + 0.5 * (4 + 0.25 + 9))


def test_l2_inside_train_is_one_step_of_g_plus_2_lambda_w() -> None:
    data = tiny(n=30)
    config = MLPConfig(hidden_sizes=(4,), optimizer="sgd", lr=0.5, l2=0.1, epochs=1, batch_size=1000, seed=2)
    model = initial_model(config, data)
    grads = data_gradient(model, data)
    expected = [
        p.detach() - 0.5 * (g + (2 * 0.1 * p.detach() if name.endswith("weight") else 0))
        for (name, p), g in zip(model.named_parameters(), grads)
    ]
    result = train(config, data, threads=1)
    for p, e in zip(result.model.parameters(), expected):
        assert torch.allclose(p, e, atol=1e-6)


def test_l1_makes_weights_sparse_and_l2_does_not() -> None:
    """20 features, 2 informative: L1 drives the other 18 weights to ~0, L2 only shrinks them."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 20, generator=g)
    y = 2 * x[:, 0] - x[:, 1] + 0.5 * torch.randn(200, generator=g)
    data = Dataset("sparse", x, y, x[:50], y[:50], x[:50], y[:50], (), task="regression")
    base = MLPConfig(hidden_layers=0, optimizer="sgd", lr=0.05, batch_size=1000, epochs=400)
    w_l1 = train(base.model_copy(update={"l1": 0.1}), data, threads=1).model[-1].weight.detach()[0]
    w_l2 = train(base.model_copy(update={"l2": 0.05}), data, threads=1).model[-1].weight.detach()[0]
    near_zero_l1 = int((w_l1[2:].abs() < 0.01).sum())
    near_zero_l2 = int((w_l2[2:].abs() < 0.01).sum())
    assert near_zero_l1 >= 15, w_l1
    assert near_zero_l2 <= 5, w_l2
    assert w_l1[0] > 1.0 and w_l2[0] > 1.0  # the informative weights survive both


# ---- decoupled weight decay and clipping inside train() -------------------------------------------
def test_weight_decay_and_clipping_inside_train() -> None:
    """One full-batch sgd step: w (1 - eta lambda) - eta g min(1, c / ||g||)."""
    data = tiny(n=30)
    config = MLPConfig(hidden_sizes=(4,), optimizer="sgd", lr=0.5, weight_decay=0.2, clip_grad_norm=0.05,
                       epochs=1, batch_size=1000, seed=4)
    model = initial_model(config, data)
    grads = data_gradient(model, data)
    norm = torch.sqrt(sum((g * g).sum() for g in grads))
    assert norm > 0.05  # clipping is active
    scale = 0.05 / norm
    expected = [
        p.detach() * (1 - 0.5 * 0.2 if name.endswith("weight") else 1) - 0.5 * g * scale
        for (name, p), g in zip(model.named_parameters(), grads)
    ]
    result = train(config, data, threads=1)
    for p, e in zip(result.model.parameters(), expected):
        assert torch.allclose(p, e, atol=1e-6)


# ---- dropout -------------------------------------------------------------------------------------
def test_dropout_keeps_the_expectation_and_is_off_in_eval() -> None:
    model = build_mlp(MLPConfig(hidden_sizes=(1000,), dropout=0.3), 3, 2)
    dropout = model[2]
    x = torch.ones(400, 1000)
    torch.manual_seed(1)
    out = dropout.train()(x)
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.7))
    assert abs(float((out == 0).float().mean()) - 0.3) < 0.01  # drop rate p
    assert abs(float(out.mean()) - 1.0) < 0.01  # E[h m / (1 - p)] = h
    assert torch.equal(dropout.eval()(x), x)


def test_dropout_mask_is_the_16_bit_threshold_of_the_layer_generator() -> None:
    """u: the raw PCG64 words cut into little-endian 16-bit integers; dropped where u < round(65536 p)."""
    dropout = InvertedDropout(0.3, np.random.Generator(np.random.PCG64(7)))
    twin = np.random.Generator(np.random.PCG64(7))
    x = torch.ones(100, 2000)  # 200,000 elements: 50,000 words

    def draw() -> np.ndarray:
        return twin.bit_generator.random_raw(50_000).astype("<u8").view("<u2").reshape(100, 2000).astype(np.int64)

    out = dropout.train()(x)
    u = draw()
    k = 19661  # round(0.3 * 65536) = round(19660.8)
    assert dropout.drop_level == k and dropout.effective_p == k / 65536
    assert (u == k).any() and (u == k - 1).any()  # the boundary is in the sample: u == k is kept
    assert torch.equal(out == 0, torch.from_numpy(u < k))
    assert torch.equal(out[out != 0], torch.full_like(out[out != 0], 65536 / (65536 - k)))
    # the next batch continues the stream
    assert torch.equal(dropout(x) == 0, torch.from_numpy(draw() < k))


@pytest.mark.parametrize("p", [0.1, 0.2, 0.3, 0.5, 0.9])
def test_dropout_scale_uses_the_quantized_keep_probability(p: float) -> None:
    """E[h m / (1 - p')] = h: the scale times the keep rate 1 - p' is 1, and the sample agrees."""
    dropout = InvertedDropout(p, np.random.Generator(np.random.PCG64(0))).train()
    assert abs(dropout.effective_p - p) <= 2**-17
    assert dropout.scale * (1 - dropout.effective_p) == pytest.approx(1.0, abs=1e-15)
    out = dropout(torch.ones(1000, 1000))
    assert float((out == 0).double().mean()) == pytest.approx(dropout.effective_p, abs=0.002)
    assert float(out.double().mean()) == pytest.approx(1.0, abs=0.005 / (1 - p))


def test_dropout_gradient_is_the_forward_mask() -> None:
    dropout = InvertedDropout(0.4, np.random.Generator(np.random.PCG64(1))).train()
    x = torch.randn(32, 50, requires_grad=True)
    out = dropout(x)
    out.sum().backward()
    mask = torch.where(out != 0, dropout.scale, 0.0).float()
    assert torch.equal(out, x.detach() * mask)
    assert torch.equal(x.grad, mask)  # d/dx sum(x m) = m


def test_dropout_masks_are_reproducible_from_the_seed_and_differ_between_layers() -> None:
    config = MLPConfig(hidden_sizes=(64, 64), dropout=0.5, seed=3)
    x = torch.ones(16, 64)

    def masks(c: MLPConfig) -> list[torch.Tensor]:
        layers = [m.train() for m in build_mlp(c, 5, 2) if isinstance(m, InvertedDropout)]
        return [layer(x) for layer in layers for _ in range(2)]  # two batches per layer

    a, b = masks(config), masks(config)
    assert len(a) == 4 and all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], a[1])  # the stream moves on between batches
    assert not torch.equal(a[0], a[2])  # each layer has its own stream
    other = masks(config.model_copy(update={"seed": 4}))
    assert not any(torch.equal(p, q) for p, q in zip(a, other))


def test_dropout_generators_leave_the_weight_init_alone() -> None:
    """The masks no longer draw from torch's generator: dropout does not shift the initial weights."""
    torch.manual_seed(0)
    plain = build_mlp(MLPConfig(hidden_sizes=(8, 8)), 5, 2)
    torch.manual_seed(0)
    dropped = build_mlp(MLPConfig(hidden_sizes=(8, 8), dropout=0.3), 5, 2)
    for p, q in zip(plain.parameters(), dropped.parameters()):
        assert torch.equal(p, q)


def test_dropout_generators_are_in_the_checkpoint() -> None:
    states: list[dict] = []
    train(MLPConfig(hidden_sizes=(8, 8), dropout=0.2, epochs=1), tiny(), threads=1, checkpoint=states.append)
    saved = states[0]["rng"]["model"]
    assert sorted(saved) == ["2.generator", "5.generator"]  # Linear, ReLU, Dropout per hidden layer
    assert all(s["bit_generator"] == "PCG64" for s in saved.values())


def test_dropout_refuses_p_that_rounds_to_one() -> None:
    with pytest.raises(ValueError, match="too close to 1"):
        InvertedDropout(1 - 2**-20)


# ---- noise -------------------------------------------------------------------------------------
def test_noise_keys_at_zero_are_bit_identical_to_no_noise_keys() -> None:
    data = tiny()
    plain = MLPConfig(hidden_size=16, epochs=3, dropout=0.2, batch_size=16)
    zero = plain.model_copy(update={"input_noise": 0.0, "weight_noise": 0.0, "grad_noise": 0.0})
    a, b = train(plain, data, threads=1), train(zero, data, threads=1)
    assert [m.train_loss for m in a.history] == [m.train_loss for m in b.history]
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    for key in ("input_noise", "weight_noise", "grad_noise"):
        noisy = train(plain.model_copy(update={key: 0.1}), data, threads=1)
        assert [m.train_loss for m in noisy.history] != [m.train_loss for m in a.history], key


def test_weight_noise_perturbs_then_restores_exactly() -> None:
    w = torch.nn.Parameter(torch.randn(200, 300))
    clean = w.detach().clone()
    noise = WeightNoise([w], sigma=0.1, generator=torch.Generator().manual_seed(0))
    noise.perturb()
    delta = w.detach() - clean
    assert abs(float(delta.std()) - 0.1) < 0.005 and abs(float(delta.mean())) < 0.005
    noise.restore()
    assert torch.equal(w.detach(), clean)


def test_gradient_noise_has_the_given_sigma() -> None:
    w = torch.nn.Parameter(torch.zeros(100_000))
    w.grad = torch.full_like(w, 2.0)
    add_gradient_noise([w], 0.1, torch.Generator().manual_seed(0))
    assert float(w.grad.mean()) == pytest.approx(2.0, abs=0.002)
    assert float(w.grad.std()) == pytest.approx(0.1, rel=0.02)


def test_input_noise_only_in_training() -> None:
    """Evaluation never sees the noise: val / test metrics of the same weights do not depend on it."""
    data = tiny()
    config = MLPConfig(hidden_size=8, epochs=1, input_noise=5.0)
    result = train(config, data, threads=1)
    again = loop.evaluate(result.model, data.x_test, data.y_test)
    assert again["loss"] == pytest.approx(result.test["test_loss"])


# ---- label smoothing -----------------------------------------------------------------------------
def test_label_smoothing_multiclass_formula() -> None:
    out = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    y = torch.tensor([0, 2])
    eps = 0.2
    logp = torch.log_softmax(out, dim=1)
    expected = ((1 - eps) * -logp[torch.arange(2), y] + eps * -logp.mean(dim=1)).mean()
    got = TrainingLoss(MLPConfig(label_smoothing=eps), "multiclass")(out, y)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_label_smoothing_binary_formula() -> None:
    z = torch.tensor([[1.5], [-0.5]])
    y = torch.tensor([1, 0])
    eps = 0.1
    t = torch.tensor([1 - eps / 2, eps / 2])
    p = torch.sigmoid(z[:, 0])
    expected = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    got = TrainingLoss(MLPConfig(label_smoothing=eps), "binary")(z, y)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


# ---- early stopping ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("curve", "patience", "min_delta", "stop_epoch", "best_epoch"),
    [
        ([1.0, 0.8, 0.7, 0.71, 0.72, 0.69, 0.75], 2, 0.0, 5, 3),
        ([1.0, 0.8, 0.7, 0.71, 0.72, 0.69, 0.75, 0.76, 0.8], 3, 0.0, 9, 6),
        # 0.69 beats 0.7 by only 0.01: not an improvement with min_delta 0.05
        ([1.0, 0.8, 0.7, 0.71, 0.72, 0.69, 0.75], 3, 0.05, 6, 3),
        ([1.0, 0.9, 0.8, 0.7], 1, 0.0, None, 4),
    ],
)
def test_early_stopping_on_a_scripted_curve(curve, patience, min_delta, stop_epoch, best_epoch) -> None:
    es = EarlyStopping(patience, min_delta)
    stopped = next((e for e, v in enumerate(curve, start=1) if es.update(v)), None)
    assert stopped == stop_epoch
    assert es.best_epoch == best_epoch


def test_early_stopping_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="patience=0: must be >= 1"):
        EarlyStopping(0)


def _scripted_val(monkeypatch: pytest.MonkeyPatch, data: Dataset, curve: list[float]) -> None:
    """Make train() see ``curve`` as its validation losses (test evaluation stays real)."""
    real = loop.evaluate
    values = iter(curve)

    def fake(model, x, y, task="multiclass", config=None):
        out = real(model, x, y, task, config)
        if x is data.x_val:
            out["loss"] = next(values)
        return out

    monkeypatch.setattr(loop, "evaluate", fake)


def test_train_stops_early_and_restores_the_best_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny()
    curve = [1.0, 0.8, 0.7, 0.71, 0.72, 0.73, 0.74, 0.75]
    config = MLPConfig(hidden_size=8, epochs=8, early_stopping_patience=3, restore_best_weights=True)
    seen: list[int] = []
    _scripted_val(monkeypatch, data, curve)
    result = train(config, data, lambda m: seen.append(m.epoch), threads=1)
    assert seen == [1, 2, 3, 4, 5, 6]  # the stopping epoch is still reported
    assert result.early_stopped_epoch == 6 and result.completed
    assert result.model_epoch == 3 and result.final_metrics.val_loss == 0.7
    # the restored weights are those after epoch 3: train 3 epochs and compare
    monkeypatch.undo()
    three = train(config.model_copy(update={"epochs": 3, "early_stopping_patience": None}), data, threads=1)
    for p, q in zip(result.model.parameters(), three.model.parameters()):
        assert torch.equal(p, q)
    assert result.test == three.test


def test_without_restore_the_last_weights_are_tested(monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny()
    _scripted_val(monkeypatch, data, [1.0, 0.9, 0.95, 0.96, 0.97])
    result = train(MLPConfig(hidden_size=8, epochs=5, early_stopping_patience=2), data, threads=1)
    assert result.early_stopped_epoch == 4 and result.model_epoch == 4 and len(result.history) == 4


def test_noise_and_regularizers_train_a_regression_model() -> None:
    config = MLPConfig(hidden_size=16, epochs=30, lr=0.01, l1=1e-4, l2=1e-4, weight_noise=0.01, grad_noise=0.01,
                       input_noise=0.01, clip_grad_norm=5.0, norm="layernorm", batch_size=16)
    result = train(config, tiny_regression(), threads=1)
    assert result.history[-1].val_mse < 0.5 * result.history[0].val_mse
    assert copy.copy(result.test).keys() == {"test_loss", "test_mse", "test_mae"}
