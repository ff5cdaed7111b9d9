"""A sweep's wire format, declared once: the request (its base job, search space and search
settings) and the answers; ``parse_sweep_request`` turns a body into the stored request.

Everything a sweep's trials could not fix is refused before it is accepted: an unknown or
untunable ``train_opts`` key in the space, a bound or choice that ``TrainOptions`` refuses
(each edge of a range and each choice is checked by the same declaration a job's options are),
a ``log`` range that reaches 0, a grid over anything but choices, more trials than the grid has.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import fields
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from cnnswarm.controller.api_schemas import ANSWER, STRICT, TEXT, validated
from cnnswarm.controller.datasets import DatasetService
from cnnswarm.controller.job_requests import JobBase, parse_job_request
from cnnswarm.errors import InvalidInput
from cnnswarm.ml.train_options import TrainOptions
from cnnswarm.store.job_records import JobState
from cnnswarm.store.sweeps import SweepState, TrialState, fingerprint

DEFAULT_MAX_TRIALS = 20
# Options that describe where or how reproducibly a run happens, not what it learns.
UNTUNABLE = frozenset({"seed", "device", "force_cpu", "checkpoint_every_batches"})
TUNABLE = sorted(f.name for f in fields(TrainOptions) if f.name not in UNTUNABLE)
Metric = Literal["test_accuracy", "test_loss", "train_accuracy", "train_loss"]

# -- the search space -------------------------------------------------------------------------


class FloatRange(BaseModel):
    """Real values in ``[low, high]``, uniform or (``log``) log-uniform, optionally stepped."""

    model_config = STRICT

    bounds: Annotated[list[float], Field(alias="float", min_length=2, max_length=2)]
    log: bool = False
    step: Annotated[float | None, Field(gt=0, description="null: continuous")] = None

    @model_validator(mode="after")
    def _consistent(self) -> FloatRange:
        _check_range(self.bounds[0], self.bounds[1], self.log, self.step)
        return self


class IntRange(BaseModel):
    """Integers in ``[low, high]``, uniform or (``log``) log-uniform, every ``step``."""

    model_config = STRICT

    bounds: Annotated[list[int], Field(alias="int", min_length=2, max_length=2)]
    log: bool = False
    step: Annotated[int | None, Field(ge=1, description="null: 1")] = None

    @model_validator(mode="after")
    def _consistent(self) -> IntRange:
        _check_range(self.bounds[0], self.bounds[1], self.log, self.step)
        return self


Choice = int | float | str | bool


class Choices(BaseModel):
    """One of these values (a grid takes each)."""

    model_config = STRICT

    choice: Annotated[list[Choice], Field(min_length=1, max_length=1000)]

    @model_validator(mode="after")
    def _distinct(self) -> Choices:
        if len({repr(value) for value in self.choice}) != len(self.choice):
            raise PydanticCustomError("choices", "choices must be distinct")
        return self


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low > high:
        raise PydanticCustomError("range", "the range is empty: low must be <= high")
    if log and low <= 0:
        raise PydanticCustomError("range", "a log range must start above 0")
    if log and step is not None:
        raise PydanticCustomError("range", "a log range takes no step")


def _dimension_kind(value: Any) -> str | None:
    kinds: dict[type, str] = {FloatRange: "float", IntRange: "int", Choices: "choice"}
    if type(value) in kinds:  # serializing a validated request
        return kinds[type(value)]
    if isinstance(value, dict):
        for kind in ("float", "int", "choice"):
            if kind in value:
                return kind
    return None


Dimension = Annotated[
    Annotated[FloatRange, Tag("float")]
    | Annotated[IntRange, Tag("int")]
    | Annotated[Choices, Tag("choice")],
    Discriminator(
        _dimension_kind,
        custom_error_type="dimension",
        custom_error_message='a dimension is {"float": [low, high]}, {"int": [low, high]} '
        'or {"choice": [values]}',
    ),
]


# -- the request ------------------------------------------------------------------------------


class SweepRequest(JobBase):
    """A hyperparameter sweep: a base job, a search space over its ``train_opts`` and how to
    search it. Each trial trains the base job with the space's keys set to its values."""

    space: Annotated[
        dict[str, Dimension],
        Field(
            min_length=1,
            max_length=len(TUNABLE),
            description=f"train_opts key -> its range or choices; keys: {', '.join(TUNABLE)}",
        ),
    ]
    sampler: Annotated[
        Literal["tpe", "random", "grid"],
        Field(description="grid: every point of a space of choices, each once"),
    ] = "tpe"
    max_trials: Annotated[
        int | None,
        Field(ge=1, le=10_000, description=f"null: {DEFAULT_MAX_TRIALS}, or a grid's size"),
    ] = None
    max_parallel: Annotated[int, Field(ge=1, le=1000, description="trials queued or running")] = 2
    metric: Annotated[Metric, Field(description="a trial's value: this at its last epoch")] = (
        "test_accuracy"
    )
    direction: Annotated[
        Literal["maximize", "minimize"] | None,
        Field(description="null: maximize an accuracy, minimize a loss"),
    ] = None
    pruner: Annotated[
        Literal["median", "hyperband", "none"],
        Field(description="stops trials early on their metric per epoch"),
    ] = "none"
    seed: Annotated[
        int | None, Field(ge=0, le=2**32 - 1, description="null: drawn and recorded")
    ] = None


def parse_sweep_request(
    body: Mapping[str, Any], datasets: DatasetService
) -> tuple[dict[str, Any], str]:
    """Validate ``body`` into the stored request (defaults filled, seed drawn) and the
    fingerprint an idempotent retry is recognised by; ``InvalidInput`` names the bad field."""
    sweep = validated(SweepRequest, body)
    base = parse_job_request(
        sweep.model_dump(include={"dataset", "model_type", "example_idxs", "train_opts"}),
        datasets,
    )
    space = {name: dim.model_dump(by_alias=True) for name, dim in sweep.space.items()}
    for name, dim in space.items():
        _check_dimension(name, dim, base.train_opts, base.model_type)
    max_trials = sweep.max_trials or DEFAULT_MAX_TRIALS
    if sweep.sampler == "grid":
        max_trials = _grid_trials(space, sweep.max_trials)
    request = {
        "dataset": base.dataset,
        "model_type": base.model_type,
        "example_idxs": base.example_idxs,
        "train_opts": base.train_opts,
        "space": space,
        "sampler": sweep.sampler,
        "max_trials": max_trials,
        "max_parallel": sweep.max_parallel,
        "metric": sweep.metric,
        "direction": sweep.direction or ("maximize" if "accuracy" in sweep.metric else "minimize"),
        "pruner": sweep.pruner,
        "seed": sweep.seed if sweep.seed is not None else random.randrange(2**32),
    }
    return request, fingerprint(sweep.model_dump(mode="json", by_alias=True))


def _check_dimension(
    name: str, dim: dict[str, Any], base_opts: dict[str, Any], model_type: str
) -> None:
    if name not in TUNABLE:
        raise InvalidInput(
            f"space key {name!r} is not a tunable train_opts key; use one of {', '.join(TUNABLE)}",
            field="space",
        )
    values = dim.get("float") or dim.get("int") or dim["choice"]
    for value in values:
        try:
            TrainOptions.from_dict({**base_opts, name: value}, model_type=model_type)
        except InvalidInput as exc:
            raise InvalidInput(f"space.{name}: {exc.message}", field="space") from None


def _grid_trials(space: dict[str, dict[str, Any]], asked: int | None) -> int:
    ranges = sorted(name for name, dim in space.items() if "choice" not in dim)
    if ranges:
        raise InvalidInput(
            f"a grid takes choices only; {', '.join(ranges)} is a range", field="space"
        )
    size = 1
    for dim in space.values():
        size *= len(dim["choice"])
    if asked is not None and asked > size:
        raise InvalidInput(
            f"max_trials {asked} is more than the grid's {size} points", field="max_trials"
        )
    return asked or size


# -- answers ----------------------------------------------------------------------------------


class SweepListQuery(BaseModel):
    """Which sweeps to list."""

    model_config = TEXT

    limit: Annotated[int, Field(ge=1, le=10_000, description="the most recent this many")] = 1000


class SweepTrial(BaseModel):
    """One trial: its parameters, its job and how it went."""

    # Built by store.sweeps.trial_to_json.

    model_config = ANSWER

    number: int
    params: Annotated[dict[str, Any], Field(description="train_opts key -> the trial's value")]
    state: TrialState
    job_id: str
    job_state: JobState
    attempt: int
    model_id: str
    curve: Annotated[list[float], Field(description="the sweep's metric at each epoch")]
    value: Annotated[float | None, Field(description="the metric at the last epoch, once told")]
    error: str | None


class SweepCounts(BaseModel):
    """How many trials are in each state (queued and running: the trial's job)."""

    model_config = ANSWER

    queued: int
    running: int
    succeeded: int
    pruned: int
    failed: int
    cancelled: int


class SweepSummary(BaseModel):
    """A sweep: its request, state, counts and best trial."""

    # Built by store.sweeps.sweep_to_json.

    model_config = ANSWER

    id: str
    state: SweepState
    dataset: str
    model_type: str
    example_idxs: list[int] | None
    train_opts: Annotated[dict[str, Any], Field(description="the base job's options")]
    space: dict[str, dict[str, Any]]
    sampler: str
    max_trials: int
    max_parallel: int
    metric: str
    direction: str
    pruner: str
    seed: int
    counts: SweepCounts
    best_trial: SweepTrial | None
    best_model: Annotated[str | None, Field(description="the alias of the best trial's model")]
    created_at: float
    finished_at: float | None
    updated_at: float


class Sweep(SweepSummary):
    """A sweep with every trial."""

    trials: list[SweepTrial]


class SweepList(BaseModel):
    model_config = ANSWER

    sweeps: list[SweepSummary]
