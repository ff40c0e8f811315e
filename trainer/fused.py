"""Fused CPU kernels for an MLP's hidden layers, Linear -> [batch norm] -> ReLU -> [dropout], and its output layer.

In eager PyTorch each of the bias, batch norm, ReLU and the dropout multiplication is its own
kernel (or pass) and its own autograd node, forward and backward; on the small tensors of an MLP
step (128 x 256) their fixed costs, not the arithmetic, made dropout + batch norm cost ~35-40 % of
a plain step. Here the hidden layers and the output layer after them are one autograd node
(:func:`hidden_stack`): PyTorch's matrix products (without the bias), then the C kernels of
``fused.c``, which add the bias and do batch norm, ReLU and the dropout mask in one pass forward,
and sum the bias gradient in the ReLU's backward pass. A plain 784-256-256-10 step is ~8 %
faster than on PyTorch's layers (200 paired blocks of 50 steps); with dropout, L2 and batch norm,
~24 %.

Two libraries, each compiled on first use and cached under :func:`cache_dir` by a hash of its
sources, flags, machine type (and PyTorch version), so an existing build needs no compiler:

- ``fused.c``, the kernels: plain C with no PyTorch headers, built by ``$CC`` (else ``cc``) in
  about half a second and loaded with ctypes (:func:`build`, :func:`kernels`);
- ``fused_node.cpp``, the stack's autograd node in C++ around the same kernels, built by ``$CXX``
  (else ``c++``) against PyTorch's headers in about 15 s and loaded as the operator
  ``torch.ops.sweeps_fused.hidden_stack`` (:func:`build_node`, :func:`node`). A Python autograd
  node costs ~85 us more per training step (two hidden layers), about 6 % of the step.

Processes that start together on one node (Ray workers) wait for one compile under a file lock.
Where a library cannot be built, training takes the next path (logged once, with the reason);
``TRAINER_KERNELS`` chooses:

- ``auto`` (default): the C++ node where it builds, else the kernels in a Python node
  (a failed C++ compile is remembered in the cache, so other processes do not retry it), else
  PyTorch's eager layers;
- ``fused``: both libraries are required: a build failure is an error;
- ``fused-python``: the kernels in the Python node, without building the C++ one;
- ``eager``: PyTorch's layers.

Which path a process takes is :func:`status` (recorded with each sweep's environment). What the
fused paths change and what they keep:

- The dropout masks are the same: the layer's own numpy PCG64 generator, advanced by the same
  words (:class:`trainer.model.InvertedDropout`), so a checkpoint's generator state resumes them.
- Both nodes run the same operations in the same order: they give identical results.
- The layers agree with the eager modules to float32 rounding: the bias is added to the finished
  product (``addmm`` adds it inside its accumulation), bias gradients are float sums of 16 rows
  added up in double (``fused.c``'s ``column_sums``), and batch norm sums in two passes of its own.
  So a run on a fused path and a run on the eager path drift apart over training like runs on two
  machines; each path is deterministic.
- Only CPU float32 training passes are fused; evaluation and other devices use PyTorch's layers,
  and so do other activations. A module with a hook runs by itself, so that the hook runs.

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

try:
    import fcntl
except ImportError:  # not POSIX: concurrent builds each compile (the rename still keeps them whole)
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from trainer.model import BatchNorm, InvertedDropout

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fused.c")
NODE_SOURCE = Path(__file__).with_name("fused_node.cpp")
FLAGS = ("-O3", "-fno-trapping-math", "-fno-math-errno", "-fPIC", "-shared")  # no -march=native: nodes differ
NODE_FLAGS = ("-std=c++20", *FLAGS)  # fused.c is compiled into the node's library with the same flags
MODES = ("auto", "fused", "fused-python", "eager")
Mode = Literal["auto", "fused", "fused-python", "eager"]
OPERATOR = "sweeps_fused::hidden_stack"  # fused_node.cpp's TORCH_LIBRARY
_CXX11_ABI = int(torch._C._GLIBCXX_USE_CXX11_ABI)  # the node must be compiled with PyTorch's C++ ABI

_LITTLE_ENDIAN = sys.byteorder == "little"  # the kernels read the mask words natively, numpy's as "<u2"
_P, _I64, _I32, _F32, _F64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float, ctypes.c_double
_SIGNATURES = {
    "bn_relu_drop_fwd": [_P, _P, _I64, _I64, _P, _P, _P, _P, _P, _F64, _F64, _P, _I32, _F32, _P],
    "bn_relu_drop_bwd": [_P, _P, _P, _I64, _I64, _P, _P, _F32, _P, _P, _P],
    "relu_drop_fwd": [_P, _P, _I64, _I64, _P, _P, _I32, _F32],
    "relu_drop_bwd": [_P, _P, _I64, _I64, _F32, _P, _P],
    "bias_add": [_P, _I64, _I64, _P],
    "column_sums": [_P, _I64, _I64, _P],
    "pcg64_fill": [_P, _P, _I64],
    "pcg64_available": [],
}


class KernelBuildError(RuntimeError):
    """The fused kernels could not be compiled or loaded."""


def mode() -> Mode:
    """``TRAINER_KERNELS``, checked: one of auto, fused, fused-python, eager."""
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


def _compiler(variable: str, default: str, language: str) -> str:
    name = os.environ.get(variable) or default
    path = shutil.which(name)
    if path is None:
        raise KernelBuildError(f"no {language} compiler: {name!r} (from ${variable}, default {default}) is not on PATH")
    return path


def _cached(directory: Path, name: str, key_parts: Sequence[bytes]) -> tuple[Path, Path]:
    """The library ``name-<hash>.so`` for these key parts and the machine type, and its ``.failed`` marker."""
    key = hashlib.sha256(b"\0".join([*key_parts, os.uname().machine.encode()])).hexdigest()[:16]
    return directory / f"{name}-{key}.so", directory / f"{name}-{key}.failed"


def _compile(directory: Path, name: str, key_parts: Sequence[bytes], command: Callable[[str], list[str]],
             timeout: float, remember_failure: bool = False) -> Path:
    """The cached library ``directory/name-<hash of key_parts>.so``, compiled by ``command(output)`` if absent.

    The compile holds an exclusive lock on ``directory/.name.lock`` (released by the OS if the
    process dies), so processes that start together wait for one compile instead of running one
    each; it writes a temporary file that is renamed into place (atomic), so nothing
    half-written is ever loaded. ``command`` resolves the compiler, so an existing build needs
    none. With ``remember_failure``, a compiler's error (a non-zero exit, not a signal or a time-out)
    is written to ``name-<hash>.failed`` and raised again by later calls without compiling (delete
    the file to retry).
    """
    target, failed = _cached(directory, name, key_parts)

    def done_before() -> bool:
        if remember_failure and failed.exists():
            raise KernelBuildError(f"{failed.read_text().strip()} (remembered in {failed}; delete it to retry)")
        return target.exists()

    if done_before():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = open(directory / f".{name}.lock", "a")
    except OSError as error:
        raise KernelBuildError(f"cannot write the kernel cache {directory}: {error}") from error
    with lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if done_before():  # by another process, while this one waited for the lock
            return target
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=directory)
            os.close(fd)
        except OSError as error:
            raise KernelBuildError(f"cannot write the kernel cache {directory}: {error}") from error
        try:
            argv = command(tmp)
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
            if result.returncode != 0:
                message = f"{argv[0]} failed on {name} (exit {result.returncode}): {result.stderr.strip()[-2000:]}"
                if remember_failure and result.returncode > 0:  # not a compiler killed by a signal (OOM)
                    failed.write_text(message + "\n")
                raise KernelBuildError(message)
            os.replace(tmp, target)
        except (OSError, subprocess.SubprocessError) as error:
            raise KernelBuildError(f"compiling {name} failed: {error}") from error
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    logger.info("compiled the fused trainer kernels: %s", target)
    return target


def build(directory: Path | None = None) -> Path:
    """Compile ``fused.c`` into ``directory`` (default :func:`cache_dir`) unless that build exists.

    The file name holds a hash of the source, the flags and the machine type, so a changed source
    builds anew, and an existing build needs no compiler (the container image ships one built at
    image build time).
    """
    def command(output: str) -> list[str]:
        return [_compiler("CC", "cc", "C"), *FLAGS, "-o", output, str(SOURCE), "-lm"]

    return _compile(cache_dir() if directory is None else directory, "fused", _kernel_key(), command, timeout=120)


def _kernel_key() -> list[bytes]:
    return [SOURCE.read_bytes(), " ".join(FLAGS).encode()]


def _node_key() -> list[bytes]:
    return [NODE_SOURCE.read_bytes(), SOURCE.read_bytes(), " ".join(NODE_FLAGS).encode(),
            f"{torch.__version__} {torch.version.git_version} abi={_CXX11_ABI} {Path(torch.__file__).parent}".encode()]


def build_node(directory: Path | None = None) -> Path:
    """Compile ``fused_node.cpp`` with ``fused.c`` against this PyTorch, unless that build exists.

    Like :func:`build`, keyed also by the PyTorch version and C++ ABI (its headers and
    libraries), with ``$CXX`` (default ``c++``); about 15 s on two cores. A compiler's error is
    remembered in the cache (see :func:`_compile`), so each new worker does not pay it again.
    """
    def command(output: str) -> list[str]:
        compiler = _compiler("CXX", "c++", "C++")
        from torch.utils.cpp_extension import include_paths, library_paths  # imports setuptools: only to build

        return [compiler, *NODE_FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={_CXX11_ABI}", *(f"-I{p}" for p in include_paths()),
                str(NODE_SOURCE), "-x", "c", str(SOURCE), "-x", "none", "-o", output,
                *(f"-L{p}" for p in library_paths()), *(f"-Wl,-rpath,{p}" for p in library_paths()), "-lc10", "-ltorch_cpu", "-ltorch", "-lm"]

    return _compile(cache_dir() if directory is None else directory, "fused_node", _node_key(), command,
                    timeout=600, remember_failure=True)


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

    In ``auto`` and ``fused-python`` mode a failed build is logged once (with its reason) and
    gives None; in ``fused`` mode it raises :class:`KernelBuildError`.
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


_operator: Optional[Callable[..., torch.Tensor]] = None  # once loaded, registered for the process's life
_node_why: Optional[str] = None  # "" : the C++ node is in use; else why not; None: not decided yet


def _registered_operator() -> Optional[Callable[..., torch.Tensor]]:
    try:
        return torch.ops.sweeps_fused.hidden_stack
    except (AttributeError, RuntimeError):
        return None


def node() -> Optional[Callable[..., torch.Tensor]]:
    """The C++ node's operator (``torch.ops.sweeps_fused.hidden_stack``), built and loaded on first call.

    None where the kernels run in the Python node instead: ``TRAINER_KERNELS=fused-python``, no
    kernels at all, or (``auto``) a failed build, logged once with its reason. In ``fused`` mode
    a failed build raises :class:`KernelBuildError`, on every call.
    """
    global _operator, _node_why
    if _node_why is not None:
        return _operator if _node_why == "" else None
    if kernels() is None:
        return None
    chosen = mode()
    if chosen == "fused-python":
        _node_why = "TRAINER_KERNELS=fused-python"
        return None
    try:
        if _operator is None:
            if _registered_operator() is None:
                path = build_node()
                try:
                    torch.ops.load_library(str(path))
                except (OSError, RuntimeError) as error:
                    raise KernelBuildError(f"cannot load {path}: {error}") from error
            _operator = _registered_operator()
            if _operator is None:
                raise KernelBuildError(f"the library did not register {OPERATOR}")
        _node_why = ""
    except KernelBuildError as error:
        if chosen == "fused":
            raise KernelBuildError(f"TRAINER_KERNELS=fused, but the C++ autograd node failed to build: {error}") from error
        _node_why = str(error)
        logger.warning("the fused kernels' C++ autograd node is unavailable, using a Python node "
                       "(~6%% slower training step): %s", error)
    return _operator if _node_why == "" else None


def built() -> bool:
    """Whether :func:`status` has nothing left to compile in this process (so it returns at once).

    True where the mode needs no library, where this process has decided its path, or where the
    cache holds the libraries the mode needs (or a remembered failure of the C++ one).
    """
    chosen = mode()
    if chosen == "eager" or (_status is not None and (_lib is None or _node_why is not None)):
        return True
    directory = cache_dir()
    if not _cached(directory, "fused", _kernel_key())[0].exists():
        return False
    if chosen == "fused-python" or _registered_operator() is not None:
        return True
    return any(path.exists() for path in _cached(directory, "fused_node", _node_key()))


def status() -> str:
    """Which path training passes take in this process.

    ``fused`` (the kernels in the C++ node), ``fused-python (<why>)`` (in the Python node) or
    ``eager (<why>)`` (PyTorch's layers).
    """
    if kernels() is None:
        assert _status is not None
        return _status
    node()
    return "fused" if _node_why == "" else f"fused-python ({_node_why})"


def reset() -> None:
    """Forget the loaded kernels and the mode (tests; after changing ``TRAINER_KERNELS``).

    A loaded C++ node stays registered (an operator cannot be unloaded): it is reused, not rebuilt.
    """
    global _lib, _status, _pcg64_in_c, _node_why
    _lib, _status, _pcg64_in_c, _node_why = None, None, False, None


def usable(x: torch.Tensor) -> bool:
    """Whether a training pass on ``x`` can take a fused path (CPU, float32, 2-D, little-endian)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2 and _LITTLE_ENDIAN
            and kernels() is not None)


_local = threading.local()


def _scratch(count: int, slot: int) -> torch.Tensor:
    """This thread's reusable buffer ``slot`` (a layer of the stack) of ``count`` int64 words.

    A mask's words are read by the forward pass only, so each layer's buffer is reused by the
    next step. A fresh 64 KB tensor per draw cost more than drawing into it (allocation and
    first touch): ~45 us a step of two dropout layers, measured in place.
    """
    buffers = getattr(_local, "words", None)
    if buffers is None:
        buffers = _local.words = {}
    buffer = buffers.get(slot)
    if buffer is None or buffer.numel() < count:
        buffer = buffers[slot] = torch.empty(count, dtype=torch.int64)
    return buffer[:count]


def _mask_words(dropout: Optional[InvertedDropout], count: int, slot: int) -> tuple[Optional[torch.Tensor], int, float]:
    """The dropout layer's next words for ``count`` elements, (count + 3) // 4 int64s holding 16 bits each.

    InvertedDropout.words, drawn in C into a reused buffer where that draw is checked.
    """
    if dropout is None or dropout.drop_level == 0:
        return None, 0, 1.0
    bits = dropout.generator.bit_generator
    if _pcg64_in_c and type(bits) is np.random.PCG64:
        words = _scratch((count + 3) // 4, slot)
        _lib.pcg64_fill(bits.ctypes.state_address, words.data_ptr(), words.numel())  # type: ignore[union-attr]
        return words, dropout.drop_level, float(dropout.scale)
    return torch.from_numpy(dropout.words(count).view("<i8")), dropout.drop_level, float(dropout.scale)


Layer = tuple[nn.Linear, Optional["BatchNorm"], Optional["InvertedDropout"]]


class _HiddenStack(torch.autograd.Function):
    """Consecutive hidden layers x -> Linear -> [batch norm] -> ReLU -> [dropout], as one Python autograd node,
    optionally closed by the output layer (a Linear with no activation).

    Where the C++ node (``fused_node.cpp``, the same operations in the same order) is not built.
    One node for the whole stack: a Python autograd node costs more than PyTorch's native ones,
    so it is paid once per pass, not once per layer. The matrix products are PyTorch's (``mm``
    forward; ``gz W`` and ``gz^T x`` backward); the bias, its gradient and the rest are the C
    kernels. ``params`` holds each layer's weight, bias, gamma and beta (None where
    absent), so that autograd hands their gradients back; ``layers`` holds each layer's batch norm,
    dropout and whether it has a ReLU (False: the output layer, last).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor,  # type: ignore[override]
                layers: tuple[tuple[Optional[BatchNorm], Optional[InvertedDropout], bool], ...],
                *params: Optional[torch.Tensor]) -> torch.Tensor:
        lib = kernels()
        if lib is None:
            raise RuntimeError(f"the fused kernels are not in use here: {status()}")
        saved: list[torch.Tensor] = []
        scales: list[float] = []
        h = x
        for index, (bn, dropout, relu) in enumerate(layers):
            weight, bias, gamma, beta = params[4 * index:4 * index + 4]
            assert weight is not None
            z = torch.mm(h, weight.t())  # the kernels add the bias
            n, c = z.shape
            b = None if bias is None else bias.data_ptr()
            if not relu:  # the output layer
                if b is not None:
                    lib.bias_add(z.data_ptr(), n, c, b)
                saved += [h, weight]
                scales.append(1.0)
                h = z
                continue
            words, level, scale = _mask_words(dropout, n * c, index)
            u = None if words is None else words.data_ptr()
            y = torch.empty_like(z) if bn is not None else z  # ReLU and mask in place where z is not kept
            if bn is not None:
                assert gamma is not None and beta is not None
                stats = torch.empty(3 * c)
                if b is not None:
                    lib.bias_add(z.data_ptr(), n, c, b)
                buffers = bn._buffers
                lib.bn_relu_drop_fwd(z.data_ptr(), y.data_ptr(), n, c, gamma.data_ptr(), beta.data_ptr(),
                                     buffers["running_mean"].data_ptr(), buffers["running_var"].data_ptr(),  # type: ignore[union-attr]
                                     buffers["num_batches_tracked"].data_ptr(), bn.momentum, bn.eps, u, level,  # type: ignore[union-attr]
                                     scale, stats.data_ptr())
                saved += [h, weight, z, gamma, stats]
            else:
                lib.relu_drop_fwd(z.data_ptr(), y.data_ptr(), n, c, b, u, level, scale)
                saved += [h, weight]
            scales.append(scale)
            h = y
        saved.append(h)
        ctx.save_for_backward(*saved)
        ctx.layout = tuple((bn is not None, params[4 * i + 1] is not None, relu)
                           for i, (bn, _, relu) in enumerate(layers))
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
        ours = False  # g made here (by a product below): the ReLU's backward may overwrite it
        for index in range(len(ctx.layout) - 1, -1, -1):
            norm, has_bias, relu = ctx.layout[index]
            scale = ctx.scales[index]
            n, c = g.shape
            dbias = torch.empty(c) if has_bias else None
            if not relu:  # the output layer: dL/dz is the incoming gradient
                h, weight = saved[-2:]
                del saved[-2:]
                gz = g
                if dbias is not None:
                    lib.column_sums(gz.data_ptr(), n, c, dbias.data_ptr())
            elif norm:
                gz = g if ours else torch.empty_like(y)
                h, weight, z, gamma, stats = saved[-5:]
                del saved[-5:]
                dgamma, dbeta = torch.empty(c), torch.empty(c)
                lib.bn_relu_drop_bwd(g.data_ptr(), z.data_ptr(), y.data_ptr(), n, c, gamma.data_ptr(),
                                     stats.data_ptr(), scale, gz.data_ptr(), dgamma.data_ptr(), dbeta.data_ptr())
                grads[4 * index + 2], grads[4 * index + 3] = dgamma, dbeta
                if dbias is not None:
                    lib.column_sums(gz.data_ptr(), n, c, dbias.data_ptr())
            else:
                gz = g if ours else torch.empty_like(y)  # in place on a gradient made here
                h, weight = saved[-2:]
                del saved[-2:]
                lib.relu_drop_bwd(g.data_ptr(), y.data_ptr(), n, c, scale, gz.data_ptr(),
                                  None if dbias is None else dbias.data_ptr())
            if needs[2 + 4 * index]:
                grads[4 * index] = torch.mm(gz.t(), h)
            if has_bias and needs[3 + 4 * index]:
                grads[4 * index + 1] = dbias
            if index > 0 or needs[0]:
                g = torch.mm(gz, weight)
                ours = True
            y = h
        return (g if needs[0] else None), None, *grads


def _layer_parameters(x: torch.Tensor, linear: nn.Linear, bn: Optional[BatchNorm]) -> list[Optional[torch.Tensor]]:
    """A layer's weight, bias, gamma and beta (None where absent), after batch norm's checks."""
    # the modules' own dicts: nn.Module.__getattr__ costs ~1 us a lookup, a noticeable share here
    weights = linear._parameters
    if bn is None:
        return [weights["weight"], weights["bias"], None, None]
    bn.check_training_input(x)
    if bn.momentum is None or not math.isfinite(bn.momentum):
        raise ValueError(f"fused batch norm needs a numeric momentum, got {bn.momentum!r}")
    return [weights["weight"], weights["bias"], bn._parameters["weight"], bn._parameters["bias"]]


def _native_stack(operator: Callable[..., torch.Tensor], x: torch.Tensor, layers: Sequence[Layer],
                  output: Optional[nn.Linear]) -> torch.Tensor:
    """The stack through the C++ node: its arguments as ``fused_node.cpp`` lays them out."""
    params: list[torch.Tensor] = []
    buffers: list[torch.Tensor] = []
    words: list[torch.Tensor] = []
    layout: list[int] = []
    scalars: list[float] = []
    n = x.shape[0]
    for slot, (linear, bn, dropout) in enumerate(layers):
        weight, bias, gamma, beta = _layer_parameters(x, linear, bn)
        assert weight is not None
        params.append(weight)
        if bias is not None:
            params.append(bias)
        momentum = eps = 0.0
        if bn is not None:
            assert gamma is not None and beta is not None
            params += [gamma, beta]
            stored = bn._buffers
            buffers += [stored["running_mean"], stored["running_var"], stored["num_batches_tracked"]]  # type: ignore[list-item]
            momentum, eps = float(bn.momentum), float(bn.eps)  # type: ignore[arg-type]
        mask, level, scale = _mask_words(dropout, n * weight.shape[0], slot)
        if mask is not None:
            words.append(mask)
        layout += [bias is not None, bn is not None, True, level]
        scalars += [scale, momentum, eps]
    if output is not None:
        weight, bias, _, _ = _layer_parameters(x, output, None)
        assert weight is not None
        params += [weight] if bias is None else [weight, bias]
        layout += [bias is not None, False, False, 0]
        scalars += [1.0, 0.0, 0.0]
    return operator(x, params, buffers, words, layout, scalars)


def hidden_stack(x: torch.Tensor, layers: Sequence[Layer], output: Optional[nn.Linear] = None) -> torch.Tensor:
    """Hidden layers ``dropout(relu(bn(linear(.))))`` one after another, then ``output``, in one autograd node.

    Each layer is (linear, bn or None, dropout or None); ``output`` is a Linear applied last with no
    activation (the model's output layer), or None. In training mode, on a tensor that
    :func:`usable` accepts. Updates each ``bn``'s running averages and draws each ``dropout``'s
    mask from its generator, as the eager layers would. The node is the C++ one where
    :func:`node` has it, else the Python one: the same numbers either way.
    """
    operator = node()
    if operator is not None:
        return _native_stack(operator, x, layers, output)
    params = [p for linear, bn, _ in layers for p in _layer_parameters(x, linear, bn)]
    flags = [(bn, dropout, True) for _, bn, dropout in layers]
    if output is not None:
        params += _layer_parameters(x, output, None)
        flags.append((None, None, False))
    return _HiddenStack.apply(x, tuple(flags), *params)
