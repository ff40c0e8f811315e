"""Load a sweep file and explain everything wrong with it before anything starts.

Each problem names the key path, the YAML line, the offending value and the rule,
with a did-you-mean for misspelled keys::

    sweep.yaml:7: parameters.lr.min = 0.0: a log-uniform distribution needs min > 0
"""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
import os
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sweeps.spec import (
    ASHASpec,
    Categorical,
    Fixed,
    Grid,
    IntLogUniform,
    IntUniform,
    LogUniform,
    SweepSpec,
    Uniform,
)
from trainer.config import MLPConfig
from trainer.crossval import fold_problem, pool_counts
from trainer.data import DataConfig
from trainer.loop import epoch_metric_names
from trainer.metrics import metric_mode, metric_names

Loc = tuple[Any, ...]
logger = logging.getLogger(__name__)

# Metrics the built-in trainer reports every epoch, for any task; which ones apply depends on
# the data block's task (epoch_metric_names(task)). test_* are measured once, at the end,
# and never drive the search: selecting on the test split would make it a validation split.
BUILTIN_EPOCH_METRICS = epoch_metric_names()
TASK_DEPENDENT_PARAMETERS = ("loss", "class_weight", "label_smoothing")
IMAGE_PARAMETERS = ("augment_shift", "augment_flip")  # need image rows (data.known_image_shape())
_MISSING = object()


@dataclass(frozen=True)
class SpecProblem:
    """One thing wrong with a sweep file."""

    loc: Loc
    value: Any
    rule: str
    line: int | None = None

    def path(self) -> str:
        out = ""
        for part in self.loc:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out or "(top level)"

    def format(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        # a whole mapping says less than the rule, which quotes the values that break it
        shown = self.value is not _MISSING and not isinstance(self.value, dict)
        value = f" = {self.value!r}" if shown else ""
        return f"{where}: {self.path()}{value}: {self.rule}"


class SpecError(ValueError):
    """A sweep file is invalid; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: list[SpecProblem]):
        self.source = source
        self.problems = problems
        lines = [p.format(source) for p in problems]
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"invalid sweep file {source} ({len(problems)} {noun}):\n  " + "\n  ".join(lines))


# ---- YAML with line numbers -------------------------------------------------------------------
def _line_index(node: yaml.Node, loc: Loc = (), index: dict[Loc, int] | None = None) -> dict[Loc, int]:
    index = {} if index is None else index
    index.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = loc + (key.value,)
            index[child] = key.start_mark.line + 1
            _line_index(value, child, index)
            index[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, loc + (i,), index)
    return index


def _line_for(index: dict[Loc, int], loc: Loc) -> int | None:
    """The line of the deepest key along ``loc`` (pydantic adds union tags that YAML lacks)."""
    best: int | None = index.get(())
    matched: Loc = ()
    for part in loc:
        candidate = matched + (part,)
        if candidate in index:
            matched = candidate
            best = index[candidate]
    return best


def _get(raw: Any, loc: Loc) -> Any:
    cur = raw
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            cur = cur[part]
        else:
            return _MISSING
    return cur


# ---- did-you-mean -----------------------------------------------------------------------------
def _models_in(annotation: Any) -> list[type[BaseModel]]:
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _known_keys(loc: Loc) -> list[str]:
    """Keys allowed at ``loc`` (the parent of an unknown key)."""
    if len(loc) == 1 and loc[0] == "parameters":
        return list(MLPConfig.model_fields)
    models: list[type[BaseModel]] = [SweepSpec]
    for part in loc:
        nxt: list[type[BaseModel]] = []
        for model in models:
            field = model.model_fields.get(str(part))
            if field is not None:
                ann = field.annotation
                if typing.get_origin(ann) is dict:
                    ann = typing.get_args(ann)[1]
                    # the next part is a dict key (a parameter name): skip it
                nxt.extend(_models_in(ann))
        if not nxt and models:
            # a dict key or a union tag: stay on the same models
            continue
        models = nxt
    return sorted({name for m in models for name in m.model_fields})


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    extending = sorted((c for c in choices if c.startswith(str(word))), key=len)  # an abbreviation
    close = extending[:1] or difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---- pydantic errors → problems ---------------------------------------------------------------
def _strip_tags(loc: Loc, raw: Any) -> Loc:
    """Drop union tags and model names that pydantic inserts into error locations."""
    out: list[Any] = []
    cur = raw
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int):
            out.append(part)
            cur = cur[part] if 0 <= part < len(cur) else None
        elif isinstance(part, str) and (part in _TAGS or part.startswith("function-") or _TYPE_TAG.match(part)):
            continue
        else:
            out.append(part)
            cur = None
    return tuple(out)


_TYPE_TAG = re.compile(r"^(bool|int|float|str|none|(list|dict|union|tuple)\[.*\])$")
_TAGS = {"uniform", "log_uniform", "int_uniform", "int_log_uniform", "categorical", "grid", "fixed",
         "literal", "bad_distribution", "asha", "none"}


def _problems_from_validation(err: ValidationError, raw: Any) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    for e in err.errors():
        loc = _strip_tags(tuple(e["loc"]), raw)
        value = _get(raw, loc)
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if e["type"] == "extra_forbidden":
            known = _known_keys(loc[:-1])
            msg = f"unknown key{did_you_mean(loc[-1], known)}; allowed: {', '.join(known)}"
            value = _MISSING
        elif e["type"] == "missing":
            value = _MISSING
            msg = "required key is missing"
        elif e["type"] in ("literal_error", "enum"):
            expected = e.get("ctx", {}).get("expected", "")
            choices = [c.strip().strip("'") for c in expected.replace(" or ", ",").split(",") if c.strip()]
            msg = f"must be one of {expected}{did_you_mean(value, choices)}"
        if problems and problems[-1].loc == loc:  # one line per key: pydantic reports each union member
            if msg not in problems[-1].rule:
                problems[-1] = SpecProblem(loc, value, f"{problems[-1].rule}; or {msg[0].lower()}{msg[1:]}")
            continue
        problems.append(SpecProblem(loc=loc, value=value, rule=msg))
    return problems


# ---- checks across blocks ---------------------------------------------------------------------
def _field_error(name: str, value: Any, fixed: dict[str, Any] | None = None) -> str | None:
    """Why ``value`` is not acceptable for MLPConfig.<name>, or None.

    Checked beside the file's other fixed values (not the defaults they replace); rules that
    tie several keys together are reported by :func:`_fixed_combination_error` instead.
    """
    try:
        MLPConfig.model_validate({**(fixed or {}), name: value})
    except ValidationError as e:
        for err in e.errors():
            if err["loc"] and err["loc"][0] == name:
                return err["msg"].removeprefix("Value error, ")
    return None


def _fixed_combination_error(fixed: dict[str, Any]) -> str | None:
    """A rule that the fixed parameters break together (e.g. warmup_epochs >= epochs)."""
    try:
        MLPConfig.model_validate(fixed)
    except ValidationError as e:
        for err in e.errors():
            if not err["loc"]:
                return err["msg"].removeprefix("Value error, ")
    return None


def semantic_problems(spec: SweepSpec) -> list[SpecProblem]:
    """Problems that only show when the blocks of a valid-looking file are put together.

    A study is checked variant by variant: each variant's parameters over the file's own.
    A problem in a key the variant sets is reported at ``variants.<name>.<key>``.
    """
    if spec.baseline_variant is not None and spec.baseline_variant not in spec.variants:
        return [SpecProblem(("baseline_variant",), spec.baseline_variant,
                            f"not one of the variants {sorted(spec.variants)}"
                            f"{did_you_mean(spec.baseline_variant, list(spec.variants))}")]
    if not spec.variants:
        return _spec_problems(spec)
    problems: list[SpecProblem] = []
    seen: set[tuple[Loc, str]] = set()
    for name, variant in spec.variant_specs():
        overrides = spec.variants[name or ""]
        for p in _spec_problems(variant):
            loc = p.loc
            if len(loc) >= 2 and loc[0] == "parameters" and loc[1] in overrides:
                loc = ("variants", name) + loc[1:]
            if (loc, p.rule) not in seen:  # the file's own problems once, not once per variant
                seen.add((loc, p.rule))
                problems.append(SpecProblem(loc, p.value, p.rule))
    return problems


def _spec_problems(spec: SweepSpec) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    searched = spec.searched_params()
    add = problems.append
    builtin = spec.trainer == "mlp"

    if builtin:
        fields = list(MLPConfig.model_fields)
        fixed = {k: v for k, v in spec.fixed_params().items() if k in fields}
        fixed = {k: v for k, v in fixed.items() if _field_error(k, v) is None}  # each reported on its own
        clash = _fixed_combination_error(fixed)
        if clash:
            add(SpecProblem(("parameters",), _MISSING, f"the fixed parameters clash: {clash}"))
        for name, p in spec.parameters.items():
            loc: Loc = ("parameters", name)
            if name not in fields:
                add(SpecProblem(loc, _MISSING, f"unknown parameter of the built-in mlp trainer"
                                f"{did_you_mean(name, fields)}; known: {', '.join(fields)}"))
                continue
            if isinstance(p, Fixed):
                why = _field_error(name, p.value, fixed)
                if why:
                    add(SpecProblem(loc, p.value, why))
            elif isinstance(p, (Categorical, Grid)):
                for i, v in enumerate(p.values):
                    why = _field_error(name, v, fixed)
                    if why:
                        add(SpecProblem(loc + ("values", i), v, why))
            else:
                for bound in ("min", "max"):
                    why = _field_error(name, getattr(p, bound), fixed)
                    if why:
                        add(SpecProblem(loc + (bound,), getattr(p, bound), why))
        task = spec.data.known_task()
        valid = searchable_metrics(task, spec.data.known_classes())
        name = spec.metric.name
        if not name.startswith("test_") and name not in valid:
            scope = f" for dataset {spec.data.dataset!r} ({task})" if task else ""
            add(SpecProblem(("metric", "name"), name,
                            f"not a metric the mlp trainer reports every epoch"
                            f"{did_you_mean(name, valid)}; valid{scope}: {', '.join(valid)}"))
        elif name in valid and name not in epoch_metric_names(task):
            mode = metric_mode(name)
            if mode is None:
                add(SpecProblem(("metric", "name"), name, "a raw count has no direction to optimize"))
            elif mode != spec.metric.mode:
                add(SpecProblem(("metric", "goal"), spec.metric.goal,
                                f"{name} is better when {'higher' if mode == 'max' else 'lower'}: "
                                f"use goal: {'maximize' if mode == 'max' else 'minimize'}"))
        if task is not None:
            problems.extend(_task_problems(spec, task))
        problems.extend(_image_problems(spec))
    else:
        problems.extend(_user_trainer_problems(spec.trainer))
    if spec.metric.name.startswith("test_"):
        add(SpecProblem(("metric", "name"), spec.metric.name,
                        "the test split must not drive the search (it would stop being a test); "
                        "optimize a val_* metric"))

    # conditions
    for name, p in searched.items():
        for other, allowed in (p.condition or {}).items():
            loc = ("parameters", name, "condition", other)
            if other == name:
                add(SpecProblem(loc, allowed, "a parameter cannot be conditioned on itself"))
            elif other not in spec.parameters:
                add(SpecProblem(loc, allowed, f"condition on unknown parameter {other!r}"
                                f"{did_you_mean(other, list(spec.parameters))}"))
            else:
                target = spec.parameters[other]
                options = allowed if isinstance(allowed, list) else [allowed]
                if isinstance(target, (Categorical, Grid)):
                    for o in options:
                        if o not in target.values:
                            add(SpecProblem(loc, o, f"{other!r} never takes this value; "
                                            f"its values are {target.values!r}"))
                elif isinstance(target, Fixed):
                    pass  # a condition on a constant is legal, if pointless
                else:
                    add(SpecProblem(loc, allowed, f"conditions may only refer to categorical, grid or fixed "
                                    f"parameters; {other!r} is {target.distribution}"))
    cycle = _condition_cycle(spec)
    if cycle:
        add(SpecProblem(("parameters", cycle[0], "condition"), _MISSING,
                        f"conditions form a cycle: {' -> '.join(cycle)}"))

    # search algorithm
    if spec.search.algorithm == "grid":
        for name, p in searched.items():
            if not isinstance(p, (Categorical, Grid)):
                add(SpecProblem(("parameters", name, "distribution"), p.distribution,
                                "search.algorithm 'grid' needs every searched parameter to list its values "
                                "(grid or categorical)"))
            elif p.condition:
                add(SpecProblem(("parameters", name, "condition"), p.condition,
                                "conditions are not supported with search.algorithm 'grid'"))
        if not searched:
            add(SpecProblem(("search", "algorithm"), "grid", "a grid search needs at least one searched parameter"))
        elif spec.search.trials is not None and spec.search.trials > spec.grid_size():
            add(SpecProblem(("search", "trials"), spec.search.trials,
                            f"a grid of {spec.grid_size()} points cannot fill more trials"))
    else:
        if spec.search.trials is None:
            add(SpecProblem(("search", "trials"), _MISSING,
                            f"required with search.algorithm {spec.search.algorithm!r}"))
        for name, p in searched.items():
            if isinstance(p, Grid):
                add(SpecProblem(("parameters", name, "distribution"), "grid",
                                f"'grid' needs search.algorithm: grid (it is {spec.search.algorithm!r}); "
                                "use 'categorical' to let the searcher choose"))

    # budget
    es = spec.early_stopping
    epochs = spec.parameters.get("epochs")
    if isinstance(es, ASHASpec):
        if es.max_epochs is not None and isinstance(epochs, Fixed) and epochs.value != es.max_epochs:
            add(SpecProblem(("early_stopping", "max_epochs"), es.max_epochs,
                            f"must equal parameters.epochs ({epochs.value!r}), the full budget of a trial"))
        if es.grace_period > spec.max_epochs():
            add(SpecProblem(("early_stopping", "grace_period"), es.grace_period,
                            f"exceeds the full budget of {spec.max_epochs()} epochs"))
        if epochs is not None and not isinstance(epochs, Fixed):
            add(SpecProblem(("parameters", "epochs"), _MISSING,
                            "with ASHA the epoch budget is the scheduler's; fix parameters.epochs "
                            "instead of searching it"))
    if spec.repeats is not None:
        if spec.repeats.top_k > spec.num_trials():
            add(SpecProblem(("repeats", "top_k"), spec.repeats.top_k,
                            f"cannot repeat more configurations than the search's {spec.num_trials()} trials"))
        seed = spec.parameters.get("seed")
        if seed is not None and not isinstance(seed, Fixed):
            add(SpecProblem(("parameters", "seed"), _MISSING,
                            "with repeats the seed varies by itself; fix parameters.seed instead of searching it"))
    if spec.cross_validation is not None:
        problems.extend(_cross_validation_problems(spec))
    if isinstance(spec.resources.cpus_per_trial, float) and spec.resources.cpus_per_trial < 1 \
            and spec.resources.gpus_per_trial == 0:
        add(SpecProblem(("resources", "cpus_per_trial"), spec.resources.cpus_per_trial,
                        "a CPU-only trial needs at least 1 CPU"))
    return problems


@functools.lru_cache(maxsize=16)
def _pool_counts(data_json: str) -> tuple[int, int | None] | None:
    """The pool's size and smallest class count; None when the data cannot be read now."""
    try:
        return pool_counts(DataConfig.model_validate_json(data_json))
    except (OSError, ValueError) as e:  # a missing or bad file fails the sweep when it loads its data
        logger.debug("cross-validation folds not checked against the data: %s", e)
        return None


def _cross_validation_problems(spec: SweepSpec) -> list[SpecProblem]:
    """k-fold cross-validation needs the built-in trainer and a pool that k stratified folds fit."""
    cv = spec.cross_validation
    if cv is None:
        return []
    if spec.trainer != "mlp":
        return [SpecProblem(("cross_validation",), _MISSING,
                            f"cross-validation needs the built-in trainer (trainer: mlp); {spec.trainer!r} "
                            "splits its own data")]
    counts = _pool_counts(spec.data.model_dump_json())
    why = fold_problem(cv.folds, *counts) if counts is not None else None
    if why:
        return [SpecProblem(("cross_validation", "folds"), cv.folds, f"{why} (dataset {spec.data.dataset!r})")]
    return []


def _values_of(p: Any) -> list[tuple[Loc, Any]]:
    """(location suffix, value) of every value a parameter can take that can be listed."""
    if isinstance(p, Fixed):
        return [((), p.value)]
    if isinstance(p, (Categorical, Grid)):
        return [(("values", i), v) for i, v in enumerate(p.values)]
    return [((bound,), getattr(p, bound)) for bound in ("min", "max")]


def _value_problems(
    spec: SweepSpec, names: tuple[str, ...], check: Callable[[MLPConfig], list[str]], context: str = "",
) -> list[SpecProblem]:
    """Every listable value of the parameters ``names`` that ``check`` refuses, each checked with
    the other parameters at their defaults; ``check`` returns ``"key=value: rule"`` texts."""
    problems: list[SpecProblem] = []
    for name in names:
        p = spec.parameters.get(name)
        if p is None:
            continue
        for suffix, value in _values_of(p):
            if _field_error(name, value):
                continue  # already reported
            for why in check(MLPConfig.model_validate({name: value})):
                problems.append(SpecProblem(("parameters", name) + suffix, value, why.partition(": ")[2] + context))
    return problems


def _task_problems(spec: SweepSpec, task: str) -> list[SpecProblem]:
    """Parameter values that do not fit the data block's task (a regression loss on digits, ...)."""
    return _value_problems(spec, TASK_DEPENDENT_PARAMETERS,
                           lambda config: config.task_problems(task),  # type: ignore[arg-type]
                           f" (dataset {spec.data.dataset!r} is {task})")


def _image_problems(spec: SweepSpec) -> list[SpecProblem]:
    """Augmentation values the data block's rows cannot take (no images, a shift too large, a
    per-pixel normalization)."""
    shape = spec.data.known_image_shape()
    return _value_problems(spec, IMAGE_PARAMETERS,
                           lambda config: config.image_problems(shape, spec.data.dataset, spec.data.normalize))


def searchable_metrics(task: str | None, n_classes: int | None) -> list[str]:
    """Metrics the built-in trainer can report every epoch: its own, then every ``val_*``
    evaluation metric of the task (computed each epoch only when the sweep optimizes it)."""
    names = list(epoch_metric_names(task))
    tasks = [task] if task else ["multiclass", "binary", "regression"]
    for t in tasks:
        classes = n_classes if t == "multiclass" and n_classes and n_classes >= 3 else (
            10 if t == "multiclass" else None)
        names.extend(n for n in metric_names(t, classes, splits=("val",)) if n not in names)
    return names


def _condition_cycle(spec: SweepSpec) -> list[str] | None:
    deps = {n: [o for o in (getattr(p, "condition", None) or {}) if o in spec.parameters]
            for n, p in spec.parameters.items()}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> list[str] | None:
        if state.get(n) == 1:
            return path[path.index(n):] + [n]
        if state.get(n) == 2:
            return None
        state[n] = 1
        for d in deps.get(n, []):
            found = visit(d, path + [n])
            if found:
                return found
        state[n] = 2
        return None

    for n in deps:
        found = visit(n, [])
        if found:
            return found
    return None


def _import_user_module(name: str) -> Any:
    """Import a user's trainer module; the current directory counts, as it does for Ray workers."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    return importlib.import_module(name)


def _user_trainer_problems(ref: str) -> list[SpecProblem]:
    module_name, _, attr = ref.partition(":")
    try:
        module = _import_user_module(module_name)
    except ImportError as e:
        return [SpecProblem(("trainer",), ref, f"cannot import module {module_name!r}: {e}")]
    fn = getattr(module, attr, None)
    if not callable(fn):
        return [SpecProblem(("trainer",), ref, f"module {module_name!r} has no function {attr!r}")]
    return []


def resolve_trainer(ref: str) -> Any:
    """The callable behind ``package.module:function``."""
    module_name, _, attr = ref.partition(":")
    return getattr(_import_user_module(module_name), attr)


# ---- entry points -----------------------------------------------------------------------------
def parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[tuple[Loc, Any]]:
    """``key.path=value`` pairs; values are parsed as YAML (``3``, ``1e-3``, ``[64, 64]``, ``adam``)."""
    out: list[tuple[Loc, Any]] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise SpecError("--set", [SpecProblem(("--set",), item, "must look like key.path=value")])
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as e:
            raise SpecError("--set", [SpecProblem(tuple(key.split(".")), value, f"not valid YAML: {e}")]) from e
        out.append((tuple(key.split(".")), parsed))
    return out


def _apply_overrides(raw: dict[str, Any], overrides: list[tuple[Loc, Any]]) -> None:
    for loc, value in overrides:
        cur = raw
        for part in loc[:-1]:
            if not isinstance(cur.get(part), dict):
                cur[part] = {}
            cur = cur[part]
        cur[loc[-1]] = value


def load_spec_text(text: str, source: str = "<sweep>", overrides: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Parse and validate sweep-file text; raise :class:`SpecError` listing every problem.

    Example:
        >>> spec = load_spec_text("name: demo\\nsearch: {trials: 2}\\nparameters: {epochs: 3}")
        >>> spec.num_trials(), spec.max_epochs()
        (2, 3)
    """
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(e, "problem", None) or str(e)
        raise SpecError(source, [SpecProblem((), _MISSING, f"malformed YAML: {reason}", line)]) from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        line = node.start_mark.line + 1 if node is not None else 1
        raise SpecError(source, [SpecProblem((), raw, "a sweep file must be a mapping of keys to values", line)])
    for key in raw:
        if not isinstance(key, str):
            raise SpecError(source, [SpecProblem((key,), _MISSING, "keys must be strings")])
    index = _line_index(node) if node is not None else {}
    parsed_overrides = parse_overrides(overrides)
    _apply_overrides(raw, parsed_overrides)

    def locate(problems: list[SpecProblem]) -> list[SpecProblem]:
        out = []
        for p in problems:
            overridden = any(p.loc[: len(o)] == o for o, _ in parsed_overrides)
            line = None if overridden else _line_for(index, p.loc)
            out.append(SpecProblem(p.loc, p.value, p.rule + (" (from --set)" if overridden else ""), line))
        return out

    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(source, locate(_problems_from_validation(e, raw))) from None
    problems = semantic_problems(spec)
    if problems:
        raise SpecError(source, locate(problems))
    return spec


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Read and validate a sweep file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(str(path), [SpecProblem((), _MISSING, f"cannot read file: {e.strerror or e}")]) from e
    return load_spec_text(text, str(path), overrides)


_ = (Uniform, LogUniform, IntUniform, IntLogUniform)  # re-exported for type checkers
