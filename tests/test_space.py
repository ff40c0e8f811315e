"""The search space: conditions, grids and samplers, driven in memory by Optuna."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from sweeps.space import grid_points, make_sampler, ordered_searched, suggest
from sweeps.validate import load_spec, load_spec_text

SPECS = Path(__file__).parent / "specs" / "valid"
EXAMPLES = Path(__file__).parent.parent / "sweeps" / "examples"


def _sample(spec, n: int) -> list[dict]:
    study = optuna.create_study(sampler=make_sampler(spec, concurrent=1), direction="maximize")
    out: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        out.append(suggest(trial, spec))
        return 0.5

    study.optimize(objective, n_trials=n)
    return out


def test_conditional_parameters_appear_only_when_their_condition_holds() -> None:
    spec = load_spec(SPECS / "conditional_chain.yaml")
    samples = _sample(spec, 40)
    for p in samples:
        assert ("momentum" in p) == (p["optimizer"] in ("momentum", "nesterov"))
        assert ("weight_decay" in p) == (p["optimizer"] == "adamw")
        assert p["epochs"] == 4
        assert p["hidden_size"] % 16 == 0 and 16 <= p["hidden_size"] <= 128
    assert {p["optimizer"] for p in samples} == {"sgd", "momentum", "nesterov", "adamw"}


def test_conditions_are_ordered_after_their_parents() -> None:
    spec = load_spec_text(
        "name: o\nsearch: {trials: 2}\nparameters:\n"
        "  momentum: {distribution: uniform, min: 0.1, max: 0.9, condition: {optimizer: momentum}}\n"
        "  optimizer: {values: [sgd, momentum]}\n"
    )
    assert [n for n, _ in ordered_searched(spec)] == ["optimizer", "momentum"]


def test_distributions_respect_their_bounds() -> None:
    spec = load_spec_text(
        "name: b\nsearch: {algorithm: random, trials: 2}\nparameters:\n"
        "  lr: {distribution: log_uniform, min: 1.0e-4, max: 1.0e-2}\n"
        "  dropout: {distribution: uniform, min: 0.1, max: 0.2}\n"
        "  hidden_size: {distribution: int_log_uniform, min: 8, max: 512}\n"
    )
    for p in _sample(spec, 50):
        assert 1e-4 <= p["lr"] <= 1e-2
        assert 0.1 <= p["dropout"] <= 0.2
        assert isinstance(p["hidden_size"], int) and 8 <= p["hidden_size"] <= 512


def test_same_seed_same_proposals() -> None:
    spec = load_spec(EXAMPLES / "quickstart.yaml")
    assert _sample(spec, 12) == _sample(spec, 12)
    other = load_spec(EXAMPLES / "quickstart.yaml", ["search.seed=1"])
    assert _sample(spec, 3) != _sample(other, 3)


def test_grid_covers_every_point_once() -> None:
    spec = load_spec(SPECS / "grid.yaml")
    points = grid_points(spec)
    assert len(points) == 6
    sampled = _sample(spec, 6)
    key = lambda p: (p["optimizer"], p["batch_size"])  # noqa: E731
    assert sorted(map(key, sampled)) == sorted(map(key, points))


@pytest.mark.parametrize("algorithm,cls", [("tpe", optuna.samplers.TPESampler),
                                           ("random", optuna.samplers.RandomSampler)])
def test_sampler_by_algorithm(algorithm: str, cls: type) -> None:
    spec = load_spec(EXAMPLES / "quickstart.yaml", [f"search.algorithm={algorithm}"])
    assert isinstance(make_sampler(spec, concurrent=2), cls)


def test_tpe_uses_constant_liar_only_with_concurrency() -> None:
    spec = load_spec(EXAMPLES / "quickstart.yaml")
    assert make_sampler(spec, concurrent=2)._constant_liar is True
    assert make_sampler(spec, concurrent=1)._constant_liar is False
