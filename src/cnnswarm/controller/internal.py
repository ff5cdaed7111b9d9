"""/internal/v1: what trainers call (heartbeats, data, checkpoints, results).

Every write names the job's ``attempt``; the store rejects a stale one with 409
``StaleAttempt`` (fencing), so a trainer that lost its lease can never overwrite the
checkpoint or publish the model of the attempt that replaced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, request, send_file

from cnnswarm.atomic import write_atomic
from cnnswarm.controller.context import ctx
from cnnswarm.controller.model_publish import publish_model
from cnnswarm.errors import InvalidInput, NotFound
from cnnswarm.http import json_body, require_token
from cnnswarm.ml.artifact import artifact_from_bytes
from cnnswarm.ml.checkpoint import checkpoint_from_bytes
from cnnswarm.store.artifacts import check_id

bp = Blueprint("internal", __name__, url_prefix="/internal/v1")
token_required = require_token(lambda: ctx().settings.api_token)


# Attempts and epochs are stored in 32-bit integer columns; anything larger is a bad request.
MAX_COUNTER = 2**31 - 1


def _attempt(raw: Any, field: str = "attempt") -> int:
    if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
        raise InvalidInput(f"{field} must be an integer", field=field)
    try:
        attempt = int(raw)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"{field} must be an integer", field=field) from None
    if not 1 <= attempt <= MAX_COUNTER:
        raise InvalidInput(f"{field} must be an integer 1..{MAX_COUNTER}", field=field)
    return attempt


def _fraction(raw: Any) -> float | None:
    """``raw`` as a number 0..1, or None when it is not one."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0.0 <= raw <= 1.0:
        return None
    return float(raw)


@dataclass(frozen=True)
class JobReport:
    """One job of a trainer's heartbeat; None for what the trainer did not report."""

    job_id: str
    attempt: int
    progress: float | None
    epoch: int | None
    metrics: list[Any] | None


def _job_report(index: int, report: dict[str, Any]) -> JobReport:
    """A heartbeat's job report: a job id, its attempt and, if present, a sane epoch (else
    400). A progress outside 0..1 or metrics that are not a list are ignored, not refused."""
    job_id = check_id(report.get("job_id"), f"jobs[{index}].job_id")
    attempt = _attempt(report.get("attempt"), f"jobs[{index}].attempt")
    epoch = report.get("epoch")
    if epoch is not None and (
        not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= MAX_COUNTER
    ):
        raise InvalidInput(f"jobs[{index}].epoch must be an integer 0..{MAX_COUNTER}", field="jobs")
    metrics = report.get("metrics")
    return JobReport(
        job_id=job_id,
        attempt=attempt,
        progress=_fraction(report.get("progress")),
        epoch=epoch,
        metrics=metrics if isinstance(metrics, list) else None,
    )


@bp.post("/heartbeat")
@token_required
def heartbeat() -> dict[str, Any]:
    """Register/renew a trainer and the leases of the jobs it reports; answer what to drop."""
    body = json_body()
    trainer_id = check_id(body.get("trainer_id"), "trainer_id")
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidInput("url must be the trainer's http(s) base URL", field="url")
    slots = body.get("slots")
    if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= 1024:
        raise InvalidInput("slots must be an integer 1..1024", field="slots")
    raw_reports = body.get("jobs", [])
    if not isinstance(raw_reports, list) or not all(isinstance(r, dict) for r in raw_reports):
        raise InvalidInput("jobs must be a list of objects", field="jobs")
    reports = [_job_report(index, report) for index, report in enumerate(raw_reports)]
    context = ctx()
    settings = context.settings
    context.stores.trainers.heartbeat(trainer_id, url, slots, [r.job_id for r in reports])
    drop = []
    for report in reports:
        reason = context.stores.jobs.renew(
            report.job_id,
            report.attempt,
            trainer_id,
            settings.lease_timeout_s,
            progress=report.progress,
            epoch=report.epoch,
            metrics=report.metrics,
        )
        if reason is not None:
            drop.append({"job_id": report.job_id, "attempt": report.attempt, "reason": reason})
    if len(reports) - len(drop) < slots:
        context.scheduler.wake()
    return {
        "drop": drop,
        "lease_timeout_s": settings.lease_timeout_s,
        "heartbeat_interval_s": settings.heartbeat_interval_s,
    }


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
    attempt = _attempt(request.args.get("attempt"))
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
    attempt = _attempt(request.args.get("attempt"))
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
    body = json_body()
    attempt = _attempt(body.get("attempt"))
    error = str(body.get("error") or "the job failed without a message")
    retry_within = context.settings.max_attempts if body.get("retryable") is True else None
    job = context.stores.jobs.fail(job_id, attempt, error, retry_within=retry_within)
    context.scheduler.wake()
    return {"job_id": job.id, "state": job.state.value}
