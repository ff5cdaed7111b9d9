"""/api/v1/datasets and /api/v1/trainers."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from flask import Blueprint, request

from cnnswarm.atomic import write_atomic
from cnnswarm.controller.context import ctx
from cnnswarm.controller.openapi import DATASET, ERROR, TRAINER, doc
from cnnswarm.errors import InvalidInput
from cnnswarm.http import require_token, uploaded_file
from cnnswarm.store.artifacts import check_id, copy_stream

bp = Blueprint("datasets", __name__, url_prefix="/api/v1")
token_required = require_token(lambda: ctx().settings.api_token)

UPLOAD_BODY = {
    "type": "object",
    "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary"}, "name": {"type": "string"}},
}


@bp.post("/datasets")
@token_required
@doc(
    "Upload a dataset: a zip or tar of class folders of images, or an .npz of x, y, classes",
    body=UPLOAD_BODY,
    body_type="multipart/form-data",
    responses={201: DATASET, 413: ERROR},
)
def upload_dataset() -> tuple[dict[str, Any], int]:
    context = ctx()
    upload = uploaded_file(context.settings.max_upload_bytes, "the archive")
    name = request.form.get("name")
    with tempfile.TemporaryDirectory(dir=context.stores.artifacts.tmp) as tmp:
        path = Path(tmp) / "upload"
        size = write_atomic(path, copy_stream(upload.stream))
        if size == 0:
            raise InvalidInput("the uploaded file is empty", field="file")
        record = context.datasets.add_upload(path, name)
    return record, 201


@bp.get("/datasets")
@doc(
    "List datasets (built-ins and uploads)",
    responses={
        200: {"type": "object", "properties": {"datasets": {"type": "array", "items": DATASET}}}
    },
)
def list_datasets() -> dict[str, Any]:
    return {"datasets": ctx().datasets.list()}


@bp.get("/datasets/<dataset_id>")
@doc("One dataset", responses={200: DATASET, 409: ERROR})
def get_dataset(dataset_id: str) -> dict[str, Any]:
    return ctx().datasets.info(dataset_id)


@bp.delete("/datasets/<dataset_id>")
@token_required
@doc("Delete an uploaded dataset", responses={200: DATASET})
def delete_dataset(dataset_id: str) -> dict[str, Any]:
    return ctx().datasets.delete(check_id(dataset_id, "dataset"))


@bp.get("/trainers")
@doc(
    "Trainers that have registered: address, state, slots, running jobs, last heartbeat",
    responses={
        200: {"type": "object", "properties": {"trainers": {"type": "array", "items": TRAINER}}}
    },
)
def list_trainers() -> dict[str, Any]:
    context = ctx()
    running = context.stores.jobs.running_per_trainer()
    timeout = context.settings.lease_timeout_s
    return {
        "trainers": [
            t.to_json(timeout, running.get(t.id, 0)) for t in context.stores.trainers.all()
        ]
    }
