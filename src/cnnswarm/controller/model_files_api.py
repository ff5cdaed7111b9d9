"""/api/v1/models: models in (import a model file) and out (the file, a TorchScript export)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any

from flask import Blueprint, Response, request, send_file
from pydantic import Field

from cnnswarm.controller.api_schemas import ErrorBody, ImportedModel
from cnnswarm.controller.context import ctx, token_required
from cnnswarm.controller.event_loop import off_the_loop
from cnnswarm.controller.model_import import ImportRequest, import_model
from cnnswarm.controller.openapi import doc
from cnnswarm.controller.predictor import servable_model
from cnnswarm.errors import InvalidInput, NotFound
from cnnswarm.http import uploaded_file
from cnnswarm.ml.artifact import load_artifact
from cnnswarm.ml.model_files import torchscript_bytes
from cnnswarm.store.artifacts import check_id
from cnnswarm.store.catalog import model_to_json

bp = Blueprint("model_files", __name__, url_prefix="/api/v1")


# The form fields are ImportRequest's (checked by ImportRequest.from_form); the file is checked
# by uploaded_file and import_model.
class ModelImport(ImportRequest):
    """A model file and, for a seed file, what it was trained on."""

    file: Annotated[bytes, Field(description="a seed state dict (.pth) or a cnn-swarm model file")]


@bp.post("/models")
@token_required
@doc(
    "Import a model file (a seed .pth state dict or a cnn-swarm model file); batch norms are "
    "recalibrated on the named dataset when the file has no per-call-site statistics",
    form=ModelImport,
    responses={201: ImportedModel, 409: ErrorBody, 413: ErrorBody},
)
def import_model_file() -> tuple[dict[str, Any], int]:
    context = ctx()
    upload = uploaded_file(context.settings.max_upload_bytes, "the model file")
    import_request = ImportRequest.from_form(request.form.to_dict())
    data = upload.read()
    if not data:
        raise InvalidInput("the uploaded file is empty", field="file")
    row, recalibration = import_model(context, data, import_request)
    return {**model_to_json(row), "recalibration": recalibration}, 201


def _model_file(model_id: str) -> tuple[str, Any]:
    """The model's id and file path (by id or alias); NotFound when the file is gone."""
    context = ctx()
    row = context.stores.catalog.get_model(check_id(model_id, "model_id"))
    path = context.stores.artifacts.model_file(str(row["filename"]))
    if not path.is_file():
        raise NotFound(f"the file of model {row['id']!r} is missing", field="model_id")
    return str(row["id"]), path


@bp.get("/models/<model_id>/file")
@doc(
    "Download the model's cnn-swarm model file (torch.load(weights_only=True) reads it)",
    responses={200: None},
)
def download_model_file(model_id: str) -> Response:
    resolved, path = _model_file(model_id)
    return send_file(
        path,
        mimetype="application/octet-stream",
        as_attachment=True,
        download_name=f"{resolved}.pth",
        conditional=False,
        etag=False,
    )


@bp.get("/models/<model_id>/torchscript")
@doc(
    "Download a frozen TorchScript export of the model: normalized N x C x H x W inputs in, "
    "logits out (their softmax is what predict answers); metadata in extra file cnn-swarm.json",
    responses={200: None},
)
def download_torchscript(model_id: str) -> Response:
    resolved, path = _model_file(model_id)
    exported = off_the_loop(_torchscript_export, path, resolved)
    return send_file(
        io.BytesIO(exported),
        mimetype="application/octet-stream",
        as_attachment=True,
        download_name=f"{resolved}.torchscript.pt",
    )


def _torchscript_export(path: Path, model_id: str) -> bytes:
    artifact = load_artifact(path)
    servable_model(artifact, model_id)  # the export must serve what was measured, as predict
    return torchscript_bytes(artifact)
