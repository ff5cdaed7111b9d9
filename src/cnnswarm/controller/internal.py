"""/internal/v1: what trainers call (heartbeats, data, checkpoints, results).

Every JSON body and ``?attempt=`` is read through its ``cnnswarm.protocol`` model, the same
declaration the trainer builds it from; what does not fit is a 400 naming the field.

Every write names the job's ``attempt``; the store rejects a stale one with 409
``StaleAttempt`` (fencing), so a trainer that lost its lease can never overwrite the
checkpoint or publish the model of the attempt that replaced it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request, send_file

from cnnswarm.atomic import write_atomic
from cnnswarm.controller.context import ctx, token_required
from cnnswarm.controller.metrics import RequeueReason
from cnnswarm.controller.model_publish import publish_model
from cnnswarm.errors import NotFound
from cnnswarm.http import json_body
from cnnswarm.ml.artifact import artifact_from_bytes
from cnnswarm.ml.checkpoint import checkpoint_from_bytes
from cnnswarm.protocol import (
    Drop,
    FailureReport,
    Heartbeat,
    HeartbeatAnswer,
    JobWrite,
    check_id,
    parse,
)
from cnnswarm.store.jobs import JobState

bp = Blueprint("internal", __name__, url_prefix="/internal/v1")


@bp.post("/heartbeat")
@token_required
def heartbeat() -> dict[str, Any]:
    """Register/renew a trainer and the leases of the jobs it reports; answer what to drop."""
    beat = parse(Heartbeat, json_body())
    context = ctx()
    settings = context.settings
    context.stores.trainers.heartbeat(
        beat.trainer_id, beat.url, beat.slots, [report.job_id for report in beat.jobs]
    )
    drop = []
    for report in beat.jobs:
        reason = context.stores.jobs.renew(
            report.job_id,
            report.attempt,
            beat.trainer_id,
            settings.lease_timeout_s,
            progress=report.progress,
            epoch=report.epoch,
            metrics=report.metrics,
        )
        if reason is not None and context.stores.gangs.renew_member(
            report.job_id, report.attempt, beat.trainer_id, settings.lease_timeout_s
        ):
            reason = None  # a rank > 0 of a data-parallel job (rank 0 alone reports progress)
        if reason is not None:
            drop.append(Drop(job_id=report.job_id, attempt=report.attempt, reason=reason))
    if len(beat.jobs) - len(drop) < beat.slots:
        context.scheduler.wake()
    answer = HeartbeatAnswer(
        drop=drop,
        lease_timeout_s=settings.lease_timeout_s,
        heartbeat_interval_s=settings.heartbeat_interval_s,
    )
    return answer.model_dump(mode="json")


@bp.get("/datasets/<dataset_id>/arrays")
@token_required
def dataset_arrays(dataset_id: str) -> Response:
    """The dataset's arrays as ``.npz`` (built-ins are materialised on first use)."""
    datasets = ctx().datasets
    path = datasets.arrays_path(dataset_id)
    etag = datasets.etag(dataset_id)
    if request.if_none_match.contains(etag):
        return Response(status=304, headers={"ETag": f'"{etag}"'})
    response = send_file(path, mimetype="application/octet-stream", conditional=False, etag=False)
    response.headers["ETag"] = f'"{etag}"'
    return response


@bp.get("/jobs/<job_id>/checkpoint")
@token_required
def get_checkpoint(job_id: str) -> Response:
    """The job's latest checkpoint, or 404 when it has none yet."""
    path = ctx().stores.artifacts.latest_checkpoint(check_id(job_id, "job_id"))
    if path is None:
        raise NotFound(f"job {job_id} has no checkpoint yet")
    return send_file(path, mimetype="application/octet-stream", conditional=False, etag=False)


@bp.put("/jobs/<job_id>/checkpoint")
@token_required
def put_checkpoint(job_id: str) -> tuple[str, int]:
    """Store a checkpoint of the owning attempt (atomically, in that attempt's own file: the
    previous one stays valid until the new one is complete, and a fenced-off attempt racing
    past the ownership check can only touch its own file)."""
    context = ctx()
    check_id(job_id, "job_id")
    attempt = JobWrite.from_query(request.args).attempt
    context.stores.jobs.check_owner(job_id, attempt)
    data = request.get_data(cache=False)
    checkpoint_from_bytes(data)  # refuse a torn or foreign file before it replaces a good one
    write_atomic(context.stores.artifacts.checkpoint_path(job_id, attempt), data)
    context.stores.jobs.mark_checkpoint(job_id, attempt)
    return "", 204


@bp.post("/jobs/<job_id>/result")
@token_required
def post_result(job_id: str) -> dict[str, Any]:
    """Publish the job's model: the file first (under its attempt's name), then, in one
    transaction, the job's success and the model's record."""
    context = ctx()
    check_id(job_id, "job_id")
    attempt = JobWrite.from_query(request.args).attempt
    job = context.stores.jobs.check_owner(job_id, attempt)
    data = request.get_data(cache=False)
    artifact = artifact_from_bytes(data)
    done = publish_model(
        context.stores.artifacts,
        context.stores.artifacts.model_path(job.model_id, attempt),
        data,
        artifact,
        model_id=job.model_id,
        job_id=job.id,
        model_type=artifact.model_type,
        dataset=job.dataset,
        train_opts=job.train_opts,
        example_idxs=job.example_idxs,
        insert=lambda row: context.stores.jobs.complete(job_id, attempt, row),
    )
    context.metrics.job_ended(done)
    context.stores.artifacts.remove_checkpoints(job_id)
    context.scheduler.wake()
    return {"job_id": done.id, "state": done.state.value, "model_id": done.model_id}


@bp.post("/jobs/<job_id>/failure")
@token_required
def post_failure(job_id: str) -> dict[str, Any]:
    """Record that the owning attempt failed. The job fails with the trainer's error, unless
    the trainer marks it ``retryable`` (its process was killed, e.g. by the OOM killer) and
    attempts are left: then it is requeued."""
    context = ctx()
    check_id(job_id, "job_id")
    report = parse(FailureReport, json_body())
    retry_within = context.settings.max_attempts if report.retryable else None
    job = context.stores.jobs.fail(job_id, report.attempt, report.error, retry_within=retry_within)
    if job.state == JobState.QUEUED:
        context.metrics.job_requeued(RequeueReason.TRAINER_FAILURE)
    context.metrics.job_ended(job)
    context.scheduler.wake()
    return {"job_id": job.id, "state": job.state.value}
