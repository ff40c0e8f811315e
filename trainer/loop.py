"""The training loop: a plain function over in-memory tensors.

``train`` knows nothing of Ray or MLflow. It calls ``report(metrics)`` after
every epoch; a caller that wants to stop the run early (a scheduler, a pruner)
raises :class:`StopTraining` from ``report`` and still gets the test metrics of
the model as it stood. ``train`` is a thin wrapper: the loop itself is the generator
:func:`train_epochs`, which yields each epoch's metrics and can be driven one epoch at a time
(several runs side by side, as cross-validation's folds in :mod:`trainer.crossval`). Early
stopping within a trial (``early_stopping_patience``)
is independent of that: it ends training by itself and records the epoch.

Checkpoints: with ``checkpoint=`` the loop hands out, every ``checkpoint_every`` epochs, the
whole training state (:func:`train_state`): weights, optimizer moments, schedule and
early-stopping counters, the best weights kept so far, every random generator and the
curves. ``train(..., resume=state)`` continues from it exactly: the resumed epochs are
bit-identical to those of an uninterrupted run.

One optimization step on a batch, in order:

0. image inputs mirrored and translated at random (augment_flip, augment_shift; :mod:`trainer.augment`)
1. inputs + N(0, input_noise^2); weights + N(0, weight_noise^2) (removed again after backward)
2. forward, training loss (label smoothing and class weights included), backward
3. gradients + l1 sign(w) + 2 l2 w; + N(0, grad_noise^2); clipped to a global norm of clip_grad_norm
4. decoupled weight decay w <- w (1 - lr wd); the optimizer's step

Where nothing acts between them (no gradient noise, clipping or decoupled decay; not adamw), the
2 l2 w of step 3 is added by the optimizer at the start of step 4 instead (its coupled
``weight_decay`` = 2 l2, inside the fused kernel): the same update, one pass over the weights less.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Optional, TypeVar

import numpy as np

import torch
from torch import nn

from trainer.augment import AUGMENT_SEED_OFFSET, ImageAugmenter
from trainer.config import MLPConfig, Task
from trainer.data import Dataset, default_threads
from trainer.losses import TrainingLoss, class_weights, per_sample_loss
from trainer.model import build_mlp, output_bias_prior, penalized_parameters, weight_matrices
from trainer.optim import DecoupledWeightDecay, LRSchedule, build_optimizer, l2_fits_in_step, set_lr
from trainer.predict import EVAL_CHUNK, embed, logits, predict
from trainer.regularizers import (
    BestWeights,
    EarlyStopping,
    WeightNoise,
    add_gradient_noise,
    add_penalty_gradients,
)

logger = logging.getLogger(__name__)

CLASSIFICATION_EPOCH_METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")
REGRESSION_EPOCH_METRICS = ("val_loss", "val_mse", "val_mae", "train_loss", "train_mse")
EPOCH_METRICS: dict[str, tuple[str, ...]] = {
    "multiclass": CLASSIFICATION_EPOCH_METRICS,
    "binary": CLASSIFICATION_EPOCH_METRICS,
    "regression": REGRESSION_EPOCH_METRICS,
}


def epoch_metric_names(task: Task | None = None) -> tuple[str, ...]:
    """Metrics reported every epoch that a search may optimize; all tasks' when ``task`` is None.

    Example:
        >>> epoch_metric_names("regression")
        ('val_loss', 'val_mse', 'val_mae', 'train_loss', 'train_mse')
    """
    if task is not None:
        return EPOCH_METRICS[task]
    return tuple(dict.fromkeys(n for names in EPOCH_METRICS.values() for n in names))


EARLY_STOPPED = "early_stopped"  # in the report of the epoch where within-trial early stopping ended training


class StopTraining(Exception):
    """Raised by a ``report`` callback to end training after the current epoch."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def flush_denormals() -> bool:
    """Treat subnormal floats (float32 below 2^-126 ~ 1.2e-38) as zero on the calling thread.

    x86's FTZ/DAZ bits (``torch.set_flush_denormal``). Arithmetic on subnormal values runs many
    times slower on the CPU, and training makes them: a weight that only an L2 penalty pulls
    (a dead ReLU unit's), or an Adam moment decaying from a zero gradient, shrinks geometrically
    through the subnormal range. In the Fashion-MNIST study's l2 variant (784-1024-1024-10,
    AdamW), 5 % of the second layer's weights were subnormal by epoch 24 and an epoch took 16.5 s
    instead of 3.2 s; flushed, a step of that state took 8.7 ms instead of 41.7 ms (2 threads).
    Values that small change no float32 result that matters: the sums they join are ~1e31 times larger.

    The setting belongs to the thread, stays set, and is inherited by the threads it starts
    afterwards, the OpenMP workers of its first parallel region among them; workers started
    before it keep their own. :func:`train` calls it first, and a sweep's trial thread calls it
    before it loads any data. Returns False where the CPU has no such mode.

    Example:
        >>> flush_denormals() and float(torch.full((1,), 1e-39) * 1.0) == 0.0
        True
    """
    return torch.set_flush_denormal(True)


@dataclass(frozen=True, kw_only=True)
class EpochMetrics:
    """What one epoch measured. ``epoch`` counts from 1.

    Accuracy fields are set for classification, ``*_mse`` / ``val_mae`` for regression;
    :meth:`as_dict` leaves out the ones that do not apply.
    """

    epoch: int
    train_loss: float
    train_accuracy: float | None = None
    val_loss: float
    val_accuracy: float | None = None
    lr: float
    epoch_seconds: float
    batch_size: int | None = None
    train_mse: float | None = None
    val_mse: float | None = None
    val_mae: float | None = None
    extra: dict[str, float] = field(default_factory=dict)  # from train(epoch_metrics=...), e.g. val_f1_macro

    def as_dict(self) -> dict[str, float]:
        """The metrics that apply, as floats.

        Example:
            >>> sorted(EpochMetrics(epoch=1, train_loss=0.5, val_loss=0.6, lr=0.1, epoch_seconds=1.0).as_dict())
            ['epoch', 'epoch_seconds', 'lr', 'train_loss', 'val_loss']
        """
        out = {f.name: float(v) for f in fields(self)
               if f.name != "extra" and (v := getattr(self, f.name)) is not None}
        out.update(self.extra)
        return out


@dataclass
class TrainResult:
    """The trained model, its learning curves and its test metrics."""

    model: nn.Sequential
    task: Task = "multiclass"
    history: list[EpochMetrics] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    stopped_epoch: int | None = None  # set when report() raised StopTraining
    early_stopped_epoch: int | None = None  # set when early stopping (patience on val_loss) ended training
    model_epoch: int = 0  # the epoch whose weights the model holds (the best one when restored)

    @property
    def completed(self) -> bool:
        return self.stopped_epoch is None

    @property
    def final_metrics(self) -> EpochMetrics:
        """The epoch metrics of the weights the model holds (and was tested with)."""
        return self.history[self.model_epoch - 1]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return logits(self.model, x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (multiclass), P(y=1) (binary) or predictions (regression)."""
        return predict(self.model, x, self.task)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Last-hidden-layer activations, in eval mode."""
        return embed(self.model, x)


Report = Callable[[EpochMetrics], None]
TrainState = dict[str, Any]  # what train_state() returns; torch.save / torch.load(weights_only=True) keep it
Checkpoint = Callable[[TrainState], None]
FINISHED = "finished"  # in a state of train_epochs(checkpoint_finished=True): patience had run out
STATE_VERSION = 2  # 2: dropout masks from the layers' own generators (rng["model"]), not torch's


def _generators(model: nn.Module) -> dict[str, torch.Generator | np.random.Generator]:
    """Random generators the model's layers own (e.g. a dropout layer's), by module path."""
    found: dict[str, torch.Generator | np.random.Generator] = {}
    for path, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, (torch.Generator, np.random.Generator)):
                found[f"{path}.{attr}"] = value
    return found


def _generator_state(g: torch.Generator | np.random.Generator) -> Any:
    return g.get_state() if isinstance(g, torch.Generator) else copy.deepcopy(g.bit_generator.state)


def _set_generator_state(g: torch.Generator | np.random.Generator, state: Any) -> None:
    if isinstance(g, torch.Generator):
        g.set_state(state)
    else:
        g.bit_generator.state = state


@dataclass
class _Loop:
    """Everything that changes while training; one object so it can be saved and restored whole."""

    model: nn.Sequential
    stepper: _Stepper
    schedule: LRSchedule
    stopper: EarlyStopping | None
    best: BestWeights | None
    order: torch.Generator
    result: TrainResult

    def state(self, epoch: int) -> TrainState:
        """A deep copy of the state after ``epoch``, safe to keep while training goes on."""
        sched = self.schedule
        return copy.deepcopy({
            "version": STATE_VERSION,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.stepper.optimizer.state_dict(),
            "schedule": {"reductions": sched.reductions, "plateau": vars(sched._plateau)},
            "stopper": vars(self.stopper) if self.stopper is not None else None,
            "best": vars(self.best) if self.best is not None else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
                "order": self.order.get_state(),
                "noise": self.stepper.noise.get_state(),
                **({"augment": self.stepper.augment.generator.get_state()} if self.stepper.augment else {}),
                "model": {k: _generator_state(g) for k, g in _generators(self.model).items()},
            },
            "history": [asdict(m) for m in self.result.history],
            "model_epoch": self.result.model_epoch,
        })

    def restore(self, state: TrainState) -> int:
        """Load a :meth:`state`; returns the epoch it was taken after."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"checkpoint version {state.get('version')!r}: this trainer reads version {STATE_VERSION}")
        self.model.load_state_dict(state["model"])
        self.stepper.optimizer.load_state_dict(state["optimizer"])
        self.schedule.reductions = state["schedule"]["reductions"]
        vars(self.schedule._plateau).update(state["schedule"]["plateau"])
        for obj, saved in ((self.stopper, state["stopper"]), (self.best, state["best"])):
            if (obj is None) != (saved is None):
                raise ValueError("the checkpoint was written with other early-stopping settings than this config")
            if obj is not None:
                vars(obj).update(copy.deepcopy(saved))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.order.set_state(rng["order"])
        self.stepper.noise.set_state(rng["noise"])
        if (self.stepper.augment is None) != ("augment" not in rng):
            raise ValueError("the checkpoint was written with other augmentation settings than this config")
        if self.stepper.augment is not None:
            self.stepper.augment.generator.set_state(rng["augment"])
        generators = _generators(self.model)
        if set(generators) != set(rng["model"]):
            raise ValueError(f"the checkpoint's layer generators {sorted(rng['model'])} are not the model's "
                             f"{sorted(generators)}")
        for key, g in generators.items():
            _set_generator_state(g, rng["model"][key])
        self.result.history = [EpochMetrics(**m) for m in state["history"]]
        self.result.model_epoch = int(state["model_epoch"])
        return int(state["epoch"])


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: Task = "multiclass", config: MLPConfig | None = None
) -> dict[str, float]:
    """Metrics of ``model`` on (x, y) in eval mode.

    Classification: mean (unweighted, unsmoothed) cross-entropy ``loss`` and ``accuracy``.
    Regression: ``loss`` (the config's loss), ``mse`` and ``mae``.
    """
    was_training = model.training
    model.eval()
    loss_name = config.loss if config is not None else "auto"
    delta = config.huber_delta if config is not None else 1.0
    total = torch.zeros((), dtype=torch.float64)
    hits = torch.zeros((), dtype=torch.float64)
    sq = torch.zeros((), dtype=torch.float64)
    for start in range(0, len(x), EVAL_CHUNK):
        out = model(x[start : start + EVAL_CHUNK])
        target = y[start : start + EVAL_CHUNK]
        total += per_sample_loss(task, out, target, loss=loss_name, huber_delta=delta).sum()
        if task == "multiclass":
            hits += (out.argmax(dim=1) == target).sum()
        elif task == "binary":
            hits += ((out[:, 0] > 0).long() == target).sum()
        else:
            err = out[:, 0] - target
            sq += (err * err).sum()
            hits += err.abs().sum()
    model.train(was_training)
    n = max(len(x), 1)
    if task == "regression":
        return {"loss": float(total) / n, "mse": float(sq) / n, "mae": float(hits) / n}
    return {"loss": float(total) / n, "accuracy": float(hits) / n}


def batch_bounds(n: int, batch_size: int, min_last: int = 1) -> list[tuple[int, int]]:
    """(start, end) of each mini-batch; a last batch smaller than ``min_last`` joins the one before.

    Example:
        >>> batch_bounds(7, 3, min_last=2)
        [(0, 3), (3, 7)]
    """
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_last:
        bounds[-2] = (bounds[-2][0], n)
        bounds.pop()
    return bounds


class _Stepper:
    """One optimization step on a batch (see the module docstring for the order)."""

    def __init__(self, config: MLPConfig, model: nn.Sequential, data: Dataset):
        self.config = config
        self.model = model
        self.task = data.task
        self.params = [p for p in model.parameters()]
        self.penalized = penalized_parameters(model, config.penalize_bias)
        # the L2 gradient 2 l2 w inside the optimizer's step where that is the same update (one pass less)
        self.l2_in_step = l2_fits_in_step(config)
        self.optimizer = build_optimizer(config, self.params, decayed=self.penalized,
                                         l2_in_step=self.penalized if self.l2_in_step else None)
        # the trainer registers no optimizer hooks: the cached fused step skips their wrapper
        self.optimizer_step = getattr(self.optimizer, "step_unhooked", self.optimizer.step)
        self.decay = DecoupledWeightDecay.for_config(config, self.penalized)
        weights = class_weights(config, data.y_train, data.n_classes) if data.task != "regression" else None
        if weights is not None:
            weights = weights.to(self.params[0].device)
        self.loss_fn = TrainingLoss(config, data.task, weights)
        self.noise = torch.Generator().manual_seed(config.seed + 1_000_003)  # independent of masks and order
        self.weight_noise = (
            WeightNoise(weight_matrices(model), config.weight_noise, self.noise) if config.weight_noise > 0 else None
        )
        self.augment = None
        if config.augment_shift or config.augment_flip:
            problems = config.image_problems(data.image_shape, data.name, data.normalization)
            if problems or data.image_shape is None:
                raise ValueError("; ".join(problems))
            self.augment = ImageAugmenter(
                data.image_shape, config.augment_shift, config.augment_flip,
                offset=data.feature_offset, scale=data.feature_scale,
                generator=torch.Generator().manual_seed(config.seed + AUGMENT_SEED_OFFSET),
            ).to(self.params[0].device)

    def step(self, xb: torch.Tensor, yb: torch.Tensor, lr: float) -> torch.Tensor:
        """Train on one batch; returns the model output (detached) and leaves the loss in ``self.loss``."""
        c = self.config
        if self.augment is not None:
            xb = self.augment(xb)
        if c.input_noise > 0:
            xb = xb + c.input_noise * torch.randn(xb.shape, generator=self.noise)
        if self.weight_noise is not None:
            self.weight_noise.perturb()
        out = self.model(xb)
        loss = self.loss_fn(out, yb)
        for p in self.params:  # optimizer.zero_grad(set_to_none=True), without its ~18 us of wrapping
            p.grad = None
        loss.backward()
        if self.weight_noise is not None:
            self.weight_noise.restore()
        l2 = 0.0 if self.l2_in_step else c.l2
        if c.l1 > 0 or l2 > 0:
            add_penalty_gradients(self.penalized, c.l1, l2)
        if c.grad_noise > 0:
            add_gradient_noise(self.params, c.grad_noise, self.noise)
        if c.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.params, c.clip_grad_norm, foreach=True)
        if self.decay is not None:
            self.decay.apply(lr)
        self.optimizer_step()
        self.loss = loss.detach()
        return out.detach()


class _Predictions:
    """The epoch's training predictions, collected from each batch's output with few ops.

    Multiclass: the predicted class, argmax over the logits. The batches' logits are kept and
    reduced by one argmax per ``PENDING`` elements, not one per batch: an argmax is a reduction
    with ~20 us of set-up, 1.5 % of a 784-256-256-10 step at batch 128 (measured in place).
    Binary and regression: the output column. The result is the same as per batch.

    Example:
        >>> p = _Predictions(multiclass=True)
        >>> p.add(torch.tensor([[0.0, 2.0], [3.0, 1.0]])); p.add(torch.tensor([[1.0, 5.0]]))
        >>> p.result()
        tensor([1, 0, 1])
    """

    PENDING = 1 << 18  # logits (elements) held before an argmax: 1 MB of float32

    def __init__(self, multiclass: bool):
        self.multiclass = multiclass
        self.done: list[torch.Tensor] = []
        self.pending: list[torch.Tensor] = []
        self.held = 0

    def add(self, out: torch.Tensor) -> None:
        """One batch's (detached) model output."""
        if not self.multiclass:
            self.done.append(out[:, 0])
            return
        self.pending.append(out)
        self.held += out.numel()
        if self.held >= self.PENDING:
            self._reduce()

    def _reduce(self) -> None:
        self.done.append(torch.cat(self.pending).argmax(dim=1))
        self.pending.clear()
        self.held = 0

    def result(self) -> torch.Tensor:
        """Every batch's predictions, in order."""
        if self.pending:
            self._reduce()
        return torch.cat(self.done)


def _epoch_scores(
    losses: list[torch.Tensor], pred: torch.Tensor, bounds: list[tuple[int, int]], y: torch.Tensor,
    task: Task,
) -> tuple[float, float]:
    """The epoch's training loss and accuracy (classification) or mean squared error (regression).

    From the batches' mean losses l_b over n_b samples and the predictions (:class:`_Predictions`),
    once per epoch (no per-batch bookkeeping ops): train_loss = sum_b n_b l_b / n, in float64;
    accuracy = share of argmax (multiclass) or logit > 0 (binary) equal to y; mse = mean (f - y)^2,
    in float64.
    """
    n = bounds[-1][1]
    sizes = torch.tensor([end - start for start, end in bounds], dtype=torch.float64, device=y.device)
    train_loss = float((torch.stack(losses).double() * sizes).sum()) / n
    if task == "regression":
        return train_loss, float((pred.double() - y.double()).square().sum()) / n
    hits = (pred > 0) == y if task == "binary" else pred == y
    return train_loss, float(hits.sum()) / n


def train(
    config: MLPConfig,
    data: Dataset,
    report: Report | None = None,
    *,
    threads: int | None = None,
    epoch_metrics: Callable[[nn.Module], dict[str, float]] | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 1,
    resume: TrainState | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train the built-in MLP on ``data`` and evaluate it on the test split.

    A thin wrapper: :func:`drive` runs :func:`train_epochs` to its end, calling ``report``
    after every epoch.

    Args:
        config: hyperparameters.
        data: in-memory train / val / test tensors and the task.
        report: called after every epoch; may raise :class:`StopTraining`.
        threads: torch intra-op threads (default: the CPUs this process may use).
        epoch_metrics: computes more metrics from the model after each epoch (e.g. the sweep's
            ``val_f1_macro``); they reach ``report`` in ``EpochMetrics.extra``.
        checkpoint: receives the training state after every ``checkpoint_every``-th epoch,
            before that epoch's ``report`` (so a reported epoch is never ahead of the last state).
        checkpoint_every: epochs between checkpoints (>= 1).
        resume: a state from ``checkpoint``; training continues with the epoch after it.
        device: where to train (e.g. ``"cuda"``: the GPU Ray assigned); default the CPU. The
            weights are initialized on the CPU from the seed, the data is copied to the device
            once, and the trained model comes back to the CPU, so what follows (evaluation,
            plots) is the same on every device.

    Raises:
        ValueError: the config does not fit the dataset's task (checked before training).
        TrainingDiverged: the training loss became NaN or infinite.

    Example:
        >>> from trainer.data import DataConfig, load_dataset
        >>> result = train(MLPConfig(epochs=2, hidden_size=16), load_dataset(DataConfig()))
        >>> len(result.history), sorted(result.test)
        (2, ['test_accuracy', 'test_loss'])
    """
    epochs = train_epochs(config, data, threads=threads, epoch_metrics=epoch_metrics, checkpoint=checkpoint,
                          checkpoint_every=checkpoint_every, resume=resume, device=device)
    return drive(epochs, report)


R = TypeVar("R")
# What train_epochs returns: yields each epoch's metrics, is sent True to stop after that epoch
# (False or None: go on), and returns the TrainResult (StopIteration.value) when training ends.
Epochs = Generator[EpochMetrics, Optional[bool], R]


def drive(epochs: Generator[EpochMetrics, Optional[bool], R], report: Report | None = None) -> R:
    """Run an epoch generator (:func:`train_epochs`, :func:`trainer.crossval.train_folds`) to its end.

    ``report`` is called with each epoch's metrics; a :class:`StopTraining` it raises asks the
    generator to stop after that epoch (it still returns its result). Any other exception from
    ``report`` closes the generator and propagates.

    Example:
        >>> from trainer.data import DataConfig, load_dataset
        >>> result = drive(train_epochs(MLPConfig(epochs=2, hidden_size=8), load_dataset(DataConfig())))
        >>> [m.epoch for m in result.history]
        [1, 2]
    """
    try:
        metrics = next(epochs)
        while True:
            stop = False
            if report is not None:
                try:
                    report(metrics)
                except StopTraining:
                    stop = True
            metrics = epochs.send(stop)
    except StopIteration as done:
        return done.value
    finally:
        epochs.close()


def train_epochs(
    config: MLPConfig,
    data: Dataset,
    *,
    threads: int | None = None,
    epoch_metrics: Callable[[nn.Module], dict[str, float]] | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 1,
    resume: TrainState | None = None,
    device: str | torch.device | None = None,
    checkpoint_finished: bool = False,
    stop_after: int | None = None,
) -> Epochs[TrainResult]:
    """The training loop, one epoch at a time: a generator of :class:`EpochMetrics`.

    Each ``next`` / ``send(False)`` trains one epoch and yields its metrics; ``send(True)``
    stops after the epoch just yielded (``TrainResult.stopped_epoch`` is set, as when a
    ``report`` raises :class:`StopTraining` in :func:`train`). When training ends (budget
    reached, patience ran out, or stopped) the best weights are restored where configured, the
    model is tested, and the generator returns the :class:`TrainResult` (``StopIteration.value``;
    :func:`drive` unwraps it). The arguments are those of :func:`train`, and are checked
    here, before the first epoch; nothing trains until the first ``next``.

    ``checkpoint_finished``: also hand ``checkpoint`` the state of the epoch where patience ran
    out, marked ``finished`` (whatever ``checkpoint_every`` says). Resuming from such a state
    trains no further epoch: the generator returns that run's result at once. A caller that
    trains several runs side by side (cross-validation folds) checkpoints finished ones this way.

    ``stop_after``: stop after that epoch, as if sent True there; resumed from a state of that
    epoch, nothing trains and the generator returns the result of a run stopped there (a sweep
    completes the evaluation of a trial whose worker died after its scheduler stopped it).
    """
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after={stop_after!r}: must be an epoch >= 1")
    problems = (config.task_problems(data.task, data.n_classes)
                + config.image_problems(data.image_shape, data.name, data.normalization))
    if problems:
        raise ValueError(f"config does not fit dataset {data.name!r}: " + "; ".join(problems))
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every={checkpoint_every!r}: must be an integer >= 1")
    return _epochs(config, data, threads=threads, epoch_metrics=epoch_metrics, checkpoint=checkpoint,
                   checkpoint_every=checkpoint_every, resume=resume, device=device,
                   checkpoint_finished=checkpoint_finished, stop_after=stop_after)


def _epochs(
    config: MLPConfig,
    data: Dataset,
    *,
    threads: int | None,
    epoch_metrics: Callable[[nn.Module], dict[str, float]] | None,
    checkpoint: Checkpoint | None,
    checkpoint_every: int,
    resume: TrainState | None,
    device: str | torch.device | None,
    checkpoint_finished: bool,
    stop_after: int | None = None,
) -> Epochs[TrainResult]:
    flush_denormals()  # before this thread's first parallel region: its OpenMP workers inherit it
    torch.set_num_threads(threads or default_threads())
    torch.manual_seed(config.seed)  # weight init (dropout layers own their mask generators)
    order = torch.Generator().manual_seed(config.seed)  # data order
    device = torch.device(device) if device is not None else torch.device("cpu")
    on_cpu = device.type == "cpu"
    x, y = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    n = len(x)
    bias = output_bias_prior(data.task, y, data.n_outputs) if config.output_bias_prior else None
    model = build_mlp(config, data.n_features, data.n_outputs, bias).to(device)
    stepper = _Stepper(config, model, data)
    schedule = LRSchedule(config)
    stopper = (
        EarlyStopping(config.early_stopping_patience, config.early_stopping_min_delta)
        if config.early_stopping_patience is not None else None
    )
    best = BestWeights() if config.restore_best_weights else None
    min_last = 2 if config.norm == "batchnorm" else 1
    regression, binary = data.task == "regression", data.task == "binary"
    # the shuffled targets, gathered into the same buffer every epoch; the inputs are gathered
    # one batch at a time into a reused batch buffer (xb), where the first layer's matmul reads
    # them while they are still in cache: a whole-split gather writes the split to memory and
    # reads it back, every epoch
    ys = torch.empty_like(y)
    xb = x.new_empty((0, *x.shape[1:]))
    result = TrainResult(model=model, task=data.task)
    loop = _Loop(model, stepper, schedule, stopper, best, order, result)
    first = 1
    last = config.epochs
    if resume is not None:
        first = loop.restore(resume) + 1
        if resume.get(FINISHED):  # patience had run out: nothing left to train
            result.early_stopped_epoch = first - 1
            last = first - 1
        logger.info("resuming training after epoch %d", first - 1)
    if stop_after is not None and stop_after < last:
        last = max(stop_after, first - 1)

    for epoch in range(first, last + 1):
        started = time.perf_counter()
        lr = schedule.lr(epoch)
        set_lr(stepper.optimizer, lr)
        batch_size = config.batch_size_at(epoch)
        model.train()
        perm = torch.randperm(n, generator=order)  # on the CPU: the same order on every device
        if not on_cpu:
            perm = perm.to(device)
        torch.index_select(y, 0, perm, out=ys)
        bounds = batch_bounds(n, batch_size, min_last)
        largest = max(end - start for start, end in bounds)
        if len(xb) < largest:
            xb = x.new_empty((largest, *x.shape[1:]))
        losses: list[torch.Tensor] = []  # each batch's mean training loss
        predictions = _Predictions(multiclass=not (regression or binary))
        for start, end in bounds:
            # the step's backward runs before the next gather overwrites the buffer
            batch = torch.index_select(x, 0, perm[start:end], out=xb[: end - start])
            predictions.add(stepper.step(batch, ys[start:end], lr))
            losses.append(stepper.loss)
        train_loss, score = _epoch_scores(losses, predictions.result(), bounds, ys, data.task)
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"epoch {epoch}: training loss is {train_loss} (lr={lr:g})")
        val = evaluate(model, x_val, y_val, data.task, config)
        extra = (
            {"train_mse": score, "val_mse": val["mse"], "val_mae": val["mae"]} if regression
            else {"train_accuracy": score, "val_accuracy": val["accuracy"]}
        )
        metrics = EpochMetrics(
            epoch=epoch, train_loss=train_loss, val_loss=val["loss"], lr=lr, batch_size=batch_size,
            epoch_seconds=time.perf_counter() - started, **extra,
            extra=epoch_metrics(model) if epoch_metrics is not None else {},
        )
        result.history.append(metrics)
        result.model_epoch = epoch
        schedule.observe(epoch, val["loss"])
        if best is not None:
            best.offer(model, epoch, val["loss"])
        patience_ran_out = stopper is not None and stopper.update(val["loss"])
        if patience_ran_out:  # the last epoch of a run that stopped by itself: a complete run
            metrics = replace(metrics, extra={**metrics.extra, EARLY_STOPPED: 1.0})
            result.history[-1] = metrics
        if checkpoint is not None and epoch % checkpoint_every == 0 and not patience_ran_out:
            checkpoint(loop.state(epoch))
        elif checkpoint is not None and patience_ran_out and checkpoint_finished:
            checkpoint({**loop.state(epoch), FINISHED: True})
        if (yield metrics):
            result.stopped_epoch = epoch
            logger.debug("training stopped by the caller after epoch %d", epoch)
            break
        if patience_ran_out:
            result.early_stopped_epoch = epoch
            logger.debug("early stopping after epoch %d (best val_loss at epoch %d)", epoch, stopper.best_epoch)
            break

    if (stop_after is not None and stop_after < config.epochs and result.stopped_epoch is None
            and result.early_stopped_epoch is None and result.history and result.history[-1].epoch == stop_after):
        result.stopped_epoch = stop_after
    if best is not None and best.epoch:
        best.restore(model)
        result.model_epoch = best.epoch
    test = evaluate(model, data.x_test.to(device), data.y_test.to(device), data.task, config)
    if not on_cpu:
        result.model = model.cpu()
    result.test = {f"test_{k}": v for k, v in test.items()}
    return result
