"""The MLP: the course's worked example, activations, initialization, output bias, residuals, outputs."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import tiny
from trainer import MLPConfig, embed, logits, predict, train
from trainer.losses import per_sample_loss
from trainer.model import BatchNorm, Residual, build_mlp, output_bias_prior


def test_course_worked_example_2_2_1() -> None:
    """W1 = [[0.1, 0.2], [0.3, 0.4]] (rows: inputs, columns: hidden units, h = relu(x W1)),
    W2 = [0.5, 0.6], zero biases, sigmoid output; X = [[0, 0], [0, 1]], y = [0, 1]."""
    model = build_mlp(MLPConfig(hidden_sizes=(2,), activation="relu"), n_features=2, n_outputs=1)
    w1 = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    with torch.no_grad():
        model[0].weight.copy_(w1.T)  # PyTorch stores (out, in): the transpose of the course's (in, out)
        model[0].bias.zero_()
        model[-1].weight.copy_(torch.tensor([[0.5, 0.6]]))
        model[-1].bias.zero_()
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    a2 = predict(model, x, "binary")
    assert torch.allclose(a2, torch.tensor([0.5, 0.5963]), atol=1e-4)
    z2 = model(x)
    z2.retain_grad()
    losses = per_sample_loss("binary", z2, y)
    assert torch.allclose(losses.detach(), torch.tensor([0.693, 0.517]), atol=1e-3)
    losses.sum().backward()  # d(per-sample loss)/dz2
    assert torch.allclose(z2.grad[:, 0], torch.tensor([0.5, -0.4037]), atol=1e-4)
    assert torch.allclose(z2.grad[:, 0], a2 - y, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "fn"),
    [
        ("relu", lambda x: torch.clamp(x, min=0)),
        ("leaky_relu", lambda x: torch.where(x > 0, x, 0.2 * x)),
        ("prelu", lambda x: torch.where(x > 0, x, 0.2 * x)),  # initial slope = leaky_relu_slope
        ("elu", lambda x: torch.where(x > 0, x, torch.exp(x) - 1)),
        ("selu", lambda x: 1.0507009873554805 * torch.where(x > 0, x, 1.6732632423543772 * (torch.exp(x) - 1))),
        ("gelu", lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))),
        ("tanh", torch.tanh),
        ("sigmoid", lambda x: 1 / (1 + torch.exp(-x))),
    ],
)
def test_activations_compute_their_formula(name: str, fn) -> None:
    model = build_mlp(MLPConfig(hidden_sizes=(5,), activation=name, leaky_relu_slope=0.2), 5, 1)
    x = torch.linspace(-3, 3, 5)
    assert torch.allclose(model[1](x), fn(x), atol=1e-6)


def test_prelu_slope_is_learned() -> None:
    model = build_mlp(MLPConfig(hidden_sizes=(3,), activation="prelu"), 2, 1)
    assert any(isinstance(m, torch.nn.PReLU) and m.weight.requires_grad for m in model.modules())


@pytest.mark.parametrize(
    ("init", "std"),
    [
        ("xavier_normal", math.sqrt(2 / (400 + 300))),
        ("xavier_uniform", math.sqrt(6 / (400 + 300)) / math.sqrt(3)),  # U(-a, a) has std a / sqrt(3)
        ("kaiming_normal", math.sqrt(2) / math.sqrt(400)),
        ("kaiming_uniform", math.sqrt(2) * math.sqrt(3 / 400) / math.sqrt(3)),
        ("normal", 0.05),
    ],
)
def test_initialization_has_the_documented_spread(init: str, std: float) -> None:
    torch.manual_seed(0)
    model = build_mlp(MLPConfig(hidden_sizes=(300,), init=init, init_std=0.05), 400, 2)
    w = model[0].weight.detach()
    assert float(w.std()) == pytest.approx(std, rel=0.03)
    assert not model[0].bias.any()
    if init.endswith("uniform"):
        assert float(w.abs().max()) <= std * math.sqrt(3) + 1e-6


def test_output_bias_prior_matches_the_training_prior() -> None:
    y = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    bias = output_bias_prior("multiclass", y, 3)
    assert torch.allclose(torch.softmax(bias, 0), torch.tensor([0.6, 0.3, 0.1]), atol=1e-6)
    assert torch.allclose(torch.sigmoid(output_bias_prior("binary", torch.tensor([1, 0, 0, 0]), 1)),
                          torch.tensor([0.25]))
    assert output_bias_prior("regression", torch.tensor([1.0, 2.0, 6.0]), 1).item() == pytest.approx(3.0)


def test_output_bias_prior_is_used_by_train() -> None:
    data = tiny()
    config = MLPConfig(hidden_size=4, epochs=1, output_bias_prior=True, lr=1e-9, optimizer="sgd")
    model = train(config, data, threads=1).model
    counts = torch.bincount(data.y_train, minlength=3).float()
    assert torch.allclose(torch.softmax(model[-1].bias.detach(), 0), counts / counts.sum(), atol=1e-5)


def test_residual_connections_between_equal_widths() -> None:
    model = build_mlp(MLPConfig(hidden_sizes=(6, 6, 4), residual=True), 3, 2)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "ReLU", "Residual", "Linear", "ReLU", "Linear"]
    block = model[2]
    h = torch.randn(5, 6)
    assert torch.allclose(block(h), h + block.block(h))
    assert isinstance(block, Residual)


@pytest.mark.parametrize(("norm", "cls"), [("batchnorm", torch.nn.BatchNorm1d), ("layernorm", torch.nn.LayerNorm)])
def test_norm_sits_between_linear_and_activation(norm: str, cls: type) -> None:
    model = build_mlp(MLPConfig(hidden_sizes=(4,), norm=norm), 3, 2)
    assert isinstance(model[0], torch.nn.Linear) and isinstance(model[1], cls) and isinstance(model[2], torch.nn.ReLU)


def test_only_a_linear_layer_followed_by_batch_norm_drops_its_bias() -> None:
    bn = build_mlp(MLPConfig(hidden_sizes=(4, 3), norm="batchnorm"), 3, 2)
    assert [m.bias is None for m in bn if isinstance(m, torch.nn.Linear)] == [True, True, False]
    ln = build_mlp(MLPConfig(hidden_sizes=(4, 3), norm="layernorm"), 3, 2)
    assert all(m.bias is not None for m in ln if isinstance(m, torch.nn.Linear))
    # the bias it would have had changes nothing: batch norm subtracts the batch mean of each unit
    torch.manual_seed(0)
    h, b = torch.randn(8, 4), torch.randn(4)
    norm = BatchNorm(4)
    assert torch.allclose(norm(h + b), norm(h), atol=1e-6)


def test_batch_norm_is_pytorchs_in_training_and_evaluation() -> None:
    torch.manual_seed(0)
    ours, theirs = BatchNorm(5, momentum=0.3), torch.nn.BatchNorm1d(5, momentum=0.3)
    with torch.no_grad():
        for m in (ours, theirs):
            m.weight.copy_(torch.linspace(0.5, 2.0, 5))
            m.bias.copy_(torch.linspace(-1.0, 1.0, 5))
    for _ in range(3):
        x = torch.randn(16, 5) * 3 + 1
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(a), theirs(b)
        assert torch.equal(ya, yb)
        (ya * torch.arange(5.0)).sum().backward()
        (yb * torch.arange(5.0)).sum().backward()
        assert torch.equal(a.grad, b.grad) and torch.equal(ours.weight.grad, theirs.weight.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    ours.eval(), theirs.eval()
    x = torch.randn(4, 5)
    assert torch.equal(ours(x), theirs(x))
    with pytest.raises(ValueError, match=r"batch >= 2.*\(1, 5\)"):
        ours.train()(torch.randn(1, 5))


def test_batchnorm_survives_a_last_batch_of_one() -> None:
    result = train(MLPConfig(hidden_size=4, norm="batchnorm", batch_size=21, epochs=1), tiny(n=64), threads=1)
    assert result.history[0].train_loss > 0


def test_predict_embed_and_logits_for_later_evaluation() -> None:
    data = tiny()
    result = train(MLPConfig(hidden_sizes=(7, 5), dropout=0.5, epochs=1), data, threads=1)
    probs = result.predict(data.x_test)
    assert probs.shape == (16, 3) and torch.allclose(probs.sum(1), torch.ones(16))
    assert torch.equal(probs, predict(result.model, data.x_test))
    assert torch.equal(result.logits(data.x_test), logits(result.model, data.x_test))
    hidden = embed(result.model, data.x_test)
    assert hidden.shape == (16, 5) and (hidden >= 0).all()  # relu activations, no dropout in eval
    assert torch.allclose(result.model[-1](hidden), logits(result.model, data.x_test), atol=1e-6)
    assert result.model.training  # left as found
