"""/api/v1/datasets and /api/v1/trainers."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from flask import Blueprint, request

from cnnswarm.atomic import write_atomic
from cnnswarm.controller.api_schemas import (
    Dataset,
    DatasetList,
    DatasetUpload,
    DatasetUploadForm,
    ErrorBody,
    TrainerList,
    validated,
)
from cnnswarm.controller.context import ctx, token_required
from cnnswarm.controller.openapi import doc
from cnnswarm.errors import InvalidInput
from cnnswarm.http import uploaded_file
from cnnswarm.store.artifacts import check_id, copy_stream

bp = Blueprint("datasets", __name__, url_prefix="/api/v1")


@bp.post("/datasets")
@token_required
@doc(
    "Upload a dataset: a zip or tar of class folders of images, or an .npz of x, y, classes",
    form=DatasetUpload,
    responses={201: Dataset, 413: ErrorBody},
)
def upload_dataset() -> tuple[dict[str, Any], int]:
    context = ctx()
    upload = uploaded_file(context.settings.max_upload_bytes, "the archive")
    form = validated(DatasetUploadForm, request.form.to_dict(), what="form field")
    with tempfile.TemporaryDirectory(dir=context.stores.artifacts.tmp) as tmp:
        path = Path(tmp) / "upload"
        size = write_atomic(path, copy_stream(upload.stream))
        if size == 0:
            raise InvalidInput("the uploaded file is empty", field="file")
        record = context.datasets.add_upload(path, form.name)
    return record, 201


@bp.get("/datasets")
@doc(
    "List datasets (built-ins and uploads)",
    responses={200: DatasetList},
)
def list_datasets() -> dict[str, Any]:
    return {"datasets": ctx().datasets.list()}


@bp.get("/datasets/<dataset_id>")
@doc("One dataset", responses={200: Dataset, 409: ErrorBody})
def get_dataset(dataset_id: str) -> dict[str, Any]:
    return ctx().datasets.info(dataset_id)


@bp.delete("/datasets/<dataset_id>")
@token_required
@doc("Delete an uploaded dataset", responses={200: Dataset})
def delete_dataset(dataset_id: str) -> dict[str, Any]:
    return ctx().datasets.delete(check_id(dataset_id, "dataset"))


@bp.get("/trainers")
@doc(
    "Trainers that have registered: address, state, slots, running jobs, last heartbeat",
    responses={200: TrainerList},
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
