"""What a job's child process tells its parent, the job runner: the one vocabulary both import.

A child sends any number of ``progress`` messages while it trains, then exactly one final
message that says how it ended: ``succeeded``, ``failed`` (with the error), ``cancelled`` (it
saw its cancel event, or gave up waiting for the controller because of it) or ``fenced`` (the
controller answered 409: another attempt owns the job). A child that dies before its final
message sends none; ``outcome.decide_outcome`` turns that into a failure with the exit code.

Messages are plain dicts typed per kind (they cross a ``multiprocessing`` queue by pickle);
build them with the constructors below so each kind's payload is written once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, TypedDict


class MessageKind(StrEnum):
    """The kinds of child→parent message; every kind but ``progress`` is a final message."""

    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FENCED = "fenced"


class ProgressMessage(TypedDict):
    """Training progress: fraction done (0..1), the epoch reached and each epoch's metrics."""

    kind: Literal[MessageKind.PROGRESS]
    progress: float
    epoch: int
    metrics: list[dict[str, Any]]


class SucceededMessage(TypedDict):
    """The result was delivered to the controller."""

    kind: Literal[MessageKind.SUCCEEDED]


class FailedMessage(TypedDict):
    """The job raised ``error`` (``"<ExcType>: message"``); ``retryable``: a retry may help."""

    kind: Literal[MessageKind.FAILED]
    error: str
    retryable: bool


class CancelledMessage(TypedDict):
    """The child saw its cancel event and stopped."""

    kind: Literal[MessageKind.CANCELLED]


class FencedMessage(TypedDict):
    """The controller refused this attempt (409): ``error`` is its answer."""

    kind: Literal[MessageKind.FENCED]
    error: str


FinalMessage = SucceededMessage | FailedMessage | CancelledMessage | FencedMessage
ChildMessage = ProgressMessage | FinalMessage


def progress_message(progress: float, epoch: int, metrics: list[dict[str, Any]]) -> ProgressMessage:
    """A ``progress`` message (values copied, so the queue never shares the trainer's lists)."""
    return {
        "kind": MessageKind.PROGRESS,
        "progress": float(progress),
        "epoch": int(epoch),
        "metrics": [dict(m) for m in metrics],
    }


def succeeded() -> SucceededMessage:
    """The final message of a job whose result was delivered."""
    return {"kind": MessageKind.SUCCEEDED}


def failed(error: str, *, retryable: bool = False) -> FailedMessage:
    """The final message of a job that raised ``error``."""
    return {"kind": MessageKind.FAILED, "error": error, "retryable": retryable}


def cancelled() -> CancelledMessage:
    """The final message of a job that stopped on its cancel event."""
    return {"kind": MessageKind.CANCELLED}


def fenced(error: str) -> FencedMessage:
    """The final message of a job whose attempt the controller refused (409)."""
    return {"kind": MessageKind.FENCED, "error": error}
