"""/api/v1/jobs: submit, list, inspect, cancel and follow training jobs.

A 202 means the job is committed to the database: no crash after that loses it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from flask import Blueprint, Response, request, stream_with_context

from cnnswarm.controller.api_schemas import (
    ErrorBody,
    JobList,
    JobListQuery,
    JobSubmitHeaders,
    validated,
)
from cnnswarm.controller.api_schemas import Job as JobAnswer
from cnnswarm.controller.context import ctx, token_required
from cnnswarm.controller.job_requests import JobRequest, parse_job_request
from cnnswarm.controller.openapi import doc
from cnnswarm.http import json_body
from cnnswarm.store.artifacts import check_id
from cnnswarm.store.gangs import GangSize
from cnnswarm.store.jobs import Job, JobState, job_to_json

bp = Blueprint("jobs", __name__, url_prefix="/api/v1")

EVENT_POLL_S = 0.25
EVENT_KEEPALIVE_S = 15.0


def describe_job(job: Job) -> dict[str, Any]:
    """A job's JSON, with its queue position and why it is waiting while queued, and its
    attempt history (listings leave the history out: one more query per job)."""
    body = describe_jobs([job])[0]
    body["attempts"] = ctx().stores.jobs.attempts(job.id)
    return body


def describe_jobs(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """``describe_job`` for each job, in a constant number of queries however many."""
    context = ctx()
    positions = context.stores.jobs.queue_positions(jobs)
    any_gang_runs = any(job.workers > 1 and job.state == JobState.RUNNING for job in jobs)
    running_gangs = context.stores.gangs.running_gangs() if any_gang_runs else {}
    capacity = context.scheduler.capacity() if positions else None
    bodies = []
    for job in jobs:
        body = job_to_json(job, queue_position=positions.get(job.id))
        size = GangSize.of(job)
        if job.id in running_gangs:
            body["gang"] = [member.trainer_id for member in running_gangs[job.id]]
        if capacity is not None and job.id in positions:
            needed = 1 if size is None else size.needed(resumed=job.attempt > 0)
            body["waiting_reason"] = capacity.waiting_reason(positions[job.id], workers=needed)
        bodies.append(body)
    return bodies


def submit_job(
    body: dict[str, Any], *, request_model: type[JobRequest] = JobRequest
) -> tuple[Job, bool]:
    """Validate and store a job request (shared by /api/v1/jobs and, with its own
    ``request_model``, the seed's /train)."""
    key = idempotency_key()
    context = ctx()
    spec = parse_job_request(body, context.datasets, request_model, idempotency_key=key)
    job, created = context.stores.jobs.submit(spec, idempotency_key=key)
    if created:
        context.scheduler.wake()
    return job, created


def idempotency_key() -> str | None:
    """The request's ``Idempotency-Key`` header, checked (a job or a sweep submission)."""
    headers = {
        name: request.headers[name] for name in ("Idempotency-Key",) if name in request.headers
    }
    return validated(JobSubmitHeaders, headers, what="header").idempotency_key


@bp.post("/jobs")
@token_required
@doc(
    "Submit a training job",
    body=JobRequest,
    responses={202: JobAnswer, 200: JobAnswer, 409: ErrorBody, 422: ErrorBody},
    headers=JobSubmitHeaders,
)
def create_job() -> tuple[Response, int]:
    job, created = submit_job(json_body())
    response = Response(json.dumps(describe_job(job)), mimetype="application/json")
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return response, 202 if created else 200


@bp.get("/jobs")
@doc(
    "List the most recent jobs (default 1000) in submission order, optionally of one state",
    responses={200: JobList},
    query=JobListQuery,
)
def list_jobs() -> dict[str, Any]:
    query = validated(JobListQuery, request.args.to_dict(), what="query parameter")
    jobs = ctx().stores.jobs.list_jobs(query.state, limit=query.limit)
    return {"jobs": describe_jobs(jobs)}


@bp.get("/jobs/<job_id>")
@doc("One job", responses={200: JobAnswer})
def get_job(job_id: str) -> dict[str, Any]:
    check_id(job_id, "job_id")
    return describe_job(ctx().stores.jobs.get(job_id))


@bp.post("/jobs/<job_id>/cancel")
@token_required
@doc("Cancel a queued or running job", responses={200: JobAnswer, 409: ErrorBody})
def cancel_job(job_id: str) -> dict[str, Any]:
    check_id(job_id, "job_id")
    context = ctx()
    job, trainer_id = context.stores.jobs.cancel(job_id)
    if trainer_id is not None:
        context.scheduler.tell_trainer_to_cancel(trainer_id, job_id)
        members = context.stores.gangs.members(job_id, job.attempt)[1:]  # a gang's ranks 1..
        context.scheduler.gangs.cancel_members(job_id, [m.trainer_id for m in members])
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
            # The end event carries the job's whole answer (GET /jobs/<id>: attempts too), so a
            # client that waits on the stream gets what it would read; progress stays cheap.
            payload = json.dumps(describe_job(job) if job.state.is_final else job_to_json(job))
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
