"""Fused CPU kernels for a regularized hidden layer: Linear -> [batch norm] -> ReLU -> [dropout].

In eager PyTorch each of batch norm, ReLU and the dropout multiplication is its own kernel and its
own autograd node, forward and backward; on the small tensors of an MLP step (128 x 256) their
fixed costs, not the arithmetic, made dropout + batch norm cost ~35-40 % of a plain step. Here a
stack of such layers is one autograd node (:func:`hidden_stack`): PyTorch's matrix products, then
the C kernels of ``fused.c``, which do batch norm, ReLU and the dropout mask in one pass forward
and two backward, and draw the mask's random words themselves.

The kernels are plain C with no PyTorch headers: compiled by the system C compiler (``$CC``,
else ``cc``) in about half a second on first use, cached under :func:`cache_dir` by a hash of the
source and the flags, and loaded with ctypes. Where there is no compiler, or it fails, the trainer
runs the eager PyTorch layers instead (logged once); ``TRAINER_KERNELS`` chooses:

- ``auto`` (default): fused where the kernels build, eager otherwise;
- ``fused``: the kernels are required: a build failure is an error;
- ``eager``: never use them.

What the fused path changes and what it keeps:

- The dropout masks are the same: the layer's own numpy PCG64 generator, advanced by the same
  words (:class:`trainer.model.InvertedDropout`), so a checkpoint's generator state resumes them.
- Without batch norm, a layer is bit-identical to the eager modules.
- Batch norm agrees with ``torch.batch_norm`` to float32 rounding (its own two-pass sums), so a
  run on the fused path and a run on the eager path drift apart over training like runs on two
  machines; each path is deterministic. The path a sweep used is recorded with its environment.
- Only CPU float32 training passes are fused; evaluation and other devices use PyTorch's layers.
  A plain ``Linear -> ReLU`` layer is not fused: PyTorch's native nodes beat a Python one there.

Example:
    >>> import numpy as np, torch
    >>> from trainer.model import InvertedDropout
    >>> linear, dropout = torch.nn.Linear(3, 4), InvertedDropout(0.5, np.random.Generator(np.random.PCG64(0)))
    >>> hidden_stack(torch.ones(2, 3), [(linear, None, dropout)]).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:
    from trainer.model import BatchNorm, InvertedDropout

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fused.c")
FLAGS = ("-O3", "-fno-trapping-math", "-fno-math-errno", "-fPIC", "-shared")  # no -march=native: nodes differ
MODES = ("auto", "fused", "eager")
Mode = Literal["auto", "fused", "eager"]

_LITTLE_ENDIAN = sys.byteorder == "little"  # the kernels read the mask words natively, numpy's as "<u2"
_P, _I64, _I32, _F32, _F64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float, ctypes.c_double
_SIGNATURES = {
    "bn_relu_drop_fwd": [_P, _P, _I64, _I64, _P, _P, _P, _P, _P, _F64, _F64, _P, _I32, _F32, _P],
    "bn_relu_drop_bwd": [_P, _P, _P, _I64, _I64, _P, _P, _F32, _P, _P, _P],
    "relu_drop_fwd": [_P, _P, _I64, _P, _I32, _F32],
    "relu_drop_bwd": [_P, _P, _I64, _F32, _P],
    "pcg64_fill": [_P, _P, _I64],
    "pcg64_available": [],
}


class KernelBuildError(RuntimeError):
    """The fused kernels could not be compiled or loaded."""


def mode() -> Mode:
    """``TRAINER_KERNELS``, checked: one of auto, fused, eager."""
    value = os.environ.get("TRAINER_KERNELS", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"TRAINER_KERNELS={value!r}: must be one of {', '.join(MODES)}")
    return value  # type: ignore[return-value]


def cache_dir() -> Path:
    """``$TRAINER_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/sweeps/kernels``, else ``~/.cache/sweeps/kernels``."""
    explicit = os.environ.get("TRAINER_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sweeps" / "kernels"


def _compiler() -> str:
    name = os.environ.get("CC") or "cc"
    path = shutil.which(name)
    if path is None:
        raise KernelBuildError(f"no C compiler: {name!r} (from $CC, default cc) is not on PATH")
    return path


def build(directory: Path | None = None) -> Path:
    """Compile ``fused.c`` into ``directory`` (default :func:`cache_dir`) unless that build exists.

    The file name holds a hash of the source, the flags and the machine type, so a changed source
    builds anew, and an existing build needs no compiler (the container image ships one built at
    image build time). Concurrent processes (Ray workers on one node) each compile to a temporary
    file and rename it into place, which is atomic.
    """
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), os.uname().machine.encode()])).hexdigest()[:16]
    directory = cache_dir() if directory is None else directory
    target = directory / f"fused-{key}.so"
    if target.exists():
        return target
    compiler = _compiler()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".fused-", suffix=".so", dir=directory)
        os.close(fd)
    except OSError as error:
        raise KernelBuildError(f"cannot write the kernel cache {directory}: {error}") from error
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE), "-lm"],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise KernelBuildError(f"{compiler} failed on {SOURCE.name} (exit {done.returncode}): "
                                   f"{done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as error:
        raise KernelBuildError(f"compiling {SOURCE.name} with {compiler} failed: {error}") from error
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("compiled the fused trainer kernels: %s", target)
    return target


def _load(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as error:
        raise KernelBuildError(f"cannot load {path}: {error}") from error
    for name, argtypes in _SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = ctypes.c_int if name == "pcg64_available" else None
    return lib


def pcg64_words_match(lib: ctypes.CDLL) -> bool:
    """Whether ``pcg64_fill`` draws numpy's PCG64 words and leaves its state as numpy would.

    It writes numpy's private state struct, so it is checked against this numpy once, on
    throw-away generators, for word counts around its four-lane unrolling.
    """
    if not lib.pcg64_available():
        return False
    for count in (0, 1, 5, 4099):
        ours, theirs = (np.random.PCG64(np.random.SeedSequence([count, 12345])) for _ in range(2))
        words = np.empty(count, dtype=np.uint64)
        lib.pcg64_fill(ours.ctypes.state_address, words.ctypes.data, count)
        if not np.array_equal(words, theirs.random_raw(count)) or ours.state != theirs.state:
            return False
    return True


_lib: Optional[ctypes.CDLL] = None
_status: Optional[str] = None
_pcg64_in_c = False  # pcg64_fill checked against this numpy


def kernels() -> Optional[ctypes.CDLL]:
    """The loaded kernels, building them on first call; None where :func:`mode` says eager.

    In ``auto`` mode a failed build is logged once (with its reason) and gives None; in ``fused``
    mode it raises :class:`KernelBuildError`.
    """
    global _lib, _status, _pcg64_in_c
    if _status is not None:
        return _lib
    chosen = mode()
    if chosen == "eager":
        _status = "eager (TRAINER_KERNELS=eager)"
        return None
    try:
        _lib = _load(build())
        _pcg64_in_c = pcg64_words_match(_lib)
        if not _pcg64_in_c:
            logger.info("the fused kernels' PCG64 differs from numpy %s: masks drawn by numpy", np.__version__)
        _status = "fused"
    except KernelBuildError as error:
        if chosen == "fused":  # raised on every call: never a silent fall-back
            raise KernelBuildError(f"TRAINER_KERNELS=fused, but the kernels failed to build: {error}") from error
        _status = f"eager ({error})"
        logger.warning("fused trainer kernels unavailable, using PyTorch's layers (slower): %s", error)
    return _lib


def status() -> str:
    """``fused``, or ``eager (<why>)``: which path training passes take in this process."""
    kernels()
    assert _status is not None
    return _status


def reset() -> None:
    """Forget the loaded kernels and the mode (tests; after changing ``TRAINER_KERNELS``)."""
    global _lib, _status, _pcg64_in_c
    _lib, _status, _pcg64_in_c = None, None, False


def usable(x: torch.Tensor) -> bool:
    """Whether a training pass on ``x`` can take the fused path (CPU, float32, 2-D, little-endian)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2 and _LITTLE_ENDIAN
            and kernels() is not None)


_local = threading.local()


def _scratch(count: int) -> torch.Tensor:
    """This thread's reusable buffer of ``count`` int64 words, for a mask the kernel reads at once.

    A fresh 64 KB tensor per draw cost more than drawing into it (allocation and first touch):
    ~45 us a step of two dropout layers, measured in place.
    """
    buffer = getattr(_local, "words", None)
    if buffer is None or buffer.numel() < count:
        buffer = _local.words = torch.empty(count, dtype=torch.int64)
    return buffer[:count]


def _mask_words(dropout: Optional[InvertedDropout], count: int) -> tuple[Optional[torch.Tensor], int, float]:
    """The dropout layer's next ``count`` 16-bit words: InvertedDropout.words, drawn in C where checked."""
    if dropout is None or dropout.drop_level == 0:
        return None, 0, 1.0
    bits = dropout.generator.bit_generator
    if _pcg64_in_c and type(bits) is np.random.PCG64:
        words = _scratch((count + 3) // 4)
        _lib.pcg64_fill(bits.ctypes.state_address, words.data_ptr(), words.numel())  # type: ignore[union-attr]
        return words, dropout.drop_level, float(dropout.scale)
    return torch.from_numpy(dropout.words(count)), dropout.drop_level, float(dropout.scale)


Layer = tuple[nn.Linear, Optional["BatchNorm"], Optional["InvertedDropout"]]


class _HiddenStack(torch.autograd.Function):
    """Consecutive hidden layers x -> Linear -> [batch norm] -> ReLU -> [dropout], as one autograd node.

    One node for the whole stack: a Python autograd node costs more than PyTorch's native ones,
    so it is paid once per pass, not once per layer. The matrix products are PyTorch's, called as
    its Linear layer calls them (``addmm`` / ``mm`` forward; ``gz W`` and ``gz^T x`` backward,
    bias ``sum(gz)``), so layers without batch norm are bit-identical to the eager modules; the
    rest is the C kernels. ``params`` holds each layer's weight, bias, gamma and beta (None where
    absent), so that autograd hands their gradients back.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layers: tuple[tuple[Optional[BatchNorm], Optional[InvertedDropout]], ...],  # type: ignore[override]
                *params: Optional[torch.Tensor]) -> torch.Tensor:
        lib = kernels()
        if lib is None:
            raise RuntimeError(f"the fused kernels are not in use here: {status()}")
        saved: list[torch.Tensor] = []
        scales: list[float] = []
        h = x
        for index, (bn, dropout) in enumerate(layers):
            weight, bias, gamma, beta = params[4 * index:4 * index + 4]
            assert weight is not None
            z = torch.mm(h, weight.t()) if bias is None else torch.addmm(bias, h, weight.t())
            n, c = z.shape
            words, level, scale = _mask_words(dropout, n * c)
            u = None if words is None else words.data_ptr()
            y = torch.empty_like(z)
            if bn is not None:
                assert gamma is not None and beta is not None
                stats = torch.empty(3 * c)
                buffers = bn._buffers
                lib.bn_relu_drop_fwd(z.data_ptr(), y.data_ptr(), n, c, gamma.data_ptr(), beta.data_ptr(),
                                     buffers["running_mean"].data_ptr(), buffers["running_var"].data_ptr(),  # type: ignore[union-attr]
                                     buffers["num_batches_tracked"].data_ptr(), bn.momentum, bn.eps, u, level,  # type: ignore[union-attr]
                                     scale, stats.data_ptr())
                saved += [h, weight, z, gamma, stats]
            else:
                lib.relu_drop_fwd(z.data_ptr(), y.data_ptr(), z.numel(), u, level, scale)
                saved += [h, weight]
            scales.append(scale)
            h = y
        saved.append(h)
        ctx.save_for_backward(*saved)
        ctx.layout = tuple((bn is not None, params[4 * i + 1] is not None) for i, (bn, _) in enumerate(layers))
        ctx.scales = scales
        return h

    @staticmethod
    @once_differentiable  # the kernels have no backward of their own: a double backward says so
    def backward(ctx, gy: torch.Tensor):  # type: ignore[override]
        lib = _lib
        assert lib is not None
        saved = list(ctx.saved_tensors)
        y = saved.pop()
        needs = ctx.needs_input_grad
        grads: list[Optional[torch.Tensor]] = [None] * (len(needs) - 2)
        g = gy.contiguous()
        for index in range(len(ctx.layout) - 1, -1, -1):
            norm, has_bias = ctx.layout[index]
            scale = ctx.scales[index]
            gz = torch.empty_like(y)
            if norm:
                h, weight, z, gamma, stats = saved[-5:]
                del saved[-5:]
                n, c = z.shape
                dgamma, dbeta = torch.empty(c), torch.empty(c)
                lib.bn_relu_drop_bwd(g.data_ptr(), z.data_ptr(), y.data_ptr(), n, c, gamma.data_ptr(),
                                     stats.data_ptr(), scale, gz.data_ptr(), dgamma.data_ptr(), dbeta.data_ptr())
                grads[4 * index + 2], grads[4 * index + 3] = dgamma, dbeta
            else:
                h, weight = saved[-2:]
                del saved[-2:]
                lib.relu_drop_bwd(g.data_ptr(), y.data_ptr(), y.numel(), scale, gz.data_ptr())
            if needs[2 + 4 * index]:
                grads[4 * index] = torch.mm(gz.t(), h)
            if has_bias and needs[3 + 4 * index]:
                grads[4 * index + 1] = gz.sum(0)
            if index > 0 or needs[0]:
                g = torch.mm(gz, weight)
            y = h
        return (g if needs[0] else None), None, *grads


def hidden_stack(x: torch.Tensor, layers: Sequence[Layer]) -> torch.Tensor:
    """Hidden layers ``dropout(relu(bn(linear(.))))`` one after another, in one autograd node.

    Each layer is (linear, bn or None, dropout or None). In training mode, on a tensor that
    :func:`usable` accepts. Updates each ``bn``'s running averages and draws each ``dropout``'s
    mask from its generator, as the eager layers would.
    """
    params: list[Optional[torch.Tensor]] = []
    for linear, bn, _ in layers:
        # the modules' own dicts: nn.Module.__getattr__ costs ~1 us a lookup, a noticeable share here
        weights = linear._parameters
        if bn is not None:
            bn.check_training_input(x)
            if bn.momentum is None or not math.isfinite(bn.momentum):
                raise ValueError(f"fused batch norm needs a numeric momentum, got {bn.momentum!r}")
            params += [weights["weight"], weights["bias"], bn._parameters["weight"], bn._parameters["bias"]]
        else:
            params += [weights["weight"], weights["bias"], None, None]
    return _HiddenStack.apply(x, tuple((bn, dropout) for _, bn, dropout in layers), *params)

