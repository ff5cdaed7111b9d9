"""/api/v1/jobs: submit, list, inspect, cancel and follow training jobs.

A 202 means the job is committed to the database: no crash after that loses it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from flask import Blueprint, Response, request, stream_with_context

from cnnswarm.controller.context import ctx
from cnnswarm.controller.job_requests import JobRequest, parse_job_request
from cnnswarm.controller.openapi import ERROR, JOB, doc
from cnnswarm.errors import InvalidInput
from cnnswarm.http import json_body, require_token
from cnnswarm.store.artifacts import check_id
from cnnswarm.store.jobs import Job, JobState, job_to_json

bp = Blueprint("jobs", __name__, url_prefix="/api/v1")
token_required = require_token(lambda: ctx().settings.api_token)

EVENT_POLL_S = 0.25
EVENT_KEEPALIVE_S = 15.0


def describe_job(job: Job) -> dict[str, Any]:
    """A job's JSON, with its queue position and why it is waiting while queued."""
    return describe_jobs([job])[0]


def describe_jobs(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """``describe_job`` for each job, in a constant number of queries however many."""
    context = ctx()
    positions = context.stores.jobs.queue_positions(jobs)
    if not positions:
        return [job_to_json(job) for job in jobs]
    capacity = context.scheduler.capacity()
    bodies = []
    for job in jobs:
        body = job_to_json(job, queue_position=positions.get(job.id))
        if job.id in positions:
            body["waiting_reason"] = capacity.waiting_reason(positions[job.id])
        bodies.append(body)
    return bodies


def submit_job(body: dict[str, Any], *, default_dataset: str | None = None) -> tuple[Job, bool]:
    """Validate and store a job request (shared by /api/v1/jobs and the seed's /train)."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= 200:
        raise InvalidInput("Idempotency-Key must be 1-200 characters", field="Idempotency-Key")
    context = ctx()
    spec = parse_job_request(
        body, context.datasets, default_dataset=default_dataset, idempotency_key=key
    )
    job, created = context.stores.jobs.submit(spec, idempotency_key=key)
    if created:
        context.scheduler.wake()
    return job, created


@bp.post("/jobs")
@token_required
@doc(
    "Submit a training job",
    body=JobRequest,
    responses={202: JOB, 200: JOB, 409: ERROR, 422: ERROR},
    headers={"Idempotency-Key": {"type": "string", "minLength": 1, "maxLength": 200}},
)
def create_job() -> tuple[Response, int]:
    job, created = submit_job(json_body())
    response = Response(json.dumps(describe_job(job)), mimetype="application/json")
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return response, 202 if created else 200


@bp.get("/jobs")
@doc(
    "List the most recent jobs (default 1000) in submission order, optionally of one state",
    responses={200: {"type": "object", "properties": {"jobs": {"type": "array", "items": JOB}}}},
    query={
        "state": {"type": "string", "enum": [s.value for s in JobState]},
        "limit": {"type": "integer", "minimum": 1, "maximum": 10_000},
    },
)
def list_jobs() -> dict[str, Any]:
    raw_state = request.args.get("state")
    state = None
    if raw_state is not None:
        try:
            state = JobState(raw_state)
        except ValueError:
            raise InvalidInput(
                f"state must be one of {', '.join(s.value for s in JobState)}", field="state"
            ) from None
    raw_limit = request.args.get("limit", "1000")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 10_000:
        raise InvalidInput("limit must be an integer 1..10000", field="limit")
    jobs = ctx().stores.jobs.list_jobs(state, limit=int(raw_limit))
    return {"jobs": describe_jobs(jobs)}


@bp.get("/jobs/<job_id>")
@doc("One job", responses={200: JOB})
def get_job(job_id: str) -> dict[str, Any]:
    check_id(job_id, "job_id")
    return describe_job(ctx().stores.jobs.get(job_id))


@bp.post("/jobs/<job_id>/cancel")
@token_required
@doc("Cancel a queued or running job", responses={200: JOB, 409: ERROR})
def cancel_job(job_id: str) -> dict[str, Any]:
    check_id(job_id, "job_id")
    context = ctx()
    job, trainer_id = context.stores.jobs.cancel(job_id)
    if trainer_id is not None:
        context.scheduler.tell_trainer_to_cancel(trainer_id, job_id)
    return describe_job(job)


@bp.get("/jobs/<job_id>/events")
@doc(
    "Server-sent events of a job's progress until it ends (text/event-stream)",
    responses={200: None},
)
def job_events(job_id: str) -> Response:
    check_id(job_id, "job_id")
    context = ctx()
    context.stores.jobs.get(job_id)  # 404 before the stream starts

    def stream() -> Iterator[str]:
        last: str | None = None
        last_sent = time.monotonic()
        while True:
            job = context.stores.jobs.get(job_id)
            payload = json.dumps(job_to_json(job))
            if payload != last:
                last, last_sent = payload, time.monotonic()
                yield f"event: {'end' if job.state.is_final else 'progress'}\ndata: {payload}\n\n"
            elif time.monotonic() - last_sent > EVENT_KEEPALIVE_S:
                last_sent = time.monotonic()
                yield ": keep-alive\n\n"
            if job.state.is_final:
                return
            time.sleep(EVENT_POLL_S)

    response = Response(stream_with_context(stream()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response
