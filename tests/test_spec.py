"""Sweep files: valid ones load, each invalid one fails with key path, line, value and rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import count_runs
from sweeps.cli import EXIT_INVALID, main
from sweeps.spec import Categorical, Fixed, LogUniform, SweepSpec
from sweeps.validate import SpecError, load_spec, load_spec_text

SPECS = Path(__file__).parent / "specs"
EXAMPLES = Path(__file__).parent.parent / "sweeps" / "examples"
VALID = sorted((SPECS / "valid").glob("*.yaml")) + sorted(EXAMPLES.glob("*.yaml"))
INVALID = sorted((SPECS / "invalid").glob("*.yaml"))


def _expectation(path: Path) -> tuple[str, int]:
    text = path.read_text()
    expect = re.search(r"^# expect: (.+)$", text, re.M)
    line = re.search(r"^# line: (\d+)$", text, re.M)
    assert expect and line, f"{path.name} lacks its '# expect:' / '# line:' header"
    return expect.group(1), int(line.group(1))


def test_there_are_many_kinds_of_bad_input() -> None:
    assert len(INVALID) >= 12


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_files_load(path: Path) -> None:
    spec = load_spec(path)
    assert isinstance(spec, SweepSpec)
    assert spec.num_trials() >= 1


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_file_message(path: Path) -> None:
    fragment, line = _expectation(path)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert fragment in message, message
    assert f"{path}:{line}:" in message, message


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_file_starts_nothing(path: Path, tracking_uri: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`sweep run` on a bad file exits non-zero before Ray starts or any MLflow run exists."""
    fragment, _ = _expectation(path)
    import sweeps.tune

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("run_sweep was called for an invalid file")

    monkeypatch.setattr(sweeps.tune, "run_sweep", must_not_run)
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--results-dir", str(tmp_path / "results")])
    assert info.value.code == EXIT_INVALID
    assert fragment in capsys.readouterr().err
    assert count_runs(tmp_path / "mlflow.db") == 0
    assert not (tmp_path / "results").exists()


def test_a_bad_trainer_kernels_setting_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      kernels_mode: pytest.MonkeyPatch) -> None:
    """TRAINER_KERNELS is checked by `sweep run` before Ray starts or any MLflow run exists."""
    import sweeps.tune

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("run_sweep was called with a bad TRAINER_KERNELS")

    kernels_mode.setattr(sweeps.tune, "run_sweep", must_not_run)
    kernels_mode.setenv("TRAINER_KERNELS", "fastest")
    kernels_mode.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code = main(["run", str(EXAMPLES / "quickstart.yaml"), "--results-dir", str(tmp_path / "results")])
    assert code == EXIT_INVALID
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "TRAINER_KERNELS='fastest': must be one of auto, fused, fused-python, eager" in " ".join(out.split())
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results").exists()


def test_all_problems_are_reported_together() -> None:
    text = "name: x\nsearch: {trials: 0}\ndata: {dataset: nope}\nbogus: 1\n"
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "f.yaml")
    assert len(info.value.problems) == 3
    assert {p.line for p in info.value.problems} == {2, 3, 4}


def test_literal_and_wandb_style_parameters() -> None:
    spec = load_spec_text(
        "name: s\nsearch: {trials: 2}\nparameters:\n"
        "  epochs: 3\n  hidden_sizes: [8, 4]\n  dropout: {value: 0.1}\n"
        "  optimizer: {values: [sgd, adam]}\n  lr: {distribution: log_uniform, min: 0.001, max: 0.1}\n"
    )
    p = spec.parameters
    assert isinstance(p["epochs"], Fixed) and p["epochs"].value == 3
    assert isinstance(p["hidden_sizes"], Fixed) and p["hidden_sizes"].value == [8, 4]
    assert isinstance(p["dropout"], Fixed) and p["dropout"].value == 0.1
    assert isinstance(p["optimizer"], Categorical)
    assert isinstance(p["lr"], LogUniform)
    assert spec.fixed_params() == {"epochs": 3, "hidden_sizes": [8, 4], "dropout": 0.1}


def test_spec_is_frozen() -> None:
    spec = load_spec_text("name: s\nsearch: {trials: 2}\n")
    with pytest.raises(Exception):
        spec.name = "other"  # type: ignore[misc]


def test_overrides_apply_and_are_validated() -> None:
    spec = load_spec(EXAMPLES / "quickstart.yaml", ["search.trials=3", "parameters.epochs=4"])
    assert spec.num_trials() == 3 and spec.max_epochs() == 4
    with pytest.raises(SpecError) as info:
        load_spec(EXAMPLES / "quickstart.yaml", ["search.trials=0"])
    assert "search.trials = 0" in str(info.value) and "(from --set)" in str(info.value)
    with pytest.raises(SpecError, match="must look like key.path=value"):
        load_spec(EXAMPLES / "quickstart.yaml", ["search.trials"])


def test_grid_trials_default_to_grid_size() -> None:
    spec = load_spec(SPECS / "valid" / "grid.yaml")
    assert spec.grid_size() == 6 and spec.num_trials() == 6


def test_condition_cycle_is_refused() -> None:
    text = (
        "name: c\nsearch: {trials: 2}\nparameters:\n"
        "  optimizer: {values: [sgd, adam], condition: {activation: relu}}\n"
        "  activation: {values: [relu, tanh], condition: {optimizer: sgd}}\n"
    )
    with pytest.raises(SpecError, match="conditions form a cycle"):
        load_spec_text(text)


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read file"):
        load_spec(tmp_path / "nope.yaml")


def test_validate_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLES / "quickstart.yaml")]) == 0
    assert "24 trials" in capsys.readouterr().err


def test_schema_command_lists_top_level_keys(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"name", "parameters", "search", "early_stopping", "resources", "tracking"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_missing_distribution_is_named_once() -> None:
    with pytest.raises(SpecError) as info:
        load_spec_text("name: s\nsearch: {trials: 2}\nparameters:\n  lr: {min: 0.001, max: 0.1}\n", "f.yaml")
    assert [p.path() for p in info.value.problems] == ["parameters.lr.distribution"]
    assert "required key is missing" in str(info.value)


def test_a_list_among_choices_is_one_problem() -> None:
    with pytest.raises(SpecError) as info:
        load_spec_text("name: s\nsearch: {trials: 2}\nparameters:\n  hidden_sizes: {values: [[8, 8], 16]}\n")
    assert [p.path() for p in info.value.problems] == ["parameters.hidden_sizes.values[0]"]
