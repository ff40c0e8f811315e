"""Typed hyperparameters of the built-in MLP trainer.

Every field is one flat, sweepable key of a sweep file's ``parameters:`` block.
The formulas each key controls (g: gradient, w: a weight, eta: the learning rate):

Optimizers (``optimizer``)
    - ``sgd``:       w <- w - eta g   (batch_size >= n: full batch; 1: single sample)
    - ``momentum``:  v <- alpha v - eta g; w <- w + v   (alpha: ``momentum``)
    - ``nesterov``:  the gradient is taken at the look-ahead point w + alpha v
    - ``rmsprop``:   s <- rho s + (1 - rho) g^2; w <- w - eta g / (sqrt(s) + eps)
    - ``adam``:      m <- b1 m + (1 - b1) g; s <- b2 s + (1 - b2) g^2;
                     w <- w - eta (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)
    - ``adamw``:     adam with decoupled weight decay (below)

Regularizers
    - ``l1``, ``l2``: loss += l1 sum|w| + l2 sum w^2, over Linear weights (every
      parameter when ``penalize_bias``); both > 0 is the elastic net
    - ``weight_decay`` (decoupled, every optimizer): w <- w - eta lambda w before the update
    - ``dropout`` p: inverted dropout, h <- h m / (1 - p') with m ~ Bernoulli(1 - p'), training only;
      p' = round(65536 p) / 65536 is p quantized to the 16-bit masks (|p' - p| <= 2^-17)
    - ``input_noise``, ``weight_noise``, ``grad_noise`` sigma: x + N(0, sigma^2) on inputs,
      w + N(0, sigma^2) on Linear weights during the training forward pass only, and
      g + N(0, sigma^2) on gradients (the course's N(0, 0.1) is ``grad_noise: 0.1``)
    - ``augment_flip``, ``augment_shift`` s (image datasets): each training image, each time it is
      drawn, mirrored left-right with probability 1/2 and translated by (dy, dx) uniform on -s..s,
      blank pixels shifted in (:mod:`trainer.augment`); needs one scale for all pixels (``standardize_all``, ``none``)
    - ``label_smoothing`` eps: target (1 - eps) onehot + eps / K (binary: K = 2)
    - ``clip_grad_norm`` c: g <- g min(1, c / ||g||) over all parameters together
    - early stopping on ``val_loss``: stop after ``early_stopping_patience`` epochs without
      an improvement of more than ``early_stopping_min_delta``

Learning-rate schedules (``lr_schedule``; e: epoch from 1, W: ``warmup_epochs``, k = e - W)
    - warm-up: eta_e = lr e / W for e <= W, then the schedule on k
    - ``constant``: lr; ``step``: lr gamma^floor((k - 1) / step_size);
      ``exponential``: lr gamma^(k - 1);
      ``cosine``: lr_min + (lr - lr_min) (1 + cos(pi (k - 1) / (T - 1))) / 2 with T = epochs - W;
      ``reduce_on_plateau``: lr gamma^r, r = reductions after ``plateau_patience`` epochs
      without a lower val_loss
    - batch size: batch_size * batch_size_growth^floor((e - 1) / batch_growth_every),
      capped at ``max_batch_size``
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Activation = Literal["relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "tanh", "sigmoid"]
Optimizer = Literal["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"]
Schedule = Literal["constant", "step", "exponential", "cosine", "reduce_on_plateau"]
Init = Literal["default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "normal"]
Norm = Literal["none", "batchnorm", "layernorm"]
Loss = Literal["auto", "cross_entropy", "mse", "mae", "huber"]
Task = Literal["multiclass", "binary", "regression"]

REGRESSION_LOSSES = ("mse", "mae", "huber")
PER_PIXEL_NORMALIZATIONS = ("standardize", "minmax")  # DataConfig.normalize kinds fitted per feature


class MLPConfig(BaseModel):
    """Hyperparameters of one training run of the built-in MLP (formulas: module docstring).

    Example:
        >>> from trainer.config import MLPConfig
        >>> MLPConfig(hidden_layers=2, hidden_size=64, optimizer="momentum", lr=0.05).widths()
        (64, 64)
        >>> MLPConfig(batch_size=32, batch_size_growth=2, batch_growth_every=5).batch_size_at(11)
        128
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # ---- architecture
    hidden_layers: int = Field(2, ge=0, le=64)  # depth: number of hidden layers
    hidden_size: int = Field(128, ge=1, le=65536)  # width of every hidden layer
    hidden_sizes: tuple[int, ...] | None = None  # explicit widths; overrides hidden_layers/hidden_size
    activation: Activation = "relu"  # hidden-layer non-linearity
    leaky_relu_slope: float = Field(0.01, ge=0.0, lt=1.0)  # a in leaky_relu(x) = max(x, a x); prelu's initial a
    norm: Norm = "none"  # normalization after each hidden Linear (bias-free for batchnorm), before the activation
    residual: bool = False  # h <- h + block(h) where a hidden layer keeps the width of its input
    init: Init = "default"  # weight init of every Linear (biases 0 unless default); PyTorch's when "default"
    init_std: float = Field(0.01, gt=0.0)  # sigma of init "normal"
    output_bias_prior: bool = False  # output bias = log class prior (logit for binary) or target mean
    # ---- task and loss
    loss: Loss = "auto"  # auto: cross-entropy for classification, mse for regression
    huber_delta: float = Field(1.0, gt=0.0)  # delta of the huber loss
    class_weight: Literal["none", "balanced"] | tuple[float, ...] = "none"  # balanced: n / (K n_k)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)  # eps of label smoothing (classification)
    # ---- regularization
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # inverted dropout probability after each hidden layer
    l1: float = Field(0.0, ge=0.0)  # L1 loss penalty: loss += l1 * sum(|w|)
    l2: float = Field(0.0, ge=0.0)  # L2 loss penalty: loss += l2 * sum(w**2) over weights (biases excluded)
    penalize_bias: bool = False  # l1 / l2 / weight_decay also on biases, norm and prelu parameters
    weight_decay: float = Field(0.0, ge=0.0)  # decoupled weight decay w <- w - lr*wd*w, every optimizer
    input_noise: float = Field(0.0, ge=0.0)  # sigma of Gaussian noise added to training inputs
    weight_noise: float = Field(0.0, ge=0.0)  # sigma of Gaussian noise on weights in the training forward pass
    grad_noise: float = Field(0.0, ge=0.0)  # sigma of Gaussian noise added to every gradient
    augment_shift: int = Field(0, ge=0)  # image datasets: random translation of each training image by up to this many pixels per axis
    augment_flip: bool = False  # image datasets: mirror each training image left-right with probability 1/2
    clip_grad_norm: float | None = Field(None, gt=0.0)  # max global L2 norm of the gradient; None: no clipping
    early_stopping_patience: int | None = Field(None, ge=1)  # epochs without val_loss improvement; None: off
    early_stopping_min_delta: float = Field(0.0, ge=0.0)  # an improvement must lower val_loss by more than this
    restore_best_weights: bool = False  # evaluate the test split with the best-val_loss weights
    # ---- optimizer
    optimizer: Optimizer = "adam"  # update rule
    lr: float = Field(1e-3, gt=0.0, le=10.0)  # learning rate (eta)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # alpha for momentum / nesterov
    rho: float = Field(0.99, ge=0.0, lt=1.0)  # rmsprop's decay of the squared-gradient average
    beta1: float = Field(0.9, ge=0.0, lt=1.0)  # adam's decay of the first moment
    beta2: float = Field(0.999, ge=0.0, lt=1.0)  # adam's decay of the second moment
    eps: float = Field(1e-8, gt=0.0)  # rmsprop / adam denominator guard
    # ---- schedules
    lr_schedule: Schedule = "constant"  # learning rate per epoch after warm-up
    lr_step_size: int = Field(10, ge=1)  # epochs between step decays
    lr_gamma: float = Field(0.1, gt=0.0, le=1.0)  # decay factor of step / exponential / reduce_on_plateau
    lr_min: float = Field(0.0, ge=0.0)  # cosine's final learning rate
    warmup_epochs: int = Field(0, ge=0)  # linear warm-up epochs, lr * e / warmup_epochs
    plateau_patience: int = Field(5, ge=1)  # reduce_on_plateau: epochs without a lower val_loss
    batch_size: int = Field(64, ge=1)  # mini-batch size; larger than the train split means full batch
    batch_size_growth: float = Field(1.0, ge=1.0)  # batch size multiplier every batch_growth_every epochs
    batch_growth_every: int = Field(1, ge=1)  # epochs between batch size growths
    max_batch_size: int | None = Field(None, ge=1)  # cap of the growing batch size; None: no cap
    epochs: int = Field(20, ge=1, le=100000)  # passes over the training split
    seed: int = Field(0, ge=0)  # weight init, data order, dropout masks, noise and augmentation draws

    @model_validator(mode="after")
    def _check(self) -> MLPConfig:
        if self.hidden_sizes is not None and any(w < 1 for w in self.hidden_sizes):
            raise ValueError(f"hidden_sizes={list(self.hidden_sizes)!r}: every width must be >= 1")
        if isinstance(self.class_weight, tuple) and (
            not self.class_weight or any(w <= 0 for w in self.class_weight)
        ):
            raise ValueError(f"class_weight={list(self.class_weight)!r}: must list one weight > 0 per class")
        if self.lr_schedule == "cosine" and self.lr_min > self.lr:
            raise ValueError(f"lr_min={self.lr_min:g}: must be <= lr ({self.lr:g}) for the cosine schedule")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError(f"warmup_epochs={self.warmup_epochs}: must be < epochs ({self.epochs})")
        if self.max_batch_size is not None and self.max_batch_size < self.batch_size:
            raise ValueError(f"max_batch_size={self.max_batch_size}: must be >= batch_size ({self.batch_size})")
        if self.norm == "batchnorm" and self.batch_size < 2:
            raise ValueError("batch_size=1: norm 'batchnorm' needs batches of at least 2 samples")
        return self

    def widths(self) -> tuple[int, ...]:
        """Hidden-layer widths, from ``hidden_sizes`` or ``hidden_layers`` x ``hidden_size``."""
        if self.hidden_sizes is not None:
            return tuple(self.hidden_sizes)
        return (self.hidden_size,) * self.hidden_layers

    def batch_size_at(self, epoch: int) -> int:
        """Mini-batch size of ``epoch`` (from 1) under the batch-size schedule."""
        grown = self.batch_size * self.batch_size_growth ** ((epoch - 1) // self.batch_growth_every)
        size = int(round(grown))
        return min(size, self.max_batch_size) if self.max_batch_size is not None else size

    def task_problems(self, task: Task, n_classes: int | None = None) -> list[str]:
        """Why this config cannot train a ``task`` model with ``n_classes`` classes (empty: it can).

        ``n_classes=None`` skips the checks that need the class count.

        Example:
            >>> MLPConfig(loss="huber").task_problems("multiclass", 10)
            ["loss='huber': a regression loss; a multiclass task trains with 'cross_entropy' (or 'auto')"]
        """
        problems: list[str] = []
        if task == "regression":
            if self.loss == "cross_entropy":
                problems.append("loss='cross_entropy': a classification loss; a regression task trains with "
                                "'mse', 'mae', 'huber' (or 'auto')")
            if self.class_weight != "none":
                problems.append(f"class_weight={_show(self.class_weight)}: only classification tasks have "
                                "classes to weight; use 'none'")
            if self.label_smoothing > 0:
                problems.append(f"label_smoothing={self.label_smoothing:g}: only classification tasks have "
                                "labels to smooth; use 0")
        else:
            if self.loss in REGRESSION_LOSSES:
                problems.append(f"loss={self.loss!r}: a regression loss; a {task} task trains with "
                                "'cross_entropy' (or 'auto')")
            if n_classes is not None and isinstance(self.class_weight, tuple) and len(self.class_weight) != n_classes:
                problems.append(f"class_weight={_show(self.class_weight)}: has {len(self.class_weight)} "
                                f"weights; the dataset has {n_classes} classes")
        return problems


    def image_problems(self, image_shape: tuple[int, int] | None, dataset: str,
                       normalize: str | None = None) -> list[str]:
        """Why this config's image augmentation cannot run on ``dataset`` (empty: it can).

        ``normalize`` is the data block's normalization (None: not known, not checked). A shift or
        a mirror moves content between pixels, so it needs one scale for all of them: with
        per-pixel statistics (``standardize``, ``minmax``) the pixels that are nearly always blank
        get a scale near 0, and content moved into them becomes inputs in the hundreds or
        thousands (Fashion-MNIST, per-pixel standardize: the smallest scale is 0.0004 and a
        2-pixel shift gives inputs up to 1800).

        Example:
            >>> MLPConfig(augment_shift=2).image_problems(None, "diabetes")
            ["augment_shift=2: augmentation needs image rows; dataset 'diabetes' has none (a csv / npz of images sets data.image_shape)"]
            >>> MLPConfig(augment_flip=True).image_problems((8, 8), "digits", "standardize_all")
            []
        """
        used = [f"augment_shift={self.augment_shift}"] if self.augment_shift else []
        used += ["augment_flip=True"] if self.augment_flip else []
        if not used:
            return []
        if image_shape is None:
            return [f"{used[0]}: augmentation needs image rows; dataset {dataset!r} has none "
                    "(a csv / npz of images sets data.image_shape)"]
        if self.augment_shift >= min(image_shape):
            return [f"augment_shift={self.augment_shift}: must be smaller than the shorter side of the "
                    f"{image_shape[0]}x{image_shape[1]} images of {dataset!r}"]
        if normalize in PER_PIXEL_NORMALIZATIONS:
            return [f"{used[0]}: moves content between pixels, so it needs one scale for all of them, but "
                    f"data.normalize={normalize!r} gives each pixel its own: pixels that are nearly always "
                    "blank get a scale near 0, and content moved into them becomes inputs in the hundreds "
                    "or thousands; use normalize 'standardize_all' (one mean and SD over all pixels) or 'none'"]
        return []


def _show(value: object) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)
