"""The trainer's side of the trainer ↔ controller protocol (docs/internals.md); the messages
are the models of ``cnnswarm.protocol``, which the controller reads them with.

Every call carries ``Authorization: Bearer <token>`` when a token is configured, and every write
for a job carries its ``attempt``. The controller may be restarting at any moment, so calls
retry with capped exponential back-off on connection errors and 5xx answers; only a 409 means
"stop": it raises ``StaleAttempt`` (this attempt no longer owns the job) and is never retried.
A 4xx other than 409 is the controller's final word and raises the matching ``CnnSwarmError``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from cnnswarm.atomic import write_atomic, write_text_atomically
from cnnswarm.errors import (
    CnnSwarmError,
    Conflict,
    InvalidInput,
    NotFound,
    StaleAttempt,
    Unauthorized,
    Unprocessable,
)
from cnnswarm.http import auth_headers
from cnnswarm.protocol import FailureReport, Heartbeat, HeartbeatAnswer, JobWrite, parse
from cnnswarm.urls import quote_segment

log = logging.getLogger(__name__)

# Seconds to wait for a connection / for the answer's first byte; big bodies stream after that.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0


class ControllerUnavailable(CnnSwarmError):
    """The controller could not be reached (or kept failing) within the retry budget."""

    status = 503
    code = "ControllerUnavailable"


class RetriesAborted(Exception):
    """A retry loop was abandoned because the caller asked to stop (the job is being stopped)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential back-off; ``deadline_s=None`` retries until ``should_stop`` says so."""

    deadline_s: float | None = 30.0
    first_delay_s: float = 0.2
    max_delay_s: float = 5.0


# Heartbeats must not linger: the agent's loop does its own back-off between rounds.
ONE_TRY = RetryPolicy(deadline_s=0.0)


def _error_from_answer(response: requests.Response, what: str) -> CnnSwarmError:
    """The ``CnnSwarmError`` a final (non-retried) 4xx answer stands for."""
    try:
        body = response.json()
        message = str(body.get("error") or body.get("exception") or response.reason)
    except ValueError:
        body, message = {}, response.text[:200] or response.reason
    text = f"{what}: controller answered {response.status_code}: {message}"
    error_types: dict[int, type[CnnSwarmError]] = {
        400: InvalidInput,
        401: Unauthorized,
        403: Unauthorized,
        404: NotFound,
        422: Unprocessable,
    }
    if response.status_code == 409:
        if isinstance(body, dict) and body.get("exception") not in (None, "StaleAttempt"):
            return Conflict(text)
        return StaleAttempt(text)
    return error_types.get(response.status_code, InvalidInput)(text)


class ControllerClient:
    """Calls from a trainer (its agent or a job's child process) to the controller.

    ``should_stop`` is polled while backing off; when it returns True the retry loop raises
    ``RetriesAborted`` so a cancelled job does not wait for an absent controller.

    ``base_url`` may list several controllers separated by commas (controllers sharing one
    PostgreSQL database are interchangeable): a connection error or a 5xx moves the client on
    to the next one.
    """

    def __init__(
        self,
        base_url: str,
        token: str = "",
        *,
        should_stop: Callable[[], bool] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.base_urls = [u.strip().rstrip("/") for u in base_url.split(",") if u.strip()]
        if not self.base_urls:
            raise ValueError("a controller URL is required")
        self._current = 0
        self.token = token
        self.should_stop = should_stop or (lambda: False)
        self.session = session or requests.Session()

    # -- the retry loop ---------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        policy: RetryPolicy,
        ok: tuple[int, ...] = (200, 201, 202, 204),
        final: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> requests.Response:
        """Send until an answer in ``ok`` or ``final`` comes back; raise for other 4xx.

        Connection errors and 5xx answers are retried with back-off until the policy's
        deadline, then ``ControllerUnavailable`` is raised.
        """
        headers = {**auth_headers(self.token), **kwargs.pop("headers", {})}
        started = time.monotonic()
        delay = policy.first_delay_s
        what = f"{method} {path}"
        while True:
            try:
                response = self.session.request(
                    method,
                    self.base_url + path,
                    headers=headers,
                    timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
                    **kwargs,
                )
            except requests.RequestException as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code in ok or response.status_code in final:
                    return response
                if response.status_code < 500:
                    raise _error_from_answer(response, what)
                problem = f"HTTP {response.status_code}"
                response.close()
            self._fail_over()
            elapsed = time.monotonic() - started
            if policy.deadline_s is not None and elapsed + delay > policy.deadline_s:
                raise ControllerUnavailable(f"{what} failed for {elapsed:.1f} s: {problem}")
            log.warning("%s failed (%s); retrying in %.1f s", what, problem, delay)
            self._sleep_unless_stopped(delay)
            delay = min(delay * 2, policy.max_delay_s)

    @property
    def base_url(self) -> str:
        """The controller this client talks to now."""
        return self.base_urls[self._current]

    def _fail_over(self) -> None:
        self._current = (self._current + 1) % len(self.base_urls)

    def _sleep_unless_stopped(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if self.should_stop():
                raise RetriesAborted("stop requested while waiting for the controller")
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    # -- the protocol -------------------------------------------------------------------------

    def heartbeat(self, beat: Heartbeat) -> HeartbeatAnswer:
        """POST /internal/v1/heartbeat once (no retry); the controller's answer.

        An answer that is not a ``HeartbeatAnswer`` raises ``ControllerUnavailable``."""
        response = self._request(
            "POST", "/internal/v1/heartbeat", policy=ONE_TRY, json=beat.model_dump(mode="json")
        )
        try:
            return parse(HeartbeatAnswer, response.json())
        except (ValueError, InvalidInput) as exc:
            raise ControllerUnavailable(f"the heartbeat answer does not fit: {exc}") from None

    def fetch_dataset(
        self, dataset_id: str, cache_dir: Path, *, policy: RetryPolicy = RetryPolicy(None)
    ) -> Path:
        """The dataset's npz file, from the local cache when the controller's ETag still matches.

        Files live under ``cache_dir/<hash of id>/<hash of ETag>.npz`` and are written
        atomically (temp file + rename), so concurrent jobs and crashes never see a torn file.
        """
        folder = cache_dir / hashlib.sha256(dataset_id.encode()).hexdigest()[:24]
        folder.mkdir(parents=True, exist_ok=True)
        meta_path = folder / "current.json"
        cached: Path | None = None
        headers: dict[str, str] = {}
        try:
            meta = json.loads(meta_path.read_text())
            candidate = folder / str(meta["file"])
            if candidate.is_file() and meta.get("etag"):
                cached = candidate
                headers["If-None-Match"] = str(meta["etag"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        path = f"/internal/v1/datasets/{quote_segment(dataset_id)}/arrays"
        response = self._request(
            "GET", path, policy=policy, final=(304,), headers=headers, stream=True
        )
        with response:
            if response.status_code == 304:
                if cached is None:
                    raise ControllerUnavailable(f"GET {path}: 304 without a cached copy")
                return cached
            etag = response.headers.get("ETag", "")
            name = (hashlib.sha256(etag.encode()).hexdigest()[:24] if etag else "latest") + ".npz"
            target = folder / name
            write_atomic(target, response.iter_content(chunk_size=1 << 20))
        if etag:
            write_text_atomically(meta_path, json.dumps({"etag": etag, "file": name}))
        return target

    def get_checkpoint(
        self, job_id: str, *, policy: RetryPolicy = RetryPolicy(None)
    ) -> bytes | None:
        """The job's latest checkpoint bytes, or None when it has none (404)."""
        path = f"/internal/v1/jobs/{quote_segment(job_id)}/checkpoint"
        response = self._request("GET", path, policy=policy, ok=(200,), final=(404,))
        if response.status_code == 404:
            return None
        return response.content

    def put_checkpoint(
        self, job_id: str, attempt: int, data: bytes, *, policy: RetryPolicy = RetryPolicy()
    ) -> None:
        """Store a checkpoint for this attempt; ``StaleAttempt`` when fenced."""
        path = f"/internal/v1/jobs/{quote_segment(job_id)}/checkpoint"
        self._request(
            "PUT",
            path,
            policy=policy,
            params=JobWrite(attempt=attempt).model_dump(),
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )

    def post_result(
        self, job_id: str, attempt: int, data: bytes, *, policy: RetryPolicy = RetryPolicy(None)
    ) -> None:
        """Publish the final model artefact; ``StaleAttempt`` when fenced."""
        path = f"/internal/v1/jobs/{quote_segment(job_id)}/result"
        self._request(
            "POST",
            path,
            policy=policy,
            params=JobWrite(attempt=attempt).model_dump(),
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )

    def post_failure(
        self,
        job_id: str,
        attempt: int,
        error: str,
        retryable: bool,
        *,
        policy: RetryPolicy = RetryPolicy(300.0),
    ) -> None:
        """Report that this attempt failed; ``StaleAttempt`` when fenced."""
        path = f"/internal/v1/jobs/{quote_segment(job_id)}/failure"
        report = FailureReport.of(attempt, error, retryable)
        self._request("POST", path, policy=policy, json=report.model_dump(mode="json"))

    def forward_seed_train(self, body: bytes, headers: Mapping[str, str]) -> requests.Response:
        """POST a seed ``/train`` body, byte for byte, to the controller's seed ``/train``
        once (with ``headers``: its content type, an ``Idempotency-Key``); the controller's
        answer, whatever it is. ``ControllerUnavailable`` when no controller answers."""
        try:
            return self.session.post(
                self.base_url + "/train",
                data=body,
                headers={**headers, **auth_headers(self.token)},
                timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
            )
        except requests.RequestException as exc:
            raise ControllerUnavailable(
                f"the controller at {self.base_url} cannot be reached: {type(exc).__name__}"
            ) from exc
