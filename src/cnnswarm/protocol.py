"""The trainer ↔ controller protocol: every message the two roles exchange, declared once.

Both sides import this module (it sits below both and imports neither, nor torch): the sender
builds a message and sends ``message.model_dump(mode="json")``; the receiver gets it back with
``parse(Message, body)``, which raises ``InvalidInput`` in the usual error shape (``field``
names the key at fault, ``jobs[0].attempt`` inside a heartbeat's job list). The declarations
are strict (``1`` is not ``true``, ``"3"`` is not ``3``), bounded, and refuse unknown keys.

- ``Dispatch``: controller → trainer, the body of ``POST /train`` (with ``rank``,
  ``world_size`` and rank 0's rendezvous address for a data-parallel job); ``DispatchAnswer``
  comes back;
- ``Heartbeat``, with a ``JobReport`` (lease renewal and progress) per running job: trainer →
  controller, ``POST /internal/v1/heartbeat``; ``HeartbeatAnswer`` (``Drop``: jobs to stop)
  comes back;
- ``JobWrite``: the attempt a checkpoint ``PUT`` or a result ``POST`` writes for
  (``?attempt=N``, fencing);
- ``FailureReport``: trainer → controller, ``POST /internal/v1/jobs/<id>/failure``.

Checkpoints and results themselves travel as bytes (``ml.checkpoint``, ``ml.artifact``).
The shared rules live here too: ``check_id`` (the one id rule) and ``check_example_idxs`` (the
one ``example_idxs`` rule), and ``seed_status_entry``, the one builder of a job's entry in the
seed's ``/status``, which both roles serve.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, TypeGuard, TypeVar

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cnnswarm.errors import InvalidInput

# -- the shared rules ------------------------------------------------------------------------

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_SAFE_ID_RULE = (
    "must be 1-128 characters of letters, digits, '_', '.', '-' starting with a letter or digit"
)


def _is_safe_id(value: object) -> TypeGuard[str]:
    # ".." is refused too: ids become file names under HOME_DIR.
    return isinstance(value, str) and bool(SAFE_ID.fullmatch(value)) and ".." not in value


def check_id(value: object, field: str) -> str:
    """``value`` if it is a safe id (letters, digits, ``_ . -``, 1-128 chars), else
    ``InvalidInput`` naming ``field``."""
    if not _is_safe_id(value):
        raise InvalidInput(f"{field} {_SAFE_ID_RULE}, got {value!r}", field=field)
    return value


def _safe_id(value: str) -> str:
    if not _is_safe_id(value):
        raise PydanticCustomError("safe_id", f"Input {_SAFE_ID_RULE}")
    return value


# A job, model, dataset or trainer id (check_id's rule; the schema shows its pattern).
SafeId = Annotated[
    str,
    Field(max_length=128, json_schema_extra={"pattern": SAFE_ID.pattern}),
    AfterValidator(_safe_id),
]

_EXAMPLE_IDXS_RULE = "must be null or [start, end]: two integers, 0 <= start < end"


def _example_idxs(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # One message for every way to miss the rule (not "list too short" for one of them).
    try:
        rows = handler(value)
    except ValidationError:
        raise PydanticCustomError("example_idxs", f"Input {_EXAMPLE_IDXS_RULE}") from None
    if not rows[0] < rows[1]:
        raise PydanticCustomError("example_idxs", f"Input {_EXAMPLE_IDXS_RULE}")
    return rows


# The seed's example_idxs: training rows [start, end). Whether ``end`` fits a training set is
# checked where the set is known (check_example_idxs with train_size).
ExampleIdxs = Annotated[
    list[Annotated[int, Field(ge=0)]],
    Field(
        min_length=2,
        max_length=2,
        description="[start, end): train on these rows of the training set only",
    ),
    WrapValidator(_example_idxs),
]
_EXAMPLE_IDXS: TypeAdapter[list[int]] = TypeAdapter(ExampleIdxs)


def check_example_idxs(value: object, train_size: int | None = None) -> list[int]:
    """``value`` as ``[start, end]`` by the one ``example_idxs`` rule (``ExampleIdxs``), with
    ``end <= train_size`` when given; else ``InvalidInput`` naming ``example_idxs``."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = list(value)
    try:
        start, end = _EXAMPLE_IDXS.validate_python(value, strict=True)
    except ValidationError:
        shown = _shown(value)
        raise InvalidInput(
            f"example_idxs {_EXAMPLE_IDXS_RULE}, got {shown}", field="example_idxs"
        ) from None
    if train_size is not None and end > train_size:
        raise InvalidInput(
            f"example_idxs must satisfy 0 <= start < end <= {train_size} (training set size), "
            f"got [{start}, {end}]",
            field="example_idxs",
        )
    return [start, end]


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


# Attempts and epochs are stored in 32-bit integer columns; anything larger is a bad request.
MAX_COUNTER = 2**31 - 1
Attempt = Annotated[int, Field(ge=1, le=MAX_COUNTER)]
MAX_SLOTS = 1024
# The most trainers one data-parallel job runs on.
MAX_WORKERS = 64
# A failure's message is kept whole up to this length (the trainer cuts longer ones).
MAX_ERROR_CHARS = 10_000


# -- the messages ----------------------------------------------------------------------------


class Message(BaseModel):
    """A protocol message: strict, bounded, unknown keys refused, immutable once built."""

    # allow_inf_nan=False: NaN and Infinity are refused by name; protected_namespaces=():
    # model_type and model_id are ours, not pydantic's "model_".
    model_config = ConfigDict(
        strict=True, extra="forbid", allow_inf_nan=False, frozen=True, protected_namespaces=()
    )


M = TypeVar("M", bound=Message)


def parse(kind: type[M], body: object) -> M:
    """``body`` (decoded JSON) as a ``kind`` message; ``InvalidInput`` naming the first bad key
    (``jobs[0].attempt`` for a key of an object in a list)."""
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        problems = exc.errors(include_url=False)
        unknown = [p["loc"] for p in problems if p["type"] == "extra_forbidden"]
        if unknown and all(len(loc) > 1 for loc in unknown):
            # Only inside an object of a list (a heartbeat's jobs): named in full.
            field = _item_key(unknown[0])
            raise InvalidInput(f"unknown key {field}", field=field) from None
        error = InvalidInput.from_validation_error(exc, known=kind.model_fields)
        if not unknown and len(problems[0]["loc"]) > 2:
            error.field = _item_key(problems[0]["loc"])
        raise error from None


def _item_key(location: tuple[int | str, ...]) -> str:
    """``jobs[0].attempt`` for the location ``("jobs", 0, "attempt", ...)``."""
    if len(location) < 3 or not isinstance(location[1], int):
        return str(location[0])
    return f"{location[0]}[{location[1]}].{location[2]}"


class Dispatch(Message):
    """One attempt of one job, as the controller's scheduler dispatches it (``POST /train``).

    ``train_opts`` are the job's options as the controller resolved them when it accepted the
    job (``TrainOptions.to_dict()``); the job process checks them again with
    ``TrainOptions.from_dict``: that declaration lives in ``ml``, which would bring torch into
    the trainer's server process.
    """

    job_id: SafeId
    attempt: Attempt
    model_id: SafeId
    model_type: Annotated[str, Field(min_length=1, max_length=64)]
    dataset: SafeId
    example_idxs: ExampleIdxs | None = None
    train_opts: dict[str, Any] | None = None
    # A data-parallel job (world_size > 1): this member's rank and where rank 0 listens.
    # Rank 0's dispatch has no master_port: its trainer opens one and answers it
    # (DispatchAnswer.rendezvous_port); the others are then dispatched with it.
    rank: Annotated[int, Field(ge=0, lt=MAX_WORKERS)] = 0
    world_size: Annotated[int, Field(ge=1, le=MAX_WORKERS)] = 1
    master_addr: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,253}$")] | None = None
    master_port: Annotated[int, Field(ge=1, le=65_535)] | None = None

    @model_validator(mode="after")
    def _a_coherent_gang(self) -> Dispatch:
        if self.rank >= self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of {self.world_size}")
        if self.world_size > 1 and self.master_addr is None:
            raise ValueError("a gang member needs master_addr (rank 0's host)")
        if self.rank > 0 and self.master_port is None:
            raise ValueError("ranks > 0 need master_port (rank 0's rendezvous port)")
        return self

    @property
    def is_gang(self) -> bool:
        """One member of a data-parallel job."""
        return self.world_size > 1


class DispatchAnswer(Message):
    """The trainer's 202 to a dispatch: the seed's ``status``, the job, and for rank 0 of a
    gang the port it opened for the others (``rendezvous_port``)."""

    status: dict[str, bool]
    job_id: SafeId
    rendezvous_port: Annotated[int, Field(ge=1, le=65_535)] | None = None


def _advisory(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # A report that does not fit is left out, not refused: the lease renewal it rides on
    # matters more than one odd progress figure.
    try:
        return handler(value)
    except ValidationError:
        return None


# One epoch's figures (train.py: epoch, train_loss, ..., images_per_s may be null). A diverged
# run's loss is NaN, which JSON carries as NaN and the store keeps.
EpochMetrics = dict[str, int | Annotated[float, AllowInfNan(True)] | None]


class JobReport(Message):
    """One running job of a heartbeat: it renews the job's lease and reports its progress
    (``None``: not reported; a progress or metrics that do not fit are ignored, not refused)."""

    job_id: SafeId
    attempt: Attempt
    progress: Annotated[float | None, Field(ge=0.0, le=1.0), WrapValidator(_advisory)] = None
    epoch: Annotated[int, Field(ge=0, le=MAX_COUNTER)] | None = None
    metrics: Annotated[
        list[EpochMetrics] | None, Field(max_length=10_000), WrapValidator(_advisory)
    ] = None


class Heartbeat(Message):
    """What a trainer says about itself every ``heartbeat_interval_s``."""

    trainer_id: SafeId
    url: Annotated[
        str,
        Field(pattern=r"^https?://", max_length=2048, description="the trainer's base URL"),
    ]
    slots: Annotated[int, Field(ge=1, le=MAX_SLOTS)]
    jobs: Annotated[list[JobReport], Field(max_length=MAX_SLOTS)] = []


class Drop(Message):
    """A job the trainer must stop: cancelled, reassigned (stale attempt) or unknown."""

    job_id: SafeId
    attempt: Attempt
    reason: str


class HeartbeatAnswer(Message):
    """The controller's answer to a heartbeat: jobs to drop, and the timing it expects."""

    drop: list[Drop] = []
    lease_timeout_s: Annotated[float, Field(gt=0.0)]
    heartbeat_interval_s: Annotated[float, Field(gt=0.0)]


class JobWrite(Message):
    """The attempt a checkpoint or a result is written for (``?attempt=N``): the controller
    refuses the write of any attempt but the job's current one (409 ``StaleAttempt``)."""

    attempt: Attempt

    @classmethod
    def from_query(cls, args: Mapping[str, str]) -> JobWrite:
        """The query string's ``attempt`` (text, so read as a number first); ``InvalidInput``."""
        raw = args.get("attempt")
        try:
            attempt: object = int(raw) if raw is not None else None
        except ValueError:
            attempt = raw
        return parse(cls, {"attempt": attempt})


class FailureReport(Message):
    """How an attempt failed; ``retryable``: its process was killed (e.g. by the OOM killer),
    so another attempt may succeed."""

    attempt: Attempt
    error: Annotated[str, Field(max_length=MAX_ERROR_CHARS)] = "the job failed without a message"
    retryable: bool = False

    @classmethod
    def of(cls, attempt: int, error: str, retryable: bool) -> FailureReport:
        """The report of ``error`` (cut to ``MAX_ERROR_CHARS``)."""
        return cls(attempt=attempt, error=error[:MAX_ERROR_CHARS], retryable=retryable)


# -- the seed's /status --------------------------------------------------------------------


class SeedJobStatus(Message):
    """One job as the seed's ``GET /status`` lists it (``duration`` s, ``progress`` 0-100,
    ``complete``), plus cnn-swarm's ``state``, ``attempt`` and ``model_id``; the trainer adds
    ``epoch`` and ``error``."""

    duration: Annotated[float, Field(ge=0.0)]
    progress: Annotated[float, Field(ge=0.0, le=100.0)]
    complete: bool
    state: str
    attempt: Annotated[int, Field(ge=0, le=MAX_COUNTER)]
    model_id: str
    epoch: Annotated[int, Field(ge=0, le=MAX_COUNTER)] | None = None
    error: str | None = None


def seed_status_entry(
    *,
    duration_s: float,
    progress: float,
    complete: bool,
    state: str,
    attempt: int,
    model_id: str,
    epoch: int | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A job's seed ``/status`` entry from its run time (s) and ``progress`` (0..1); the one
    builder both roles use (absent extras are left out)."""
    entry = SeedJobStatus(
        # Clocks of two controllers may disagree by a little: a duration is never negative.
        duration=round(max(0.0, duration_s), 3),
        progress=round(100.0 * min(max(progress, 0.0), 1.0), 2),
        complete=complete,
        state=state,
        attempt=attempt,
        model_id=model_id,
        epoch=epoch,
        error=error or None,
    )
    return entry.model_dump(mode="json", exclude_none=True)
