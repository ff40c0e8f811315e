"""The sweep file: frozen pydantic models that reject unknown keys.

A sweep file looks like this (every key is documented in README.md)::

    name: quickstart
    trainer: mlp
    data: {dataset: digits}
    metric: {name: val_accuracy, goal: maximize}
    parameters:
      epochs: 20                                            # fixed value
      lr: {distribution: log_uniform, min: 1.0e-4, max: 0.3}
      optimizer: {values: [sgd, momentum, adam]}            # categorical
      momentum: {distribution: uniform, min: 0.5, max: 0.99, condition: {optimizer: momentum}}
    search: {algorithm: tpe, trials: 24, seed: 0}
    early_stopping: {type: asha, grace_period: 2, reduction_factor: 3}
    resources: {cpus_per_trial: 1, max_concurrent_trials: 2}

Parsing checks each block on its own; :func:`sweeps.validate.semantic_problems`
then checks how the blocks fit together (parameter names against the trainer,
conditions, grid sizes, the metric name).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from trainer.data import DataConfig

Scalar = Union[bool, int, float, str, None]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Searched(_Frozen):
    """Common to every searched parameter: an optional condition on other parameters."""

    # {other_parameter: value or [values]}: sample this one only when all hold
    condition: dict[str, Union[Scalar, list[Scalar]]] | None = None

    def condition_holds(self, chosen: dict[str, Any]) -> bool:
        if not self.condition:
            return True
        for other, allowed in self.condition.items():
            options = allowed if isinstance(allowed, list) else [allowed]
            if other not in chosen or chosen[other] not in options:
                return False
        return True


class _Range(_Searched):
    @model_validator(mode="after")
    def _check_range(self) -> Any:
        lo, hi = self.min, self.max  # type: ignore[attr-defined]
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"min={lo!r}, max={hi!r}: bounds must be finite")
        if lo >= hi:
            raise ValueError(f"min={lo!r}, max={hi!r}: min must be < max")
        if getattr(self, "distribution", "").endswith("log_uniform") and lo <= 0:
            raise ValueError(f"min={lo!r}: a log-uniform distribution needs min > 0")
        return self


class Uniform(_Range):
    """A float drawn uniformly from [min, max]."""

    distribution: Literal["uniform"]
    min: float
    max: float


class LogUniform(_Range):
    """A float whose logarithm is uniform on [log min, log max]; needs min > 0."""

    distribution: Literal["log_uniform"]
    min: float
    max: float


class IntUniform(_Range):
    """An integer drawn uniformly from {min, min+step, ..., max}."""

    distribution: Literal["int_uniform"]
    min: int
    max: int
    step: int = Field(1, ge=1)


class IntLogUniform(_Range):
    """An integer drawn log-uniformly from [min, max]; needs min > 0."""

    distribution: Literal["int_log_uniform"]
    min: int
    max: int


class _Choices(_Searched):
    values: list[Scalar]

    @field_validator("values")
    @classmethod
    def _check_values(cls, values: list[Scalar]) -> list[Scalar]:
        if not values:
            raise ValueError("must list at least one choice")
        seen: list[Scalar] = []
        for v in values:
            if v in seen:
                raise ValueError(f"values lists {v!r} twice: choices must be distinct")
            seen.append(v)
        return values


class Categorical(_Choices):
    """One of ``values``; the searcher learns which are good."""

    distribution: Literal["categorical"] = "categorical"


class Grid(_Choices):
    """Every one of ``values`` is tried (``search.algorithm: grid`` only)."""

    distribution: Literal["grid"]


class Fixed(_Frozen):
    """A constant: written as ``key: value`` or ``key: {value: ...}``."""

    value: Any


SearchedParam = Union[Uniform, LogUniform, IntUniform, IntLogUniform, Categorical, Grid]
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "int_log_uniform", "categorical", "grid")


def _param_kind(raw: Any) -> str:
    if isinstance(raw, dict):
        if "distribution" in raw:
            d = raw["distribution"]
            return d if d in DISTRIBUTIONS else "bad_distribution"
        if "values" in raw:
            return "categorical"
        if "value" in raw:
            return "fixed"
        if set(raw) & {"min", "max"}:
            return "bad_distribution"
    if isinstance(raw, (Fixed, *SearchedParam.__args__)):  # type: ignore[attr-defined]
        return getattr(raw, "distribution", "fixed")
    return "literal"


class _BadDistribution(BaseModel):
    """Matches a parameter mapping whose distribution is missing or unknown, to report just that."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    distribution: Literal["uniform", "log_uniform", "int_uniform", "int_log_uniform", "categorical", "grid"]


ParamSpec = Annotated[
    Union[
        Annotated[Uniform, Tag("uniform")],
        Annotated[LogUniform, Tag("log_uniform")],
        Annotated[IntUniform, Tag("int_uniform")],
        Annotated[IntLogUniform, Tag("int_log_uniform")],
        Annotated[Categorical, Tag("categorical")],
        Annotated[Grid, Tag("grid")],
        Annotated[Fixed, Tag("fixed")],
        Annotated[Any, Tag("literal")],
        Annotated[_BadDistribution, Tag("bad_distribution")],
    ],
    Discriminator(_param_kind),
]


class MetricSpec(_Frozen):
    """The metric the search optimizes, as reported every epoch."""

    name: str = "val_accuracy"  # a per-epoch metric of the trainer, e.g. val_accuracy or val_loss
    goal: Literal["maximize", "minimize"] = "maximize"  # direction of improvement

    @property
    def mode(self) -> str:
        return "max" if self.goal == "maximize" else "min"


class SearchSpec(_Frozen):
    """How hyperparameters are proposed."""

    algorithm: Literal["tpe", "random", "grid"] = "tpe"  # Optuna sampler
    trials: int | None = Field(None, ge=1)  # number of trials (grid: defaults to the grid's size)
    seed: int = Field(0, ge=0)  # sampler seed: the same seed proposes the same configurations


class ASHASpec(_Frozen):
    """Asynchronous successive halving across trials, on the ``epoch`` counter."""

    type: Literal["asha"]
    grace_period: int = Field(1, ge=1)  # epochs every trial runs before it can be stopped
    reduction_factor: float = Field(3.0, gt=1.0)  # keep the top 1/reduction_factor at each rung
    max_epochs: int | None = Field(None, ge=1)  # budget of a full trial; default: parameters.epochs

    @model_validator(mode="after")
    def _check(self) -> ASHASpec:
        if self.max_epochs is not None and self.grace_period > self.max_epochs:
            raise ValueError(
                f"grace_period={self.grace_period} > max_epochs={self.max_epochs}: "
                "the grace period must not exceed the full budget"
            )
        return self


class NoEarlyStopping(_Frozen):
    """Every trial runs its full budget."""

    type: Literal["none"]


EarlyStopping = Annotated[Union[ASHASpec, NoEarlyStopping], Field(discriminator="type")]


class ResourcesSpec(_Frozen):
    """What each trial is given. Infrastructure, never hyperparameters."""

    cpus_per_trial: float = Field(1.0, gt=0)  # CPUs reserved per trial; also the trainer's torch threads
    gpus_per_trial: float = Field(0.0, ge=0)  # fractional GPUs pack trials on one device (e.g. 0.25)
    max_concurrent_trials: int = Field(2, ge=1)  # trials running at once

    @field_validator("gpus_per_trial")
    @classmethod
    def _check_gpus(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("more than one GPU must be a whole number")
        return v


class FaultToleranceSpec(_Frozen):
    """Trial checkpoints and retries. A retried trial resumes into the same MLflow run."""

    checkpoint_every: int = Field(1, ge=0)  # epochs between trial checkpoints (built-in trainer); 0: none
    max_failures: int = Field(2, ge=0)  # retries of a trial whose worker died or that raised, from its last checkpoint


class StorageSpec(_Frozen):
    """Where Ray Tune keeps the experiment state and trial checkpoints (not the MLflow runs).

    On a cluster it must be reachable from every node at the same path: a shared file
    system (NFS, EFS) or object storage. Since Ray 2.7 Tune does not copy trial files to the head.
    """

    path: str = "sweep_results"  # a folder (relative: to the working directory) or s3://bucket/prefix
    endpoint_url: str | None = None  # S3-compatible stores (MinIO, Ceph): e.g. http://minio:9000; credentials: AWS_* env

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+/?$", v):
            raise ValueError("must be http(s)://host[:port], e.g. http://minio:9000")
        return v

    @model_validator(mode="after")
    def _endpoint_needs_s3(self) -> StorageSpec:
        if self.endpoint_url is not None and not self.path.startswith("s3://"):
            raise ValueError(f"endpoint_url is for S3-compatible stores: path={self.path!r} must start with s3://")
        return self


class TrackingSpec(_Frozen):
    """Where trials are recorded."""

    uri: str | None = None  # MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db
    experiment: str | None = None  # MLflow experiment; default: the sweep name
    flush_seconds: float = Field(2.0, ge=0)  # per-epoch metrics are batched and sent at most this often
    # how long a trial rides out an unreachable tracking server (training goes on, metrics wait) before it fails
    retry_seconds: float = Field(600.0, ge=0)


class EvaluationSpec(_Frozen):
    """The end-of-trial evaluation: bias-variance thresholds and the hidden-layer view."""

    reference_error: float | None = Field(None, ge=0)  # human-level / Bayes error estimate (avoidable bias = train - this)
    high_bias: float = Field(0.05, ge=0)  # avoidable bias above this is "high bias" (error units: 1-accuracy or MSE)
    high_variance: float = Field(0.05, ge=0)  # val error - train error above this is "high variance"
    overfit_patience: int = Field(3, ge=1)  # epochs of rising val loss (train loss falling) that mark overfitting
    embedding: Literal["pca", "tsne"] = "pca"  # 2-D view of the last hidden layer on the test split


class RepeatsSpec(_Frozen):
    """Re-run the best configurations of the search over fresh seeds, at full budget.

    Each seed sets the trainer's ``seed`` (weight initialization, data order, dropout masks)
    and, with ``vary_split``, the data split too. No early stopping across trials applies.
    """

    top_k: int = Field(1, ge=1)  # how many of the search's best configurations to repeat
    seeds: int = Field(10, ge=2)  # fresh seeds per configuration (2 or more: a spread needs two)
    seed_start: int = Field(1000, ge=0)  # seeds are seed_start, seed_start+1, ...: none reused from the search
    vary_split: bool = False  # also re-draw the data split with each seed (data.split_seed = seed)
    confidence: float = Field(0.95, gt=0, lt=1)  # level of the Student-t confidence intervals

    def seed_values(self) -> list[int]:
        return list(range(self.seed_start, self.seed_start + self.seeds))


class CrossValidationSpec(_Frozen):
    """k-fold cross-validation of every search trial (the built-in trainer).

    The test split stays the one ``data`` holds out; train + validation form the pool, cut
    into ``folds`` folds with ``data.split_seed`` (stratified for classification). A trial
    trains its folds in lockstep and reports the fold mean of every epoch metric, so ASHA and
    Optuna judge the fold-mean curve. Repeats train without cross-validation.
    """

    folds: int = Field(ge=2, strict=True)  # k: each fold validates on 1/k of the pool and trains on the rest


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class SweepSpec(_Frozen):
    """A whole sweep file."""

    name: str  # sweep name: MLflow experiment and results folder
    description: str = ""  # free text, shown in the parent run
    trainer: str = "mlp"  # "mlp" (built-in) or "package.module:function"
    data: DataConfig = DataConfig()  # dataset, splits and normalization
    metric: MetricSpec = MetricSpec()  # what the search optimizes
    parameters: dict[str, ParamSpec] = Field(default_factory=dict)  # fixed values and search distributions
    search: SearchSpec = SearchSpec()  # sampler, number of trials, seed
    early_stopping: EarlyStopping = NoEarlyStopping(type="none")  # ASHA across trials, or none
    resources: ResourcesSpec = ResourcesSpec()  # per-trial CPUs / GPUs and concurrency
    fault_tolerance: FaultToleranceSpec = FaultToleranceSpec()  # trial checkpoints and retries
    storage: StorageSpec = StorageSpec()  # Tune's experiment state and checkpoints (shared on clusters)
    tracking: TrackingSpec = TrackingSpec()  # MLflow URI and experiment
    evaluation: EvaluationSpec = EvaluationSpec()  # end-of-trial metrics, diagnosis and plots
    repeats: RepeatsSpec | None = None  # after the search: the top configurations over many seeds
    cross_validation: CrossValidationSpec | None = None  # k-fold CV of every search trial; absent: one split
    # A study: variant name -> parameters it overrides or adds. Each variant is searched with the
    # same trial budget and search seed, then repeated; all are compared with the baseline.
    variants: dict[str, dict[str, ParamSpec]] = Field(default_factory=dict)
    baseline_variant: str | None = None  # the variant the others are tested against (default: the first)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not NAME_PATTERN.match(v):
            raise ValueError(
                "use 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit"
            )
        return v

    @field_validator("trainer")
    @classmethod
    def _check_trainer(cls, v: str) -> str:
        if v != "mlp" and not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", v):
            raise ValueError("must be 'mlp' or 'package.module:function'")
        return v

    @field_validator("parameters", mode="before")
    @classmethod
    def _wrap_literals(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: p if _param_kind(p) != "literal" else Fixed(value=p) for k, p in v.items()}
        return v

    @field_validator("variants", mode="before")
    @classmethod
    def _wrap_variant_literals(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {name: cls._wrap_literals(over) if over is not None else {} for name, over in v.items()}
        return v

    @model_validator(mode="after")
    def _check_variants(self) -> SweepSpec:
        for name in self.variants:
            if not NAME_PATTERN.match(str(name)):
                raise ValueError(f"variants: name {name!r}: use letters, digits, '_', '.' or '-'")
        return self

    # ---- derived views -------------------------------------------------------------------------
    def variant_specs(self) -> list[tuple[str | None, SweepSpec]]:
        """(variant, the spec that variant runs): the variant's parameters over the file's own.

        Without variants: one entry, ``(None, self)``.
        """
        if not self.variants:
            return [(None, self)]
        return [
            (name, self.model_copy(update={"parameters": {**self.parameters, **over}, "variants": {},
                                           "baseline_variant": None}))
            for name, over in self.variants.items()
        ]

    def baseline(self) -> str | None:
        return self.baseline_variant or next(iter(self.variants), None)

    def total_trials(self) -> int:
        """Search trials over all variants."""
        return self.num_trials() * max(len(self.variants), 1)

    def fixed_params(self) -> dict[str, Any]:
        return {k: p.value for k, p in self.parameters.items() if isinstance(p, Fixed)}

    def searched_params(self) -> dict[str, SearchedParam]:
        return {k: p for k, p in self.parameters.items() if not isinstance(p, Fixed)}  # type: ignore[misc]

    def max_epochs(self) -> int:
        """The full per-trial budget in epochs."""
        if isinstance(self.early_stopping, ASHASpec) and self.early_stopping.max_epochs is not None:
            return self.early_stopping.max_epochs
        epochs = self.parameters.get("epochs")
        if isinstance(epochs, Fixed):
            return int(epochs.value)
        if isinstance(epochs, (IntUniform, IntLogUniform)):
            return int(epochs.max)
        if isinstance(epochs, (Categorical, Grid)):
            return int(max(epochs.values))  # type: ignore[type-var]
        from trainer.config import MLPConfig

        return int(MLPConfig.model_fields["epochs"].default)

    def grid_size(self) -> int:
        size = 1
        for p in self.searched_params().values():
            size *= len(p.values) if isinstance(p, _Choices) else 1
        return size

    def num_trials(self) -> int:
        if self.search.trials is not None:
            return self.search.trials
        return self.grid_size()

    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name
