"""Optimizers, decoupled weight decay and schedules against hand computations."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.helpers import data_gradient, initial_model, tiny
from trainer import MLPConfig, train
from trainer.loop import _Stepper
from trainer.optim import DecoupledWeightDecay, LRSchedule, build_optimizer, l2_fits_in_step


def _run(config: MLPConfig, w0: list[float], steps: int) -> torch.Tensor:
    """``steps`` optimizer steps on f(w) = 0.5 * sum(w^2), whose gradient is g = w."""
    w = torch.nn.Parameter(torch.tensor(w0))
    opt = build_optimizer(config, [w])
    decay = DecoupledWeightDecay.for_config(config, [w])
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (w * w).sum()).backward()
        if decay is not None:
            decay.apply(config.lr)
        opt.step()
    return w.detach()


# ---- one step of each, against numbers worked out by hand ----------------------------------------
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # sgd: w - eta g = 1 - 0.1 * 1
        (MLPConfig(optimizer="sgd", lr=0.1), [0.9, -1.8]),
        # momentum: v = -eta g; w + v (same as sgd on the first step)
        (MLPConfig(optimizer="momentum", lr=0.1, momentum=0.9), [0.9, -1.8]),
        # nesterov: b = g; w - eta (g + alpha b) = 1 - 0.1 * 1.9
        (MLPConfig(optimizer="nesterov", lr=0.1, momentum=0.9), [0.81, -1.62]),
        # rmsprop: s = (1 - rho) g^2; w - eta g / sqrt(s) = 1 - 0.01 * 1 / 0.1
        (MLPConfig(optimizer="rmsprop", lr=0.01, rho=0.99, eps=1e-12), [0.9, -1.9]),
        # adam: m_hat = g, v_hat = g^2 after bias correction: w - eta sign(g)
        (MLPConfig(optimizer="adam", lr=0.1, eps=1e-12), [0.9, -1.9]),
        # adamw: w (1 - eta lambda) then adam: 1 * (1 - 0.1 * 0.5) - 0.1
        (MLPConfig(optimizer="adamw", lr=0.1, weight_decay=0.5, eps=1e-12), [0.85, -2 * 0.95 + 0.1]),
    ],
    ids=lambda v: v.optimizer if isinstance(v, MLPConfig) else "",
)
def test_first_step_matches_hand_computation(config: MLPConfig, expected: list[float]) -> None:
    assert torch.allclose(_run(config, [1.0, -2.0], 1), torch.tensor(expected), atol=1e-6)


def test_momentum_two_steps_follow_the_velocity_rule() -> None:
    """v <- alpha v - eta g; w <- w + v: w1 = 0.9, v1 = -0.1; g = 0.9: v2 = -0.09 - 0.09, w2 = 0.72."""
    assert _run(MLPConfig(optimizer="momentum", lr=0.1, momentum=0.9), [1.0], 2).item() == pytest.approx(0.72)


def test_nesterov_two_steps() -> None:
    """b1 = 1, w1 = 0.81; g = 0.81, b2 = 0.9 + 0.81 = 1.71; w2 = 0.81 - 0.1 (0.81 + 0.9 * 1.71) = 0.5751."""
    assert _run(MLPConfig(optimizer="nesterov", lr=0.1, momentum=0.9), [1.0], 2).item() == pytest.approx(0.5751)


def test_adam_two_steps_are_bias_corrected() -> None:
    b1, b2, eta, eps = 0.8, 0.9, 0.1, 1e-8
    w, m, v = 1.0, 0.0, 0.0
    for t in (1, 2):
        g = w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w -= eta * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
    got = _run(MLPConfig(optimizer="adam", lr=eta, beta1=b1, beta2=b2, eps=eps), [1.0], 2).item()
    assert got == pytest.approx(w, rel=1e-6)


def test_rmsprop_two_steps() -> None:
    rho, eta, eps = 0.9, 0.01, 1e-8
    w, s = 1.0, 0.0
    for _ in range(2):
        s = rho * s + (1 - rho) * w * w
        w -= eta * w / (math.sqrt(s) + eps)
    got = _run(MLPConfig(optimizer="rmsprop", lr=eta, rho=rho, eps=eps), [1.0], 2).item()
    assert got == pytest.approx(w, rel=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_decoupled_weight_decay_shrinks_before_the_step(optimizer: str) -> None:
    """With decay lambda the first step is w (1 - eta lambda) followed by the plain step on g = w."""
    plain = _run(MLPConfig(optimizer=optimizer, lr=0.1), [1.0, -2.0], 1)
    decayed = _run(MLPConfig(optimizer=optimizer, lr=0.1, weight_decay=0.5), [1.0, -2.0], 1)
    w0 = torch.tensor([1.0, -2.0])
    assert torch.allclose(decayed, w0 * (1 - 0.05) + (plain - w0), atol=1e-6)


def test_adam_with_decoupled_decay_equals_adamw() -> None:
    adam = _run(MLPConfig(optimizer="adam", lr=0.05, weight_decay=0.3), [1.0, -2.0, 0.5], 5)
    adamw = _run(MLPConfig(optimizer="adamw", lr=0.05, weight_decay=0.3), [1.0, -2.0, 0.5], 5)
    assert torch.allclose(adam, adamw, atol=1e-6)


# ---- batch modes of sgd inside train() -----------------------------------------------------------
# ---- the L2 gradient inside the optimizer's step ----------------------------------------------------
def test_l2_in_the_step_adds_2_l2_w_to_the_gradient_of_the_penalized_parameters_only() -> None:
    """f = 0.5 (w^2 + b^2), g = (w, b); l2 = 0.25 on w only: g_w = w + 2 0.25 w = 1.5 w.
    sgd, eta = 0.1: w = 1 - 0.15 = 0.85, b = 1 - 0.1 = 0.9; momentum 0.9, second step:
    v2 = 0.9 (-0.15) - 0.1 (1.5 0.85) = -0.2625, w2 = 0.5875; b: v2 = -0.09 - 0.09, b2 = 0.72."""
    for name, steps, expected_w, expected_b in (("sgd", 1, 0.85, 0.9), ("momentum", 2, 0.5875, 0.72)):
        w, b = torch.nn.Parameter(torch.tensor([1.0])), torch.nn.Parameter(torch.tensor([1.0]))
        opt = build_optimizer(MLPConfig(optimizer=name, lr=0.1, momentum=0.9, l2=0.25), [w, b], l2_in_step=[w])
        for _ in range(steps):
            opt.zero_grad()
            (0.5 * (w * w + b * b).sum()).backward()
            opt.step()
        assert w.item() == pytest.approx(expected_w) and b.item() == pytest.approx(expected_b), name


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "rmsprop", "adam"])
@pytest.mark.parametrize("penalize_bias", [False, True])
def test_l2_in_the_step_trains_as_the_loop_penalty_does(optimizer: str, penalize_bias: bool) -> None:
    """The same run with the L2 gradient added by the loop (a clipping threshold that never bites
    keeps it there) ends at the same weights. (No batchnorm: the gradient of a Linear bias before
    it is rounding noise, which adam and rmsprop normalize into lr-sized steps.)"""
    data = tiny(n=48)
    config = MLPConfig(hidden_sizes=(6,), optimizer=optimizer, lr=0.01, l1=0.001, l2=0.05, epochs=3, batch_size=16,
                       penalize_bias=penalize_bias, seed=1)
    in_step, in_loop = config, config.model_copy(update={"clip_grad_norm": 1e9})
    assert l2_fits_in_step(in_step) and not l2_fits_in_step(in_loop)
    a, b = train(in_step, data, threads=1), train(in_loop, data, threads=1)
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert not torch.equal(a.model[0].weight, train(config.model_copy(update={"l2": 0.0}), data, threads=1).model[0].weight)


@pytest.mark.parametrize(
    "update",
    [{"grad_noise": 0.1}, {"clip_grad_norm": 1.0}, {"weight_decay": 0.01}, {"optimizer": "adamw"}, {"l2": 0.0}],
    ids=["grad_noise", "clipping", "decoupled_decay", "adamw", "no_l2"],
)
def test_l2_stays_in_the_loop_when_something_acts_between_penalty_and_step(update: dict) -> None:
    config = MLPConfig(optimizer="adam", l2=0.1).model_copy(update=update)
    assert not l2_fits_in_step(config)
    with pytest.raises(ValueError, match="cannot add the L2 gradient in its step"):
        build_optimizer(config, [torch.nn.Parameter(torch.ones(2))], l2_in_step=[])


def test_optimizer_groups_carry_2_l2_on_the_weights() -> None:
    config = MLPConfig(hidden_sizes=(4,), optimizer="adam", l2=0.05)
    model = initial_model(config, tiny())
    stepper = _Stepper(config, model, tiny())
    groups = stepper.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert [p.dim() for p in groups[0]["params"]] == [2, 2] and [p.dim() for p in groups[1]["params"]] == [1, 1]


def _sgd(batch_size: int, **extra) -> MLPConfig:
    return MLPConfig(hidden_layers=0, optimizer="sgd", lr=0.5, epochs=1, batch_size=batch_size, seed=3, **extra)


def test_full_batch_epoch_is_one_gradient_step() -> None:
    data = tiny(n=40)
    config = _sgd(batch_size=1000)
    model = initial_model(config, data)
    expected = [p.detach() - 0.5 * g for p, g in zip(model.parameters(), data_gradient(model, data))]
    result = train(config, data, threads=1)
    for p, e in zip(result.model.parameters(), expected):
        assert torch.allclose(p, e, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 7])
def test_mini_batch_epoch_steps_through_the_seeded_order(batch_size: int) -> None:
    data = tiny(n=20)
    config = _sgd(batch_size=batch_size)
    model = initial_model(config, data)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(config.seed))
    steps = 0
    for start in range(0, 20, batch_size):
        idx = perm[start : start + batch_size]
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
        steps += 1
    assert steps == math.ceil(20 / batch_size)
    result = train(config, data, threads=1)
    for p, e in zip(result.model.parameters(), model.parameters()):
        assert torch.allclose(p, e, atol=1e-5)


# ---- learning-rate schedules ----------------------------------------------------------------------
def _lrs(schedule: LRSchedule, epochs: int) -> list[float]:
    return [round(schedule.lr(e), 6) for e in range(1, epochs + 1)]


def test_step_and_exponential_schedules() -> None:
    step = LRSchedule(MLPConfig(lr=0.1, lr_schedule="step", lr_step_size=2, lr_gamma=0.5, epochs=5))
    assert _lrs(step, 5) == [0.1, 0.1, 0.05, 0.05, 0.025]
    exp = LRSchedule(MLPConfig(lr=0.1, lr_schedule="exponential", lr_gamma=0.5, epochs=3))
    assert _lrs(exp, 3) == [0.1, 0.05, 0.025]
    assert _lrs(LRSchedule(MLPConfig(lr=0.3, epochs=3)), 3) == [0.3, 0.3, 0.3]


def test_cosine_runs_from_lr_to_lr_min() -> None:
    cos = LRSchedule(MLPConfig(lr=0.1, lr_min=0.01, lr_schedule="cosine", epochs=5))
    lrs = _lrs(cos, 5)
    assert lrs[0] == 0.1 and lrs[2] == pytest.approx(0.055) and lrs[4] == 0.01
    assert lrs[1] == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi / 4)) / 2, abs=1e-6)


def test_warmup_is_linear_then_hands_over_to_the_schedule() -> None:
    cos = LRSchedule(MLPConfig(lr=0.1, lr_min=0.0, lr_schedule="cosine", warmup_epochs=2, epochs=7))
    assert _lrs(cos, 7)[:3] == [0.05, 0.1, 0.1]
    assert cos.lr(7) == pytest.approx(0.0, abs=1e-12)
    step = LRSchedule(MLPConfig(lr=0.2, lr_schedule="step", lr_step_size=1, lr_gamma=0.5, warmup_epochs=4, epochs=6))
    assert _lrs(step, 6) == [0.05, 0.1, 0.15, 0.2, 0.2, 0.1]


def test_reduce_on_plateau_cuts_after_patience_epochs_without_improvement() -> None:
    s = LRSchedule(MLPConfig(lr=0.1, lr_schedule="reduce_on_plateau", plateau_patience=2, lr_gamma=0.5))
    lrs = []
    for epoch, val_loss in enumerate([1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.5, 0.6], start=1):
        lrs.append(round(s.lr(epoch), 6))
        s.observe(epoch, val_loss)
    # epochs 3, 4 do not improve -> cut before 5; 5, 6 do not -> cut before 7
    assert lrs == [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025]


def test_train_uses_the_schedule_and_reports_it() -> None:
    config = MLPConfig(hidden_size=8, lr=0.1, lr_schedule="exponential", lr_gamma=0.5, warmup_epochs=1,
                       epochs=4, optimizer="sgd")
    result = train(config, tiny(), threads=1)
    assert [m.lr for m in result.history] == pytest.approx([0.1, 0.1, 0.05, 0.025])


def test_batch_size_grows_and_is_capped() -> None:
    config = MLPConfig(batch_size=16, batch_size_growth=2, batch_growth_every=2, max_batch_size=50, epochs=5)
    assert [config.batch_size_at(e) for e in range(1, 6)] == [16, 16, 32, 32, 50]
    result = train(config.model_copy(update={"hidden_size": 8}), tiny(), threads=1)
    assert [m.batch_size for m in result.history] == [16, 16, 32, 32, 50]


@pytest.mark.parametrize(
    ("update", "fragment"),
    [
        ({"lr_schedule": "cosine", "lr": 0.01, "lr_min": 0.1}, "lr_min=0.1: must be <= lr"),
        ({"warmup_epochs": 5, "epochs": 5}, "warmup_epochs=5: must be < epochs"),
        ({"batch_size": 64, "max_batch_size": 32}, "max_batch_size=32: must be >= batch_size"),
        ({"norm": "batchnorm", "batch_size": 1}, "batch_size=1: norm 'batchnorm'"),
    ],
)
def test_inconsistent_schedules_are_refused(update: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        MLPConfig(**update)


# ---- the cached fused Adam step is PyTorch's step, bit for bit ------------------------------------
def _pair(optimizer: str, **kw) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer,
                                          list[torch.nn.Parameter], torch.optim.Optimizer]:
    from trainer.optim import FusedAdam, FusedAdamW

    torch.manual_seed(0)
    shapes = [(5, 3), (5,), (2, 5), (2,)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]

    def groups(ps: list[torch.nn.Parameter]) -> list[dict]:
        return [{"params": ps[::2], "weight_decay": 0.03}, {"params": ps[1::2], "weight_decay": 0.0}]

    lean, plain = (FusedAdam, torch.optim.Adam) if optimizer == "adam" else (FusedAdamW, torch.optim.AdamW)
    return (ours, lean(groups(ours), lr=0.01, fused=True, **kw),
            theirs, plain(groups(theirs), lr=0.01, fused=True, **kw))


def _steps(params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, grads: list[list[torch.Tensor]],
           lrs: list[float]) -> None:
    for gs, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        for p, g in zip(params, gs):
            p.grad = None if g is None else g.clone()
        opt.step()


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_the_cached_fused_step_is_pytorchs_bit_for_bit(optimizer: str) -> None:
    ours, lean, theirs, plain = _pair(optimizer, betas=(0.8, 0.95), eps=1e-6)
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=gen) for p in ours] for _ in range(12)]
    grads[5][1] = None  # a parameter without a gradient this step: PyTorch's own path, then cached again
    lrs = [0.01, 0.01, 0.02, 0.005] * 3  # a schedule changes the group's lr between steps
    _steps(ours, lean, grads[:6], lrs[:6])
    _steps(theirs, plain, grads[:6], lrs[:6])
    assert lean._cached is not None, "the fast path is taken"
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)

    # a checkpoint of ours loads into PyTorch's optimizer and back, and both go on identically
    restored_params = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    _, fresh, _, _ = _pair(optimizer, betas=(0.8, 0.95), eps=1e-6)
    fresh = type(fresh)([{"params": restored_params[::2], "weight_decay": 0.03},
                         {"params": restored_params[1::2], "weight_decay": 0.0}], lr=0.01, fused=True,
                        betas=(0.8, 0.95), eps=1e-6)
    fresh.load_state_dict(copy.deepcopy(lean.state_dict()))  # as a saved checkpoint: not the live tensors
    assert fresh._cached is None
    # the step counts are views of one tensor per group here; PyTorch's own Adam counts each once
    in_pytorch = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    vanilla = type(plain)([{"params": in_pytorch[::2], "weight_decay": 0.03},
                           {"params": in_pytorch[1::2], "weight_decay": 0.0}], lr=0.01, fused=True,
                          betas=(0.8, 0.95), eps=1e-6)
    vanilla.load_state_dict(copy.deepcopy(lean.state_dict()))
    _steps(ours, lean, grads[6:], lrs[6:])
    _steps(theirs, plain, grads[6:], lrs[6:])
    _steps(restored_params, fresh, grads[6:], lrs[6:])
    _steps(in_pytorch, vanilla, grads[6:], lrs[6:])
    for a, b, c, d in zip(ours, theirs, restored_params, in_pytorch):
        assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)
    assert [vanilla.state[p]["step"] for p in in_pytorch] == [12, 11, 12, 12]
    for i, (p, q) in enumerate(zip(ours, theirs)):
        assert torch.equal(lean.state[p]["exp_avg_sq"], plain.state[q]["exp_avg_sq"])
        assert lean.state[p]["step"] == plain.state[q]["step"] == (11 if i == 1 else 12)  # 1 skipped a step


def test_amsgrad_and_closures_take_pytorchs_own_step() -> None:
    ours, lean, theirs, plain = _pair("adam", amsgrad=True)
    grads = [[torch.full(p.shape, 0.5) for p in ours] for _ in range(3)]
    _steps(ours, lean, grads, [0.01] * 3)
    _steps(theirs, plain, grads, [0.01] * 3)
    assert lean._cached is None
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    loss = lean.step(lambda: torch.tensor(1.5))
    assert loss == 1.5


def test_build_optimizer_uses_the_cached_step_for_adam_on_cpu() -> None:
    from trainer.optim import FusedAdam, FusedAdamW

    w = torch.nn.Parameter(torch.ones(2))
    assert type(build_optimizer(MLPConfig(optimizer="adam"), [w])) is FusedAdam
    assert type(build_optimizer(MLPConfig(optimizer="adamw", weight_decay=0.01), [w])) is FusedAdamW


def test_step_hooks_run_once_and_the_unhooked_step_is_the_same_step() -> None:
    torch.optim.Adam([torch.nn.Parameter(torch.ones(1))], fused=True)  # PyTorch wraps Adam.step for its hooks
    ours, lean, theirs, plain = _pair("adam")
    calls: list[int] = []
    lean.register_step_pre_hook(lambda *_: calls.append(1))
    lean.register_step_post_hook(lambda *_: calls.append(2))
    grads = [[torch.full(p.shape, float(i + 1)) for p in ours] for i in range(4)]
    _steps(ours, lean, grads[:2], [0.01, 0.01])  # PyTorch's step, then the cached one
    assert calls == [1, 2, 1, 2]
    for p, g in zip(ours, grads[2]):
        p.grad = g.clone()
    lean.step_unhooked()
    assert calls == [1, 2, 1, 2], "no hooks"
    _steps(theirs, plain, grads[:3], [0.01] * 3)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
