"""Fused CPU kernels for a hidden layer's tail: batch norm -> ReLU -> dropout, and ReLU -> dropout.

In eager PyTorch each of batch norm, ReLU and the dropout multiplication is its own kernel and its
own autograd node, forward and backward; on the small tensors of an MLP step (128 x 256) their
fixed costs, not the arithmetic, make dropout + batch norm cost ~30 % of a plain step. The kernels
in ``fused.c`` do the whole tail in one pass forward and two backward, under one autograd node.

They are plain C with no PyTorch headers: compiled by the system C compiler (``$CC``, else ``cc``)
in about half a second on first use, cached under :func:`cache_dir` by a hash of the source and
the flags, and loaded with ctypes. Where there is no compiler, or it fails,
the trainer runs the eager PyTorch layers instead (logged once); ``TRAINER_KERNELS`` chooses:

- ``auto`` (default): fused where the kernels build, eager otherwise;
- ``fused``: the kernels are required: a build failure is an error;
- ``eager``: never use them.

What the fused path changes and what it keeps:

- The dropout masks are the same: the layer's own numpy generator draws the same words
  (:class:`trainer.model.InvertedDropout`), so a checkpoint's generator state still resumes them.
- ReLU -> dropout gives bit-identical results to the eager layers.
- Batch norm agrees with ``torch.batch_norm`` to float32 rounding (its own two-pass sums), so a
  run on the fused path and a run on the eager path drift apart over training like runs on two
  machines; each path is deterministic. The path a sweep used is recorded with its environment.
- Only CPU float32 training passes are fused; evaluation and other devices use PyTorch's layers.

Example:
    >>> import torch
    >>> from trainer.fused import relu_dropout
    >>> h = torch.tensor([[-1.0, 2.0]], requires_grad=True)
    >>> relu_dropout(h, None).tolist()  # no dropout layer: just the ReLU
    [[0.0, 2.0]]
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
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import numpy as np
import torch

if TYPE_CHECKING:
    from trainer.model import BatchNorm, InvertedDropout

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fused.c")
FLAGS = ("-O3", "-fno-trapping-math", "-fno-math-errno", "-fPIC", "-shared")  # no -march=native: nodes differ
MODES = ("auto", "fused", "eager")
Mode = Literal["auto", "fused", "eager"]

_MASK_WORDS = np.dtype("<u2")
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


def _mask_words(dropout: Optional[InvertedDropout], count: int) -> tuple[Optional[torch.Tensor], int, float]:
    """The dropout layer's next ``count`` 16-bit words (the same draw as InvertedDropout.mask)."""
    if dropout is None or dropout.drop_level == 0:
        return None, 0, 1.0
    bits = dropout.generator.bit_generator
    if _pcg64_in_c and type(bits) is np.random.PCG64:
        words = torch.empty((count + 3) // 4, dtype=torch.int64)
        _lib.pcg64_fill(bits.ctypes.state_address, words.data_ptr(), words.numel())  # type: ignore[union-attr]
        return words, dropout.drop_level, float(dropout.scale)
    raw = bits.random_raw((count + 3) // 4).astype("<u8", copy=False)
    return torch.from_numpy(raw.view(_MASK_WORDS)), dropout.drop_level, float(dropout.scale)


class _BatchNormReLUDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,  # type: ignore[override]
                bn: BatchNorm, dropout: Optional[InvertedDropout]) -> torch.Tensor:
        lib = kernels()
        assert lib is not None
        z = z.contiguous()
        n, c = z.shape
        words, level, scale = _mask_words(dropout, n * c)
        y = torch.empty_like(z)
        stats = torch.empty(3 * c)
        lib.bn_relu_drop_fwd(z.data_ptr(), y.data_ptr(), n, c, gamma.data_ptr(), beta.data_ptr(),
                             bn.running_mean.data_ptr(), bn.running_var.data_ptr(),
                             bn.num_batches_tracked.data_ptr(), bn.momentum, bn.eps,
                             None if words is None else words.data_ptr(), level, scale, stats.data_ptr())
        ctx.save_for_backward(z, y, gamma, stats)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):  # type: ignore[override]
        z, y, gamma, stats = ctx.saved_tensors
        gy = gy.contiguous()
        n, c = z.shape
        gz = torch.empty_like(z)
        dgamma, dbeta = torch.empty(c), torch.empty(c)
        kernels().bn_relu_drop_bwd(gy.data_ptr(), z.data_ptr(), y.data_ptr(), n, c, gamma.data_ptr(),
                                   stats.data_ptr(), ctx.scale, gz.data_ptr(), dgamma.data_ptr(), dbeta.data_ptr())
        return gz, dgamma, dbeta, None, None


class _ReLUDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, dropout: Optional[InvertedDropout]) -> torch.Tensor:  # type: ignore[override]
        lib = kernels()
        assert lib is not None
        h = h.contiguous()
        words, level, scale = _mask_words(dropout, h.numel())
        if words is None:
            y = torch.relu(h)
        else:
            y = torch.empty_like(h)
            lib.relu_drop_fwd(h.data_ptr(), y.data_ptr(), h.numel(), words.data_ptr(), level, scale)
        ctx.save_for_backward(y)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        gy = gy.contiguous()
        gh = torch.empty_like(y)
        kernels().relu_drop_bwd(gy.data_ptr(), y.data_ptr(), y.numel(), ctx.scale, gh.data_ptr())
        return gh, None


def batchnorm_relu_dropout(z: torch.Tensor, bn: BatchNorm, dropout: Optional[InvertedDropout]) -> torch.Tensor:
    """dropout(relu(bn(z))) in training mode, in one autograd node (``dropout`` None: no dropout).

    Needs :func:`usable` (z) and a batch of at least 2; updates ``bn``'s running averages and
    draws ``dropout``'s mask from its generator, as the three eager layers would.
    """
    if z.shape[0] < 2:
        raise ValueError(f"batch norm in training needs a (batch >= 2, features) input, got shape {tuple(z.shape)}")
    if bn.momentum is None or not math.isfinite(bn.momentum):
        raise ValueError(f"fused batch norm needs a numeric momentum, got {bn.momentum!r}")
    return _BatchNormReLUDropout.apply(z, bn.weight, bn.bias, bn, dropout)


def relu_dropout(h: torch.Tensor, dropout: Optional[InvertedDropout]) -> torch.Tensor:
    """dropout(relu(h)) in training mode, in one autograd node; bit-identical to the eager layers."""
    return _ReLUDropout.apply(h, dropout)
