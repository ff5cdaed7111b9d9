"""/api/v1/sweeps: submit, list, inspect and cancel hyperparameter sweeps.

A 202 means the sweep is committed to the database: no crash after that loses it. Its trials
are ordinary jobs (listed in /api/v1/jobs with their ``sweep``), which the scheduling leader
creates as the search proceeds (``controller.sweeps``).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, request

from cnnswarm.controller.api_schemas import ErrorBody, JobSubmitHeaders, validated
from cnnswarm.controller.context import ctx, token_required
from cnnswarm.controller.jobs_api import idempotency_key
from cnnswarm.controller.openapi import doc
from cnnswarm.controller.sweep_schemas import (
    Sweep,
    SweepList,
    SweepListQuery,
    SweepRequest,
    parse_sweep_request,
)
from cnnswarm.controller.sweeps import SWEEP_CANCELLED_REASON, cancel_live_trials
from cnnswarm.http import json_body
from cnnswarm.store.artifacts import check_id
from cnnswarm.store.sweeps import sweep_to_json

bp = Blueprint("sweeps", __name__, url_prefix="/api/v1")


def describe_sweep(sweep_id: str) -> dict[str, Any]:
    """A sweep's JSON with its trials."""
    stores = ctx().stores
    sweep = stores.sweeps.get(sweep_id)
    return sweep_to_json(sweep, stores.sweeps.trials([sweep.id])[sweep.id])


@bp.post("/sweeps")
@token_required
@doc(
    "Start a hyperparameter sweep",
    body=SweepRequest,
    responses={202: Sweep, 200: Sweep, 422: ErrorBody},
    headers=JobSubmitHeaders,
)
def create_sweep() -> tuple[Response, int]:
    key = idempotency_key()
    context = ctx()
    stored, request_hash = parse_sweep_request(json_body(), context.datasets)
    sweep, created = context.stores.sweeps.submit(
        stored, request_hash=request_hash, idempotency_key=key
    )
    if created:
        context.scheduler.wake()
    response = Response(json.dumps(describe_sweep(sweep.id)), mimetype="application/json")
    response.headers["Location"] = f"/api/v1/sweeps/{sweep.id}"
    return response, 202 if created else 200


@bp.get("/sweeps")
@doc(
    "List the most recent sweeps (default 1000), oldest first",
    responses={200: SweepList},
    query=SweepListQuery,
)
def list_sweeps() -> dict[str, Any]:
    query = validated(SweepListQuery, request.args.to_dict(), what="query parameter")
    stores = ctx().stores
    sweeps = stores.sweeps.list_sweeps(query.limit)
    trials = stores.sweeps.trials([sweep.id for sweep in sweeps])
    return {"sweeps": [sweep_to_json(s, trials[s.id], with_trials=False) for s in sweeps]}


@bp.get("/sweeps/<sweep_id>")
@doc("One sweep with its trials", responses={200: Sweep})
def get_sweep(sweep_id: str) -> dict[str, Any]:
    check_id(sweep_id, "sweep_id")
    return describe_sweep(sweep_id)


@bp.post("/sweeps/<sweep_id>/cancel")
@token_required
@doc("Cancel a sweep and its live trials", responses={200: Sweep, 409: ErrorBody})
def cancel_sweep(sweep_id: str) -> dict[str, Any]:
    check_id(sweep_id, "sweep_id")
    context = ctx()
    sweep = context.stores.sweeps.cancel(sweep_id)
    trials = context.stores.sweeps.trials([sweep.id])[sweep.id]
    cancel_live_trials(
        context.stores, trials, SWEEP_CANCELLED_REASON, context.scheduler.tell_trainer_to_cancel
    )
    context.scheduler.wake()
    return describe_sweep(sweep_id)
