"""trainer/fused: the fused batch norm -> ReLU -> dropout kernels against PyTorch's eager layers, and their build."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import tiny
from trainer import MLPConfig, embed, train
from trainer import fused
from trainer.model import MLP, BatchNorm, InvertedDropout, build_mlp

needs_compiler = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("c++") is None,
                                    reason="no C and C++ compilers (cc, c++) on this machine")


def _script_compiler(tmp_path: Path, name: str, then: str) -> tuple[Path, Path]:
    """An executable ``tmp_path/name`` that appends a line to ``tmp_path/compiles`` per run, then runs ``then``."""
    log, compiler = tmp_path / "compiles", tmp_path / name
    compiler.write_text(f"#!/bin/sh\necho run >> {log}\n{then}\n")
    compiler.chmod(0o755)
    return compiler, log


def _layer(norm: bool, dropout: float, seed: int = 3) -> tuple[nn.Module, ...]:
    """Linear -> [BatchNorm] -> ReLU -> [InvertedDropout], as build_mlp makes them (no bias before batch norm)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(5, 6, bias=not norm)]
    if norm:
        bn = BatchNorm(6, momentum=0.3)
        with torch.no_grad():
            bn.weight.copy_(torch.linspace(0.5, 1.5, 6))
            bn.bias.copy_(torch.linspace(-0.2, 0.3, 6))
        layers.append(bn)
    layers.append(nn.ReLU())
    if dropout:
        layers.append(InvertedDropout(dropout, np.random.Generator(np.random.PCG64(seed))))
    return tuple(layers)


def _run(model: nn.Module, x: torch.Tensor, gy: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    for p in model.parameters():
        p.grad = None
    y = model(x)
    y.backward(gy)
    return y.detach(), [x.grad, *(p.grad for p in model.parameters())]


@needs_compiler
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_batchnorm_layer_matches_the_eager_layers(dropout: float) -> None:
    g = torch.Generator().manual_seed(0)
    x, gy = 2 + 3 * torch.randn(32, 5, generator=g), torch.randn(32, 6, generator=g)
    layers = _layer(norm=True, dropout=dropout)
    eager, ours = nn.Sequential(*copy.deepcopy(layers)), MLP(*copy.deepcopy(layers))
    assert [run for _, run, _ in ours._plan()] == [tuple(ours)]  # one fused step
    for _ in range(3):  # running averages and mask streams over several steps
        y_eager, grads_eager = _run(eager, x, gy)
        y_ours, grads_ours = _run(ours, x, gy)
        assert torch.allclose(y_ours, y_eager, atol=1e-6, rtol=1e-5)
        assert ((y_ours == 0) == (y_eager == 0)).all()  # the same units dropped or cut by the ReLU
        assert len(grads_ours) == 4  # input, weight, gamma, beta
        for a, b in zip(grads_ours, grads_eager):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    for name in ("running_mean", "running_var"):
        assert torch.allclose(getattr(ours[1], name), getattr(eager[1], name), atol=1e-6, rtol=1e-5)
    assert int(ours[1].num_batches_tracked) == int(eager[1].num_batches_tracked) == 3
    if dropout:  # the same words drawn: the generators stand at the same state
        assert ours[3].generator.bit_generator.state == eager[3].generator.bit_generator.state


@needs_compiler
def test_a_stack_of_layers_matches_the_eager_layers() -> None:
    """Three hidden layers (batch norm and dropout) in one node: gradients of every parameter."""
    torch.manual_seed(4)
    config = MLPConfig(hidden_sizes=(12, 10, 8), norm="batchnorm", dropout=0.25, seed=4)
    ours = build_mlp(config, n_features=5, n_outputs=3)
    assert [(len(layers), output) for layers, _, output in ours._plan()] == [(3, ours[-1])]  # with the output layer
    eager = nn.Sequential(*copy.deepcopy(list(ours)))
    x, gy = torch.randn(40, 5), torch.randn(40, 3)
    for _ in range(2):
        y_eager, grads_eager = _run(eager, x, gy)
        y_ours, grads_ours = _run(ours, x, gy)
        assert torch.allclose(y_ours, y_eager, atol=1e-5, rtol=1e-4)
        assert len(grads_ours) == len(grads_eager) == 1 + len(list(ours.parameters()))
        for a, b in zip(grads_ours, grads_eager):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@needs_compiler
def test_dropout_layer_matches_the_eager_layers() -> None:
    """The bias added in the ReLU's pass and its gradient summed there: float32 rounding apart, the same."""
    g = torch.Generator().manual_seed(2)
    x, gy = torch.randn(64, 5, generator=g), torch.randn(64, 6, generator=g)
    layers = _layer(norm=False, dropout=0.4)
    eager, ours = nn.Sequential(*copy.deepcopy(layers)), MLP(*copy.deepcopy(layers))
    assert [run for _, run, _ in ours._plan()] == [tuple(ours)]
    for _ in range(2):
        y_eager, grads_eager = _run(eager, x, gy)
        y_ours, grads_ours = _run(ours, x, gy)
        assert torch.allclose(y_ours, y_eager, atol=1e-6, rtol=1e-6)
        assert ((y_ours == 0) == (y_eager == 0)).all()  # the same units dropped or cut by the ReLU
        assert len(grads_ours) == 3  # input, weight, bias
        for a, b in zip(grads_ours, grads_eager):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


@needs_compiler
def test_the_output_layer_in_the_node_matches_the_eager_layers() -> None:
    """ReLU layers with the output layer in one node: outputs (negative ones too) and every gradient."""
    torch.manual_seed(8)
    ours = build_mlp(MLPConfig(hidden_sizes=(12, 10), dropout=0.2, seed=8), n_features=5, n_outputs=4)
    eager = nn.Sequential(*copy.deepcopy(list(ours)))
    assert [(len(layers), output) for layers, _, output in ours._plan()] == [(2, ours[-1])]
    x, gy = torch.randn(40, 5), torch.randn(40, 4)
    for _ in range(2):
        y_eager, grads_eager = _run(eager, x, gy)
        y_ours, grads_ours = _run(ours, x, gy)
        assert (y_ours < 0).any()  # no ReLU on the output layer
        assert torch.allclose(y_ours, y_eager, atol=1e-6, rtol=1e-5)
        assert len(grads_ours) == len(grads_eager) == 1 + len(list(ours.parameters()))
        for a, b in zip(grads_ours, grads_eager):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


@needs_compiler
@pytest.mark.parametrize("rows", [1, 15, 16, 17, 128, 100_003])
def test_bias_gradients_are_sums_of_the_rows(rows: int) -> None:
    """column_sums and relu_drop_bwd's bias sums: float sums of 16 rows, added in double, for any batch."""
    lib = fused.kernels()
    g = torch.Generator().manual_seed(rows)
    gy = torch.randn(rows, 7, generator=g) + 3  # an offset: a long float sum would drift from the exact one
    y = torch.randn(rows, 7, generator=g).relu()  # where the ReLU passed
    exact = gy.double().sum(0)
    out = torch.empty(7)
    lib.column_sums(gy.data_ptr(), rows, 7, out.data_ptr())
    assert torch.allclose(out.double(), exact, rtol=1e-6, atol=1e-5)
    gh, dbias = torch.empty(rows, 7), torch.empty(7)
    lib.relu_drop_bwd(gy.data_ptr(), y.data_ptr(), rows, 7, 2.0, gh.data_ptr(), dbias.data_ptr())
    assert torch.equal(gh, torch.where(y > 0, gy * 2.0, torch.zeros(())))
    assert torch.allclose(dbias.double(), gh.double().sum(0), rtol=1e-6, atol=1e-5)


@needs_compiler
def test_masks_drawn_by_numpy_where_the_c_draw_is_not_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fall-back when pcg64_fill disagrees with this numpy: InvertedDropout.words, the same layer."""
    g = torch.Generator().manual_seed(5)
    x, gy = torch.randn(16, 5, generator=g), torch.randn(16, 6, generator=g)
    layers = _layer(norm=False, dropout=0.4)
    in_c, by_numpy = MLP(*copy.deepcopy(layers)), MLP(*copy.deepcopy(layers))
    fused.kernels()
    y_c, grads_c = _run(in_c, x, gy)
    monkeypatch.setattr(fused, "_pcg64_in_c", False)
    y_numpy, grads_numpy = _run(by_numpy, x, gy)
    assert torch.equal(y_c, y_numpy)
    assert all(torch.equal(a, b) for a, b in zip(grads_c, grads_numpy))
    assert in_c[2].generator.bit_generator.state == by_numpy[2].generator.bit_generator.state


@needs_compiler
def test_a_nan_stays_visible() -> None:
    """The kernels' ReLU passes NaN on, as PyTorch's does: a diverged layer is not silently zeroed."""
    layers = _layer(norm=False, dropout=0.4)
    ours = MLP(*copy.deepcopy(layers))
    with torch.no_grad():
        ours[0].weight[0, 0] = float("nan")
    y = ours(torch.ones(8, 5))
    eager = nn.Sequential(*copy.deepcopy(layers))
    with torch.no_grad():
        eager[0].weight[0, 0] = float("nan")
    assert torch.equal(y.isnan(), eager(torch.ones(8, 5)).isnan()) and y.isnan().any()


@needs_compiler
def test_the_plan_fuses_relu_layers_with_the_output_layer() -> None:
    model = build_mlp(MLPConfig(hidden_sizes=(8, 8)), n_features=4, n_outputs=2)
    assert [(len(layers), len(run), output) for layers, run, output in model._plan()] == [(2, 5, model[4])]
    model = build_mlp(MLPConfig(hidden_sizes=(8,), activation="tanh"), n_features=4, n_outputs=2)
    assert all(layers == [] and len(run) == 1 and output is None for layers, run, output in model._plan())
    model = build_mlp(MLPConfig(hidden_sizes=(8, 8, 8), norm="batchnorm"), n_features=4, n_outputs=2)
    assert [(len(layers), len(run)) for layers, run, _ in model._plan()] == [(3, 10)]  # one stack
    model = build_mlp(MLPConfig(hidden_sizes=(8, 8), residual=True, dropout=0.1), n_features=4, n_outputs=2)
    # the residual block fuses inside; the output layer after it runs by itself
    assert [(len(run), output) for _, run, output in model._plan()] == [(3, None), (1, None), (1, None)]
    assert [len(run) for _, run, _ in model[3].block._plan()] == [3]
    assert [len(run) for _, run, _ in model[:-1]._plan()] == [3, 1]  # a slice has no output layer


@needs_compiler
def test_a_hooked_module_runs_by_itself(kernels_mode: pytest.MonkeyPatch) -> None:
    """A hook runs where its module is called: a hooked stack runs module by module, the same numbers."""
    model = build_mlp(MLPConfig(hidden_sizes=(8,), dropout=0.3), n_features=4, n_outputs=2)
    hooked = copy.deepcopy(model)
    kept: list[torch.Tensor] = []
    hooked[0].register_forward_hook(lambda module, inputs, output: kept.append(output))
    x, gy = torch.randn(16, 4), torch.randn(16, 2)
    y, grads = _run(model, x, gy)
    y_hooked, grads_hooked = _run(hooked, x, gy)
    assert len(kept) == 1 and torch.equal(kept[0], torch.nn.functional.linear(x, model[0].weight, model[0].bias))
    # module by module: PyTorch's layers, which agree with the node to float32 rounding
    assert torch.allclose(y, y_hooked, atol=1e-6) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, grads_hooked))
    kept.clear()
    hooked[0]._forward_hooks.clear()
    assert torch.equal(_run(hooked, x, gy)[0], _run(model, x, gy)[0]) and not kept  # fused again, unhooked


@needs_compiler
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_training_agrees_with_the_eager_path(kernels_mode: pytest.MonkeyPatch, dropout: float) -> None:
    """Plain and dropout layers (and the output layer) in the node: the eager path's run, to float32 rounding."""
    data = tiny(n=96)
    config = MLPConfig(hidden_sizes=(16, 16), dropout=dropout, epochs=3, batch_size=16)
    assert fused.status() == "fused"
    on = train(config, data, threads=1)
    kernels_mode.setenv("TRAINER_KERNELS", "eager")
    fused.reset()
    assert fused.status().startswith("eager")
    off = train(config, data, threads=1)
    for a, b in zip(on.history, off.history):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-5)
    for a, b in zip(on.model.state_dict().values(), off.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@needs_compiler
def test_training_with_batchnorm_agrees_with_the_eager_path(kernels_mode: pytest.MonkeyPatch) -> None:
    data = tiny(n=96)
    config = MLPConfig(hidden_sizes=(16, 16), norm="batchnorm", dropout=0.2, epochs=2, batch_size=16)
    on = train(config, data, threads=1)
    kernels_mode.setenv("TRAINER_KERNELS", "eager")
    fused.reset()
    off = train(config, data, threads=1)
    for a, b in zip(on.history, off.history):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-4)


@needs_compiler
@pytest.mark.parametrize("count", [0, 1, 3, 4, 7, 8192, 8195])
def test_the_c_pcg64_draws_numpys_words(count: int) -> None:
    """pcg64_fill continues a numpy PCG64 exactly: the same words, and numpy continues from its state."""
    lib = fused.kernels()
    assert fused.pcg64_words_match(lib)
    ours, theirs = (np.random.Generator(np.random.PCG64(np.random.SeedSequence([7, count]))) for _ in range(2))
    ours.random(3), theirs.random(3)  # mid-stream, after draws of its own
    words = np.empty(count, dtype=np.uint64)
    lib.pcg64_fill(ours.bit_generator.ctypes.state_address, words.ctypes.data, count)
    assert np.array_equal(words, theirs.bit_generator.random_raw(count))
    assert ours.bit_generator.state == theirs.bit_generator.state
    assert ours.random() == theirs.random()


@needs_compiler
def test_eval_and_slices_run_the_layers_themselves() -> None:
    """A slice such as model[:-1] is a new container in training mode; its layers decide."""
    model = build_mlp(MLPConfig(hidden_sizes=(8,), norm="batchnorm", dropout=0.5), n_features=4, n_outputs=2)
    x = torch.randn(10, 4)
    model.eval()
    assert torch.equal(model[:-1](x), embed(model, x))
    assert torch.equal(model[:-1](x), model[1:3](model[0](x)))  # no dropout, running statistics


@needs_compiler
def test_the_build_is_cached(tmp_path: Path) -> None:
    first = fused.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert fused.build(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fused.lock", first.name]  # no temporary files left


@needs_compiler
def test_concurrent_builds_compile_once(tmp_path: Path) -> None:
    """Ray workers starting together on one node: one compiles, the others wait for its library."""
    compiler, log = _script_compiler(tmp_path, "counting-cc", 'sleep 1\nexec cc "$@"')
    cache = tmp_path / "cache"
    code = "import sys; from pathlib import Path; from trainer import fused; print(fused.build(Path(sys.argv[1])))"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(cache)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "CC": str(compiler)}) for _ in range(3)]
    outputs = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert log.read_text().split() == ["run"]  # compiled once
    library = Path(outputs.pop())
    assert not outputs and sorted(p.name for p in cache.iterdir()) == [".fused.lock", library.name]
    assert fused.pcg64_words_match(fused._load(library))  # loads, and works


@needs_compiler
def test_an_existing_build_needs_no_compiler(kernels_mode: pytest.MonkeyPatch, tmp_path: Path) -> None:
    built = fused.build(tmp_path)
    kernels_mode.setenv("CC", "no-such-compiler")
    kernels_mode.setenv("TRAINER_KERNEL_CACHE", str(tmp_path))
    assert fused.build() == built and fused.status() == "fused"


def test_without_a_compiler_auto_falls_back_and_says_why(
    kernels_mode: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kernels_mode.setenv("CC", "no-such-compiler")
    kernels_mode.setenv("TRAINER_KERNEL_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="trainer.fused"):
        assert fused.kernels() is None
    assert "no-such-compiler" in fused.status() and fused.status().startswith("eager")
    assert "no-such-compiler" in caplog.text
    result = train(MLPConfig(hidden_sizes=(8,), norm="batchnorm", dropout=0.2, epochs=1), tiny(), threads=1)
    assert result.history[0].train_loss > 0  # trained on PyTorch's layers


def test_fused_mode_refuses_to_fall_back(kernels_mode: pytest.MonkeyPatch, tmp_path: Path) -> None:
    kernels_mode.setenv("TRAINER_KERNELS", "fused")
    kernels_mode.setenv("CC", "no-such-compiler")
    kernels_mode.setenv("TRAINER_KERNEL_CACHE", str(tmp_path))
    for _ in range(2):  # every call, not only the first
        with pytest.raises(fused.KernelBuildError, match="TRAINER_KERNELS=fused.*no-such-compiler"):
            fused.kernels()


def test_a_failing_compile_is_reported(kernels_mode: pytest.MonkeyPatch, tmp_path: Path) -> None:
    compiler, _ = _script_compiler(tmp_path, "broken-cc", "echo 'broken-cc: internal error' >&2\nexit 3")
    kernels_mode.setenv("CC", str(compiler))
    with pytest.raises(fused.KernelBuildError, match=r"exit 3\).*internal error"):
        fused.build(tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".fused.lock"]  # nothing half-written left behind


@needs_compiler
def test_built_says_whether_status_would_compile(kernels_mode: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI asks before a sweep, to say that it is compiling (the C++ node takes ~20 s)."""
    kernels_mode.setenv("TRAINER_KERNEL_CACHE", str(tmp_path))
    kernels_mode.setenv("TRAINER_KERNELS", "fused-python")
    assert not fused.built()  # an empty cache
    fused.build()
    assert fused.built()  # the kernels are all fused-python needs
    kernels_mode.setenv("TRAINER_KERNELS", "auto")
    assert fused.built() == (fused._registered_operator() is not None)  # a loaded node needs no build
    kernels_mode.setattr(fused, "_registered_operator", lambda: None)
    assert not fused.built()  # the node's library is missing from this cache
    fused._cached(tmp_path, "fused_node", fused._node_key())[1].write_text("c++ failed\n")
    assert fused.built()  # a remembered failure: status() falls back at once
    kernels_mode.setenv("TRAINER_KERNELS", "eager")
    kernels_mode.setenv("TRAINER_KERNEL_CACHE", str(tmp_path / "empty"))
    assert fused.built()


def test_a_compiler_killed_by_a_signal_is_not_remembered(tmp_path: Path) -> None:
    """An out-of-memory kill says nothing about the source: the next process tries again."""
    compiler, log = _script_compiler(tmp_path, "killed-cxx", "kill -9 $$")
    for _ in range(2):
        with pytest.raises(fused.KernelBuildError, match="exit -9"):
            fused._compile(tmp_path / "cache", "fused_node", [b"key"], lambda out: [str(compiler), "-o", out],
                           timeout=60, remember_failure=True)
    assert log.read_text().split() == ["run", "run"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".fused_node.lock"]


def test_a_bad_mode_names_the_variable(kernels_mode: pytest.MonkeyPatch) -> None:
    kernels_mode.setenv("TRAINER_KERNELS", "fast")
    with pytest.raises(ValueError, match="TRAINER_KERNELS='fast': must be one of auto, fused, fused-python, eager"):
        fused.kernels()


@needs_compiler
def test_this_machine_builds_the_kernels() -> None:
    """Where compilers exist, auto mode must end up fused in the C++ node (a silent fall-back would hide a broken build)."""
    assert fused.status() == "fused" and fused.node() is not None


def _on_node(kernels_mode: pytest.MonkeyPatch, chosen: str) -> None:
    kernels_mode.setenv("TRAINER_KERNELS", chosen)
    fused.reset()
    assert fused.status() == ("fused" if chosen == "auto" else f"fused-python (TRAINER_KERNELS={chosen})")


@needs_compiler
@pytest.mark.parametrize(("norm", "dropout", "sizes"), [
    ("batchnorm", 0.3, (12, 10, 8)),  # bias-less layers, batch norm and dropout: every argument kind
    ("none", 0.4, (12, 10)),
    ("batchnorm", 0.0, (12,)),
    ("none", 0.0, (12, 10)),  # plain ReLU layers
])
def test_the_cpp_node_is_bit_identical_to_the_python_node(
    kernels_mode: pytest.MonkeyPatch, norm: str, dropout: float, sizes: tuple[int, ...]
) -> None:
    """The same operations in the same order: outputs, every gradient, running statistics, mask streams."""
    torch.manual_seed(6)
    in_cpp = build_mlp(MLPConfig(hidden_sizes=sizes, norm=norm, dropout=dropout, seed=6), n_features=5, n_outputs=3)
    in_python = copy.deepcopy(in_cpp)
    assert [(len(layers), output) for layers, _, output in in_cpp._plan()] == [(len(sizes), in_cpp[-1])]
    g = torch.Generator().manual_seed(6)
    x, gy = torch.randn(24, 5, generator=g), torch.randn(24, 3, generator=g)
    runs = []
    for model, chosen in ((in_cpp, "auto"), (in_python, "fused-python")):
        _on_node(kernels_mode, chosen)
        runs.append([_run(model, x, gy) for _ in range(3)])
    for (y_cpp, grads_cpp), (y_python, grads_python) in zip(*runs):
        assert torch.equal(y_cpp, y_python)
        assert len(grads_cpp) == 1 + len(list(in_cpp.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(grads_cpp, grads_python))
    for a, b in zip(in_cpp.state_dict().values(), in_python.state_dict().values()):
        assert torch.equal(a, b)
    drops = [(a, b) for a, b in zip(in_cpp.modules(), in_python.modules()) if isinstance(a, InvertedDropout)]
    assert len(drops) == (len(sizes) if dropout else 0)
    assert all(a.generator.bit_generator.state == b.generator.bit_generator.state for a, b in drops)


@needs_compiler
def test_training_is_bit_identical_on_both_nodes(kernels_mode: pytest.MonkeyPatch) -> None:
    data = tiny(n=96)
    config = MLPConfig(hidden_sizes=(16, 16), norm="batchnorm", dropout=0.2, epochs=2, batch_size=16)
    _on_node(kernels_mode, "auto")
    in_cpp = train(config, data, threads=1)
    _on_node(kernels_mode, "fused-python")
    in_python = train(config, data, threads=1)
    assert [(m.train_loss, m.val_loss) for m in in_cpp.history] == [(m.train_loss, m.val_loss) for m in in_python.history]
    for a, b in zip(in_cpp.model.state_dict().values(), in_python.model.state_dict().values()):
        assert torch.equal(a, b)


@needs_compiler
def test_the_cpp_node_refuses_a_double_backward() -> None:
    model = MLP(*_layer(norm=True, dropout=0.3))
    assert fused.node() is not None
    x = torch.randn(8, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(model(x).square().sum(), x, create_graph=True)
    (gx,) = torch.autograd.grad(model(x).square().sum(), x)  # a first-order gradient is fine
    assert gx.shape == x.shape


@needs_compiler
def test_the_operator_checks_its_arguments() -> None:
    operator = fused.node()
    assert operator is not None
    x, w = torch.randn(2, 3), torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="four entries per layer and scalars three"):
        operator(x, [w], [], [], [0, 0, 1], [1.0, 0.0, 0.0])
    with pytest.raises(RuntimeError, match="fewer params"):
        operator(x, [w], [], [], [1, 0, 1, 0], [1.0, 0.0, 0.0])  # a bias named, none given
    with pytest.raises(RuntimeError, match="more params"):
        operator(x, [w, w], [], [], [0, 0, 1, 0], [1.0, 0.0, 0.0])
    with pytest.raises(RuntimeError, match="words must be a contiguous CPU tensor of 2 Long"):
        operator(x, [w], [], [torch.zeros(1, dtype=torch.int64)], [0, 0, 1, 100], [1.0, 0.0, 0.0])
    with pytest.raises(RuntimeError, match="only the last layer may be an output layer"):
        operator(x, [w, torch.randn(5, 4)], [], [], [0, 0, 0, 0, 0, 0, 1, 0], [1.0, 0.0, 0.0] * 2)
    assert operator(x, [w], [], [], [0, 0, 1, 0], [1.0, 0.0, 0.0]).shape == (2, 4)
    z = operator(x, [w], [], [], [0, 0, 0, 0], [1.0, 0.0, 0.0])  # an output layer: no ReLU
    assert torch.equal(z, x @ w.t()) and (z < 0).any()


@needs_compiler
def test_a_failing_cpp_build_falls_back_to_the_python_node_once(tmp_path: Path) -> None:
    """auto: a broken C++ build costs one compile per cache, not one per worker; fused: an error."""
    compiler, log = _script_compiler(tmp_path, "broken-cxx", "echo 'broken-cxx: internal error' >&2\nexit 3")
    env = {**os.environ, "CXX": str(compiler), "TRAINER_KERNEL_CACHE": str(tmp_path / "cache"), "TRAINER_KERNELS": "auto"}
    code = "from trainer import fused; print(fused.status())"
    statuses = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        statuses.append(done.stdout.strip())
        assert "C++ autograd node is unavailable" in done.stderr and "internal error" in done.stderr
    assert all(s.startswith("fused-python (") and "(exit 3): broken-cxx: internal error" in s for s in statuses)
    assert "remembered in" in statuses[1] and log.read_text().split() == ["run"]  # not compiled again
    done = subprocess.run([sys.executable, "-c", code], env={**env, "TRAINER_KERNELS": "fused"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "TRAINER_KERNELS=fused, but the C++ autograd node failed to build" in done.stderr


@needs_compiler
def test_doctests() -> None:
    import doctest

    from trainer import model

    assert doctest.testmod(fused, raise_on_error=False).failed == 0
    assert doctest.testmod(model, raise_on_error=False).failed == 0
