"""The sweep file's parameters as an Optuna search space.

The space is define-by-run, so conditional parameters are natural: a parameter
whose condition does not hold is never suggested and never reaches the trainer.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import optuna

from sweeps.spec import (
    Categorical,
    Grid,
    IntLogUniform,
    IntUniform,
    LogUniform,
    SearchedParam,
    SweepSpec,
    Uniform,
)


def ordered_searched(spec: SweepSpec) -> list[tuple[str, SearchedParam]]:
    """Searched parameters, each after the parameters its condition refers to."""
    searched = spec.searched_params()
    done: list[str] = []
    pending = list(searched)
    while pending:
        progressed = False
        for name in list(pending):
            deps = [d for d in (searched[name].condition or {}) if d in searched]
            if all(d in done for d in deps):
                done.append(name)
                pending.remove(name)
                progressed = True
        if not progressed:  # a cycle; validation reports it, keep declaration order
            done.extend(pending)
            break
    return [(n, searched[n]) for n in done]


def suggest(trial: optuna.Trial, spec: SweepSpec) -> dict[str, Any]:
    """Ask ``trial`` for every searched parameter whose condition holds; add the fixed ones.

    Example:
        >>> from sweeps.validate import load_spec_text
        >>> spec = load_spec_text('''
        ... name: demo
        ... search: {trials: 1}
        ... parameters:
        ...   epochs: 3
        ...   optimizer: sgd
        ...   momentum: {distribution: uniform, min: 0.5, max: 0.9, condition: {optimizer: momentum}}
        ... ''')
        >>> sorted(suggest(optuna.create_study().ask(), spec))
        ['epochs', 'optimizer']
    """
    chosen: dict[str, Any] = dict(spec.fixed_params())
    for name, p in ordered_searched(spec):
        if not p.condition_holds(chosen):
            continue
        chosen[name] = suggest_one(trial, name, p)
    return chosen


def suggest_one(trial: optuna.Trial, name: str, p: SearchedParam) -> Any:
    if isinstance(p, Uniform):
        return trial.suggest_float(name, p.min, p.max)
    if isinstance(p, LogUniform):
        return trial.suggest_float(name, p.min, p.max, log=True)
    if isinstance(p, IntUniform):
        return trial.suggest_int(name, p.min, p.max, step=p.step)
    if isinstance(p, IntLogUniform):
        return trial.suggest_int(name, p.min, p.max, log=True)
    if isinstance(p, (Categorical, Grid)):
        return trial.suggest_categorical(name, p.values)
    raise TypeError(f"parameter {name!r}: unsupported distribution {type(p).__name__}")


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every point of a grid search, in a stable order."""
    names = [n for n, _ in ordered_searched(spec)]
    values = [spec.searched_params()[n].values for n in names]  # type: ignore[union-attr]
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


class TuneGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler for ask-and-tell use: the number of trials, not the sampler, ends a sweep.

    ``GridSampler.after_trial`` calls ``study.stop()`` once the grid is covered, which raises
    outside ``study.optimize`` (Ray Tune drives the study with ask and tell).
    """

    def after_trial(self, study, trial, state, values) -> None:  # type: ignore[no-untyped-def]
        return None


def make_sampler(spec: SweepSpec, concurrent: int) -> optuna.samplers.BaseSampler:
    """TPE, random or grid, seeded from ``search.seed``.

    TPE uses the constant liar when trials run concurrently, so that two workers do not
    propose the same point, and groups conditional parameters (multivariate TPE).
    """
    seed = spec.search.seed
    if spec.search.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.search.algorithm == "grid":
        space = {n: list(p.values) for n, p in ordered_searched(spec)}  # type: ignore[union-attr]
        return TuneGridSampler(space, seed=seed)
    has_conditions = any(p.condition for p in spec.searched_params().values())
    n_startup = max(2, min(10, spec.num_trials() // 4))
    with warnings.catch_warnings():  # multivariate/group/constant_liar are "experimental" but long stable
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=n_startup,
            multivariate=True,
            group=has_conditions,
            constant_liar=concurrent > 1,
        )
