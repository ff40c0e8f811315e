"""The built-in multilayer perceptron: layers, activations, initialization.

Each hidden layer is Linear -> [norm] -> activation -> [dropout]. Without
``residual`` the layers sit flat in an ``nn.Sequential``; with it, a hidden layer
whose width equals its input's becomes a :class:`Residual` block, h + block(h).
The last module is always the output Linear, so ``model[:-1]`` computes the last
hidden activations.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from trainer import fused
from trainer.config import MLPConfig, Task


def make_activation(config: MLPConfig) -> nn.Module:
    """The hidden-layer non-linearity named by ``config.activation``."""
    name = config.activation
    if name == "leaky_relu":
        return nn.LeakyReLU(config.leaky_relu_slope)
    if name == "prelu":
        return nn.PReLU(init=config.leaky_relu_slope if config.leaky_relu_slope > 0 else 0.25)
    simple: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU, "elu": nn.ELU, "selu": nn.SELU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
    }
    return simple[name]()


MASK_LEVELS = 1 << 16  # dropout masks compare 16-bit uniform integers against a threshold
_MASK_WORDS = np.dtype("<u2")  # little-endian on every platform: the same masks everywhere
DROPOUT_STREAM = 0x64726F70  # "drop": keeps the layers' seed sequences apart from other uses of the seed


class InvertedDropout(nn.Module):
    """Inverted dropout: h * m / (1 - p'), m ~ Bernoulli(1 - p'), in training; identity in eval.

    The mask comes from the layer's own generator ``self.generator`` (numpy PCG64), so a
    checkpoint's RNG state holds it and a resumed run draws the same masks. Each element gets
    a 16-bit uniform integer u (the raw 64-bit PCG64 output cut into four) and is dropped when
    u < k, k = round(p * 65536). The drop probability is therefore quantized to

        p' = k / 65536,   |p' - p| <= 2^-17,

    and the kept activations are scaled by 1 / (1 - p') = 65536 / (65536 - k), so that
    E[h m / (1 - p')] = h holds exactly (up to the float32 rounding of the scale). On CPU this
    draws a 128 x 256 mask about 10x faster than ``torch.rand(...) >= p`` (~35 us against
    ~380 us for mask and scale, one thread); the mask is made on the CPU and copied to ``x``'s
    device. Inside an :class:`MLP` in training, :mod:`trainer.fused` draws the same words from the
    same generator in C and applies them in its layer kernel: the same masks, the same state.

    Args:
        p: the drop probability, 0 <= p < 1.
        generator: the mask stream; default a PCG64 seeded from torch's global generator
            (so ``torch.manual_seed`` makes it reproducible, as for ``nn.Dropout``).
            :func:`build_mlp` passes one seeded from ``config.seed`` and the layer's index.

    Example:
        >>> d = InvertedDropout(0.5).eval(); x = torch.ones(3)
        >>> torch.equal(d(x), x)
        True
        >>> InvertedDropout(0.2).effective_p
        0.1999969482421875
    """

    def __init__(self, p: float, generator: np.random.Generator | None = None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout={p}: must be in [0, 1)")
        self.p = p
        self.drop_level = round(p * MASK_LEVELS)  # k: u < k drops
        if self.drop_level >= MASK_LEVELS:
            raise ValueError(f"dropout={p}: too close to 1 for {MASK_LEVELS} mask levels")
        self.effective_p = self.drop_level / MASK_LEVELS
        self.scale = MASK_LEVELS / (MASK_LEVELS - self.drop_level)  # 1 / (1 - p')
        if generator is None:
            generator = np.random.Generator(np.random.PCG64(int(torch.randint(0, 2**62, ()))))
        self.generator = generator

    def words(self, n: int) -> np.ndarray:
        """The next 16-bit uniform integers for ``n`` elements (at least n; kept where u >= drop_level).

        ``(n + 3) // 4`` raw 64-bit words of the generator, cut into four little-endian 16-bit words
        each: the stream that :mod:`trainer.fused` also draws (in C, where it can).
        """
        return self.generator.bit_generator.random_raw((n + 3) // 4).astype("<u8", copy=False).view(_MASK_WORDS)

    def mask(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """The next float32 mask of ``shape``: 1 / (1 - p') where kept, 0 where dropped."""
        n = math.prod(shape)
        u = self.words(n)[:n].reshape(shape)
        m = (u >= self.drop_level).astype(np.float32)
        m *= np.float32(self.scale)
        return torch.from_numpy(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_level == 0:
            return x
        return x * self.mask(x.shape).to(device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class BatchNorm(nn.BatchNorm1d):
    """Batch norm over (batch, features): y = gamma (h - mu_B) / sqrt(var_B + eps) + beta.

    ``nn.BatchNorm1d`` with its forward cut to the one kernel call: mu_B and the biased var_B
    come from the batch in training (running averages updated with ``momentum``, the unbiased
    variance as PyTorch does), the running averages in evaluation. The same parameters,
    buffers and numbers as ``nn.BatchNorm1d``; its Python checks cost ~8 us a call, a
    noticeable share of a small layer's step.

    Example:
        >>> bn = BatchNorm(2); h = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
        >>> bn(h)
        tensor([[-1.0000, -1.0000],
                [ 1.0000,  1.0000]], grad_fn=<NativeBatchNormBackward0>)
    """

    @staticmethod
    def check_training_input(x: torch.Tensor) -> None:
        """Batch statistics need a (batch >= 2, features) input (also checked by the fused layers)."""
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(f"batch norm in training needs a (batch >= 2, features) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return torch.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                                    False, 0.0, self.eps, False)
        self.check_training_input(x)
        self.num_batches_tracked.add_(1)
        return torch.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                                True, self.momentum, self.eps, False)


class MLP(nn.Sequential):
    """``nn.Sequential`` that runs a regularized hidden layer in fused kernels while training.

    The modules, their parameters, buffers and generators are those of the plain sequence (the
    same ``state_dict`` and checkpoints). In a training pass on a CPU float32 batch, where
    :mod:`trainer.fused` has its kernels, consecutive hidden layers ``Linear -> BatchNorm -> ReLU
    [-> InvertedDropout]`` or ``Linear -> ReLU -> InvertedDropout`` are one call of
    :func:`trainer.fused.hidden_stack`, with the output layer (a last ``Linear``) when it follows
    them; everything else (evaluation too) runs module by module.

    Example:
        >>> m = MLP(nn.Linear(3, 4), nn.ReLU(), InvertedDropout(0.5), nn.Linear(4, 2))
        >>> m.eval()(torch.ones(1, 3)).shape
        torch.Size([1, 2])
    """

    def _plan(self) -> list[tuple[list[fused.Layer], tuple[nn.Module, ...], nn.Linear | None]]:
        """The forward's steps: (fused layers, the modules they cover, the output layer or None), or
        ([], (module,), None) for a module run by itself.

        Consecutive hidden layers ``Linear -> [BatchNorm] -> ReLU [-> InvertedDropout]`` form one
        step (one autograd node), and the model's output layer (a ``Linear`` that is the last
        module) joins the step before it. A plain 784-256-256-10 step is ~8 % faster this way than on
        PyTorch's modules (200 paired blocks of 50 steps): the output layer's autograd nodes, and
        each layer's bias pass and bias-gradient sum, are saved.
        """
        modules = tuple(self._modules.values())
        cached = self.__dict__.get("_cached_plan")
        if cached is not None and cached[0] == modules:
            return cached[1]
        plan: list[tuple[list[fused.Layer], tuple[nn.Module, ...], nn.Linear | None]] = []
        i = 0
        while i < len(modules):
            layer, width = _fusable_layer(modules, i)
            if layer is None:
                if i == len(modules) - 1 and type(modules[i]) is nn.Linear and plan and plan[-1][0]:
                    plan[-1] = (plan[-1][0], plan[-1][1] + modules[i:], modules[i])  # type: ignore[assignment]
                else:
                    plan.append(([], modules[i:i + 1], None))
            elif plan and plan[-1][0]:  # extends the stack before it
                plan[-1] = (plan[-1][0] + [layer], plan[-1][1] + modules[i:i + width], None)
            else:
                plan.append(([layer], modules[i:i + width], None))
            i += width
        self.__dict__["_cached_plan"] = (modules, plan)
        return plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not fused.usable(x):
            return super().forward(x)
        for layers, run, output in self._plan():
            # a slice such as model[:-1] is a new container in training mode: ask the layers themselves;
            # a module's hooks run only where it is called
            if not layers or not all(m.training for m in run) or _hooked(run):
                for m in run:
                    x = m(x)
            else:
                x = fused.hidden_stack(x, layers, output)
        return x


def _hooked(modules: tuple[nn.Module, ...]) -> bool:
    """Whether a forward or backward hook is registered on any of ``modules``, or globally."""
    registry = torch.nn.modules.module
    if (registry._global_forward_hooks or registry._global_forward_pre_hooks
            or registry._global_backward_hooks or registry._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in modules)


def _fusable_layer(modules: tuple[nn.Module, ...], i: int) -> tuple[fused.Layer | None, int]:
    """The fusable hidden layer starting at ``modules[i]`` and how many modules it spans, or (None, 1)."""
    linear = modules[i]
    if type(linear) is not nn.Linear:
        return None, 1
    j = i + 1
    bn = modules[j] if j < len(modules) and type(modules[j]) is BatchNorm else None
    if bn is not None and not (bn.affine and bn.track_running_stats):  # type: ignore[union-attr]
        return None, 1
    j += bn is not None
    if j >= len(modules) or type(modules[j]) is not nn.ReLU:
        return None, 1
    dropout = modules[j + 1] if j + 1 < len(modules) and isinstance(modules[j + 1], InvertedDropout) else None
    return (linear, bn, dropout), j + 1 + (dropout is not None) - i  # type: ignore[return-value]


class Residual(nn.Module):
    """h -> h + block(h), for a block that keeps the width."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def build_mlp(
    config: MLPConfig, n_features: int, n_outputs: int, output_bias: torch.Tensor | None = None
) -> MLP:
    """Hidden layers, then a linear output layer, initialized by ``config.init``.

    Args:
        output_bias: initial bias of the output layer (see :func:`output_bias_prior`).

    Example:
        >>> m = build_mlp(MLPConfig(hidden_sizes=(8, 4)), n_features=3, n_outputs=2)
        >>> [layer.out_features for layer in m if isinstance(layer, torch.nn.Linear)]
        [8, 4, 2]
    """
    layers: list[nn.Module] = []
    width_in = n_features
    for index, width in enumerate(config.widths()):
        # batch norm subtracts each unit's batch mean, a bias before it with it: the layer has none
        block: list[nn.Module] = [nn.Linear(width_in, width, bias=config.norm != "batchnorm")]
        if config.norm == "batchnorm":
            block.append(BatchNorm(width))
        elif config.norm == "layernorm":
            block.append(nn.LayerNorm(width))
        block.append(make_activation(config))
        if config.dropout > 0:
            block.append(InvertedDropout(config.dropout, dropout_generator(config.seed, index)))
        if config.residual and width == width_in:
            layers.append(Residual(MLP(*block)))
        else:
            layers.extend(block)
        width_in = width
    layers.append(nn.Linear(width_in, n_outputs))
    model = MLP(*layers)
    initialize(model, config)
    if output_bias is not None:
        with torch.no_grad():
            model[-1].bias.copy_(output_bias)
    return model


def dropout_generator(seed: int, layer: int) -> np.random.Generator:
    """The mask stream of hidden layer ``layer``'s dropout: PCG64 from SeedSequence([seed, "drop", layer]).

    It does not draw from torch's generator, so adding dropout leaves the weight init unchanged.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, DROPOUT_STREAM, layer])))


def _gain_name(config: MLPConfig) -> tuple[str, float]:
    """The nonlinearity (and leaky slope) that Kaiming / Xavier gains are computed for."""
    if config.activation in ("leaky_relu", "prelu"):
        return "leaky_relu", config.leaky_relu_slope
    if config.activation in ("relu", "tanh", "selu", "sigmoid"):
        return config.activation, 0.0
    return "relu", 0.0  # elu, gelu: the relu gain is the usual choice


def initialize(model: nn.Module, config: MLPConfig) -> None:
    """Re-initialize every Linear layer's weight by ``config.init``; biases become 0.

    - xavier_uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); xavier_normal: std sqrt(2 / (fan_in + fan_out))
    - kaiming_uniform: U(-b, b), b = gain sqrt(3 / fan_in); kaiming_normal: std gain / sqrt(fan_in),
      gain for the activation (sqrt(2) for relu)
    - normal: N(0, init_std^2)

    ``default`` keeps PyTorch's Linear initialization (biases included).
    """
    if config.init == "default":
        return
    nonlinearity, slope = _gain_name(config)
    for m in model.modules():
        if not isinstance(m, nn.Linear):
            continue
        w = m.weight
        if config.init == "xavier_uniform":
            nn.init.xavier_uniform_(w)
        elif config.init == "xavier_normal":
            nn.init.xavier_normal_(w)
        elif config.init == "kaiming_uniform":
            nn.init.kaiming_uniform_(w, a=slope, nonlinearity=nonlinearity)
        elif config.init == "kaiming_normal":
            nn.init.kaiming_normal_(w, a=slope, nonlinearity=nonlinearity)
        else:
            nn.init.normal_(w, 0.0, config.init_std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def output_bias_prior(task: Task, y_train: torch.Tensor, n_outputs: int) -> torch.Tensor:
    """The output bias that makes an untrained model predict the training prior.

    multiclass: log(pi_k) (softmax of it is the class frequency; empty classes get log(1/(2n)));
    binary: log(p / (1 - p)); regression: the mean target.

    Example:
        >>> output_bias_prior("binary", torch.tensor([0, 0, 0, 1]), 1)
        tensor([-1.0986])
    """
    if task == "regression":
        return y_train.float().mean().reshape(1).expand(n_outputs).clone()
    n = len(y_train)
    counts = torch.bincount(y_train.long(), minlength=max(n_outputs, 2)).double()
    prior = torch.clamp(counts / n, min=1.0 / (2 * n), max=1.0 - 1.0 / (2 * n))
    if task == "binary":
        p = float(prior[1])
        return torch.tensor([math.log(p / (1 - p))], dtype=torch.float32)
    return torch.log(prior[:n_outputs]).float()


def weight_matrices(model: nn.Module) -> list[torch.Tensor]:
    """The weights that penalties apply to: every Linear layer's weight, never a bias."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


def penalized_parameters(model: nn.Module, include_bias: bool) -> list[torch.Tensor]:
    """Linear weights; every parameter (biases, norm and prelu parameters) when ``include_bias``."""
    return list(model.parameters()) if include_bias else weight_matrices(model)
