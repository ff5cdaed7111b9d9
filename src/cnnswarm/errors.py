"""The one errors module: every error knows its HTTP status and says what to do about it.

Library code (``ml``, ``store``) raises these too, so a bad option found deep in the training
engine reaches the client as a 4xx with the same message. The controller and trainer apps turn
them into JSON at one boundary (``cnnswarm.http.register_error_handlers``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError


class CnnSwarmError(Exception):
    """Base class: ``status`` is the HTTP status, ``code`` a stable machine-readable name."""

    status: int = 500
    code: str = "InternalError"

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details

    def to_json(self) -> dict[str, Any]:
        """The JSON body sent to clients; keeps the seed's ``exception`` key."""
        body: dict[str, Any] = {"exception": self.code, "error": self.message}
        if self.field is not None:
            body["field"] = self.field
        body.update(self.details)
        return body


class InvalidInput(CnnSwarmError):
    """The request (or option, or file) is malformed; fix it and send it again."""

    status = 400
    code = "InvalidInputArg"

    @classmethod
    def from_validation_error(
        cls, error: ValidationError, *, known: Iterable[str], what: str = "field"
    ) -> InvalidInput:
        """pydantic's first complaint as one InvalidInput whose ``field`` is the top-level key
        at fault; unknown top-level keys are listed together with the ``known`` ones."""
        problems = error.errors(include_url=False)
        unknown = sorted(
            str(p["loc"][0]) for p in problems if p["type"] in _UNKNOWN_KEY and len(p["loc"]) == 1
        )
        if unknown:
            return cls(
                f"unknown {what}(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                field=unknown[0],
            )
        problem = problems[0]
        location = problem["loc"]
        where = ".".join(str(part) for part in location) or "the body"
        if problem["type"] in _UNKNOWN_KEY:  # inside an object: {"b64": ..., "typo": ...}
            inside = ".".join(str(part) for part in location[:-1])
            return cls(f"{inside} has an unknown key {location[-1]!r}", field=str(location[0]))
        if problem["type"] in _MISSING:
            return cls(f"{where} is required", field=str(location[0]) if location else None)
        message = _IN_JSON_TERMS.get(problem["type"], problem["msg"])
        _, _, rest = message.partition(" ")
        # "Input should be ..." and "String should match ..." read better as "lr should ..."
        said = f"{where} {rest}" if rest.startswith(("should ", "must ")) else f"{where}: {message}"
        shown = repr(problem.get("input"))
        if len(shown) > 80:  # a hostile body can be megabytes long
            shown = shown[:77] + "..."
        return cls(f"{said}, got {shown}", field=str(location[0]) if location else None)


_UNKNOWN_KEY = frozenset({"extra_forbidden", "unexpected_keyword_argument"})
_MISSING = frozenset({"missing", "missing_keyword_argument"})
# pydantic speaks Python; clients send JSON.
_IN_JSON_TERMS = {
    "dict_type": "Input should be an object",
    "list_type": "Input should be an array",
    "bool_type": "Input should be true or false",
}


class Unprocessable(CnnSwarmError):
    """Well-formed but contradicts something (e.g. an Idempotency-Key reused with another body)."""

    status = 422
    code = "Unprocessable"


class NotFound(CnnSwarmError):
    """The named job, model, dataset or alias does not exist."""

    status = 404
    code = "NotFound"


class Conflict(CnnSwarmError):
    """The request clashes with current state (a duplicate ``model_id``, a stale attempt)."""

    status = 409
    code = "Conflict"


class StaleAttempt(Conflict):
    """A trainer wrote for an attempt that no longer owns the job (fencing)."""

    code = "StaleAttempt"


class PayloadTooLarge(CnnSwarmError):
    """An upload is over the configured size limit."""

    status = 413
    code = "PayloadTooLarge"


class Unauthorized(CnnSwarmError):
    """The API token is missing or wrong."""

    status = 401
    code = "Unauthorized"


class Overloaded(CnnSwarmError):
    """Too many requests in flight; retry after ``retry_after`` seconds."""

    status = 503
    code = "Overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class NoTrainer(CnnSwarmError):
    """No trainer could take the job right now (seed route ``/train``)."""

    status = 503
    code = "TrainInitFailed"


class DatasetUnavailable(CnnSwarmError):
    """A dataset's files are absent and cannot be downloaded; the message says what to put where."""

    status = 409
    code = "DatasetUnavailable"


class GangBroken(RuntimeError):
    """A data-parallel job's gang could not meet, or a member left it mid-run (not an HTTP
    error): this attempt cannot go on; another, on a new gang, may."""


class TrainingCancelled(Exception):
    """Raised inside the training loop when cancellation was requested (not an HTTP error)."""
