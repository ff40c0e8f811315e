"""Optimizers, decoupled weight decay and learning-rate schedules by name.

Update rules (g: gradient, eta: ``lr``, alpha: ``momentum``):

- ``sgd``: w <- w - eta g
- ``momentum``: v <- alpha v - eta g; w <- w + v. PyTorch keeps b <- alpha b + g and steps
  w <- w - eta b, the same iterates while eta is constant (v = -eta b); under a changing
  schedule PyTorch rescales the accumulated velocity by the new eta.
- ``nesterov``: b <- alpha b + g; w <- w - eta (g + alpha b) (Sutskever's look-ahead, rewritten)
- ``rmsprop``: s <- rho s + (1 - rho) g^2; w <- w - eta g / (sqrt(s) + eps)
- ``adam``: bias-corrected moments with ``beta1``, ``beta2``, ``eps``
- ``adamw``: adam with decoupled weight decay: w <- w (1 - eta lambda) before the adam step

Decoupled weight decay (``weight_decay`` lambda) applies to every optimizer the same way:
w <- w (1 - eta lambda), then the optimizer's step with the (undecayed) gradient.

The L2 penalty's gradient 2 l2 w rides on PyTorch's coupled ``weight_decay`` = 2 l2 where that
is the same update (:func:`l2_fits_in_step`): g <- g + 2 l2 w inside the fused step kernel.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from trainer.config import MLPConfig
from trainer.regularizers import EarlyStopping

_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


COUPLED_L2_OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam")  # their weight_decay is g + wd w


def l2_fits_in_step(config: MLPConfig) -> bool:
    """Whether the optimizer's own (coupled) weight decay can add the L2 gradient 2 l2 w.

    PyTorch's ``weight_decay`` of sgd / momentum / nesterov / rmsprop / adam sets
    g <- g + weight_decay w at the start of the step: with weight_decay = 2 l2 that is the
    gradient of l2 sum w^2, added inside the (fused) update kernel instead of in a separate
    pass over the weights. It must see the same g and w as the loop would, so nothing may act
    between the penalty and the step: no gradient noise, no clipping, no decoupled weight decay
    (adamw's weight_decay is decoupled, so never for adamw).

    Example:
        >>> [l2_fits_in_step(MLPConfig(optimizer=name, l2=1e-4)) for name in ("adam", "adamw")]
        [True, False]
    """
    return (config.l2 > 0 and config.optimizer in COUPLED_L2_OPTIMIZERS and config.grad_noise == 0
            and config.clip_grad_norm is None and config.weight_decay == 0)


class _CachedFusedStep:
    """Adam / AdamW whose fused CPU step, after the first, calls PyTorch's kernel directly.

    ``torch.optim.Adam(fused=True).step`` spends ~50 us of Python per call rebuilding its
    per-parameter lists (``_init_group``), grouping tensors by device and dtype and checking
    options; at batch 128 that is ~5 % of a 784-256-256-10 step on 2 cores. After the first
    step creates the state, this keeps the lists (the same state tensors, so ``state_dict``,
    checkpoints and ``load_state_dict`` see no difference) and each step runs only what
    PyTorch's ``_fused_adam`` ends in: ``_foreach_add_(steps, 1)`` and ``_fused_adam_`` /
    ``_fused_adamw_`` with the group's current lr, betas, eps and weight decay. The step counts
    are counted in one op per group: each parameter's ``state["step"]`` becomes a view of one
    tensor of the group's counts (still its own 0-d float32 tensor, as PyTorch makes it: a state
    saved here loads into a plain ``torch.optim.Adam``), so ``_foreach_add_`` over 6-8 scalars
    (~20 us a group, one ``add_`` each) is one ``add_`` (~4.5 us). The iterates are
    bit-identical to PyTorch's (tests/test_optim.py). Anything else (a closure, a gradient
    missing, amsgrad, maximize, a tensor lr, a grad scaler, not fused) takes PyTorch's own step,
    and the lists are rebuilt after ``load_state_dict`` or ``add_param_group``.
    ``step`` is still wrapped by ``Optimizer``'s hook and profiler wrapper, and its hooks run once;
    :meth:`step_unhooked` is the same step without that wrapper, for the trainer's inner loop.
    """

    _cached: list[tuple[dict[str, Any], list[Any], list[Any], list[Any], list[Any], torch.Tensor]] | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._cached = None
        super().add_param_group(param_group)  # type: ignore[misc]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._cached = None
        super().load_state_dict(state_dict)  # type: ignore[misc]

    def _cache(self) -> list[tuple[dict[str, Any], list[Any], list[Any], list[Any], list[Any], torch.Tensor]] | None:
        cached = []
        for group in self.param_groups:  # type: ignore[attr-defined]
            params = list(group["params"])
            states = [self.state.get(p, {}) for p in params]  # type: ignore[attr-defined]
            if (not group["fused"] or group["amsgrad"] or group["maximize"] or group["capturable"]
                    or group["differentiable"] or torch.is_tensor(group["lr"])
                    or any(p.device.type != "cpu" or p.dtype != params[0].dtype for p in params)
                    or any("exp_avg" not in st for st in states)
                    or any(st["step"].dim() != 0 or st["step"].device != params[0].device for st in states)):
                return None
            counts = torch.stack([st["step"] for st in states])  # one tensor of the group's step counts
            for i, st in enumerate(states):
                st["step"] = counts[i]  # a view: counted by counts.add_(1), each still its own tensor
            cached.append((group, params, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states],
                           [st["step"] for st in states], counts))
        return cached

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        return self._step(closure)

    def step_unhooked(self) -> None:
        """``step()`` without ``Optimizer``'s wrapper, which runs step hooks and opens a profiler
        range (~25 us a call): for a training loop that registers no optimizer hooks."""
        with torch.no_grad():
            self._step(None)

    def _step(self, closure: Any) -> Any:
        cached = self._cached
        if cached is None or closure is not None or hasattr(self, "grad_scale") or hasattr(self, "found_inf"):
            # PyTorch's own step, without the hook wrapper it has once a plain Adam was built: ours ran them
            unwrapped = getattr(super().step, "__wrapped__", None)  # type: ignore[misc]
            loss = unwrapped(self, closure) if unwrapped is not None else super().step(closure)  # type: ignore[misc]
            self._cached = self._cache()
            return loss
        all_grads = [[p.grad for p in params] for _, params, _, _, _, _ in cached]
        if any(g is None for grads in all_grads for g in grads):  # before any group steps
            self._cached = None
            return self._step(None)
        for (group, params, exp_avgs, exp_avg_sqs, steps, counts), grads in zip(cached, all_grads):
            beta1, beta2 = group["betas"]
            counts.add_(1)  # every parameter's state["step"], a view of it
            kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
            kernel(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"], beta1=beta1,
                   beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                   grad_scale=None, found_inf=None)
        return None


class FusedAdam(_CachedFusedStep, torch.optim.Adam):
    """``torch.optim.Adam`` with the cached fused step of :class:`_CachedFusedStep`.

    Example:
        >>> w = torch.nn.Parameter(torch.ones(2)); w.grad = torch.ones(2)
        >>> opt = FusedAdam([w], lr=0.1, fused=True); opt.step(); opt.step()
        >>> w.detach()
        tensor([0.8000, 0.8000])
    """


class FusedAdamW(_CachedFusedStep, torch.optim.AdamW):
    """``torch.optim.AdamW`` with the cached fused step of :class:`_CachedFusedStep`."""


def build_optimizer(
    config: MLPConfig,
    params: Iterable[torch.nn.Parameter],
    decayed: Sequence[torch.nn.Parameter] | None = None,
    l2_in_step: Sequence[torch.nn.Parameter] | None = None,
) -> torch.optim.Optimizer:
    """Instantiate the optimizer named by ``config.optimizer``.

    Args:
        decayed: the parameters ``adamw`` decays (default: all of ``params``); other
            optimizers get their decay from :class:`DecoupledWeightDecay`.
        l2_in_step: parameters whose L2 gradient 2 l2 w the optimizer adds itself, as its
            coupled ``weight_decay`` = 2 ``config.l2`` (see :func:`l2_fits_in_step`); the other
            parameters get weight_decay 0. None: the caller adds the L2 gradient.

    Example:
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> type(build_optimizer(MLPConfig(optimizer="rmsprop"), [w])).__name__
        'RMSprop'
    """
    params = list(params)
    lr = config.lr
    # PyTorch's fused CPU kernels: one pass per tensor instead of one per operation (2x faster Adam)
    fused = {"fused": True} if all(p.dtype in _FUSED_DTYPES and p.device.type == "cpu" for p in params) else {}
    if l2_in_step is not None and not l2_fits_in_step(config):
        raise ValueError(f"optimizer={config.optimizer!r} cannot add the L2 gradient in its step with this config")
    groups: list[dict[str, Any]] | list[torch.nn.Parameter] = params
    if config.optimizer == "adamw" or l2_in_step is not None:
        inside = decayed if l2_in_step is None else l2_in_step
        ids = {id(p) for p in (params if inside is None else inside)}
        decay = config.weight_decay if l2_in_step is None else 2.0 * config.l2
        groups = [g for g in (
            {"params": [p for p in params if id(p) in ids], "weight_decay": decay},
            {"params": [p for p in params if id(p) not in ids], "weight_decay": 0.0},
        ) if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, **fused)
    if config.optimizer == "momentum":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, **fused)
    if config.optimizer == "nesterov":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=True, **fused)
    if config.optimizer == "rmsprop":  # no fused kernel
        return torch.optim.RMSprop(groups, lr=lr, alpha=config.rho, eps=config.eps)
    betas = (config.beta1, config.beta2)
    if config.optimizer == "adam":
        return (FusedAdam if fused else torch.optim.Adam)(groups, lr=lr, betas=betas, eps=config.eps, **fused)
    if config.optimizer == "adamw":
        return (FusedAdamW if fused else torch.optim.AdamW)(groups, lr=lr, betas=betas, eps=config.eps, **fused)
    raise ValueError(f"optimizer={config.optimizer!r}: must be one of sgd, momentum, nesterov, rmsprop, adam, adamw")


class DecoupledWeightDecay:
    """w <- w (1 - lr * weight_decay) on ``params``, before the optimizer's step.

    ``adamw`` does this inside its own step, so :meth:`for_config` returns None for it.

    Example:
        >>> w = torch.ones(2)
        >>> DecoupledWeightDecay([w], 0.5).apply(lr=0.1); w
        tensor([0.9500, 0.9500])
    """

    def __init__(self, params: Sequence[torch.Tensor], weight_decay: float):
        self.params = list(params)
        self.weight_decay = weight_decay

    @classmethod
    def for_config(cls, config: MLPConfig, params: Sequence[torch.Tensor]) -> DecoupledWeightDecay | None:
        if config.weight_decay == 0 or config.optimizer == "adamw":
            return None
        return cls(params, config.weight_decay)

    @torch.no_grad()
    def apply(self, lr: float) -> None:
        torch._foreach_mul_(self.params, 1.0 - lr * self.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class LRSchedule:
    """The learning rate of every epoch: warm-up, then ``config.lr_schedule``.

    ``lr(epoch)`` is the rate used *during* ``epoch`` (counting from 1). The plateau
    schedule additionally needs :meth:`observe` with each epoch's validation loss.

    Example:
        >>> s = LRSchedule(MLPConfig(lr=0.1, lr_schedule="step", lr_step_size=2, lr_gamma=0.5, epochs=6))
        >>> [round(s.lr(e), 4) for e in range(1, 7)]
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    """

    def __init__(self, config: MLPConfig):
        self.config = config
        self.reductions = 0
        self._plateau = EarlyStopping(patience=config.plateau_patience, min_delta=0.0)

    def lr(self, epoch: int) -> float:
        c = self.config
        if epoch <= c.warmup_epochs:
            return c.lr * epoch / c.warmup_epochs
        k = epoch - c.warmup_epochs  # epochs since warm-up, from 1
        if c.lr_schedule == "step":
            return c.lr * c.lr_gamma ** ((k - 1) // c.lr_step_size)
        if c.lr_schedule == "exponential":
            return c.lr * c.lr_gamma ** (k - 1)
        if c.lr_schedule == "cosine":
            span = c.epochs - c.warmup_epochs - 1
            if span <= 0:
                return c.lr
            progress = min(k - 1, span) / span
            return c.lr_min + (c.lr - c.lr_min) * (1 + math.cos(math.pi * progress)) / 2
        if c.lr_schedule == "reduce_on_plateau":
            return c.lr * c.lr_gamma**self.reductions
        return c.lr

    def observe(self, epoch: int, val_loss: float) -> None:
        """Feed ``epoch``'s validation loss (only reduce_on_plateau listens, after warm-up)."""
        if self.config.lr_schedule != "reduce_on_plateau" or epoch <= self.config.warmup_epochs:
            return
        if self._plateau.update(val_loss):
            self.reductions += 1
            self._plateau.bad_epochs = 0  # wait a full patience again before the next cut
