"""/api/v1/models, /api/v1/aliases and predict."""

from __future__ import annotations

from typing import Any

import torch
from flask import Blueprint, request

from cnnswarm.controller.api_schemas import (
    MAX_ITEMS_PER_REQUEST,
    Alias,
    AliasRequest,
    ErrorBody,
    Model,
    ModelList,
    PredictAnswer,
    PredictQuery,
    PredictRequest,
    PredictUpload,
    validated,
)
from cnnswarm.controller.context import ControllerContext, ctx, token_required
from cnnswarm.controller.openapi import doc
from cnnswarm.controller.predictor import LoadedModel, examples_to_tensor
from cnnswarm.errors import InvalidInput
from cnnswarm.http import json_body
from cnnswarm.ml.preprocess import images_to_tensor
from cnnswarm.store.artifacts import check_id
from cnnswarm.store.catalog import model_to_json

bp = Blueprint("models", __name__, url_prefix="/api/v1")

IMAGE_FIELDS = ("files", "file", "images", "image")


@bp.get("/models")
@doc("List models", responses={200: ModelList})
def list_models() -> dict[str, Any]:
    catalog = ctx().stores.catalog
    aliases = catalog.aliases_of()
    return {"models": [model_to_json(r, aliases.get(r["id"])) for r in catalog.list_models()]}


@bp.get("/models/<model_id>")
@doc("One model (by id or alias)", responses={200: Model})
def get_model(model_id: str) -> dict[str, Any]:
    catalog = ctx().stores.catalog
    row = catalog.get_model(check_id(model_id, "model_id"))
    return model_to_json(row, catalog.aliases_of().get(row["id"]))


@bp.delete("/models/<model_id>")
@token_required
@doc("Delete a model (by id or alias) and its aliases", responses={200: Model})
def delete_model(model_id: str) -> dict[str, Any]:
    context = ctx()
    row = context.stores.catalog.delete_model(check_id(model_id, "model_id"))
    context.predictor.forget(row["id"])
    context.stores.artifacts.remove_model_files(row["id"])
    return model_to_json(row)


@bp.put("/aliases/<alias>")
@token_required
@doc(
    "Point an alias at a model",
    body=AliasRequest,
    responses={200: Alias, 409: ErrorBody},
)
def put_alias(alias: str) -> dict[str, Any]:
    check_id(alias, "alias")
    model_id = validated(AliasRequest, json_body()).model_id
    ctx().stores.catalog.set_alias(alias, model_id)
    return {"alias": alias, "model_id": ctx().stores.catalog.resolve(alias)}


def request_inputs(loaded: LoadedModel) -> tuple[torch.Tensor, int]:
    """The model inputs and top_k of a predict request (multipart images, base64 images or
    normalized examples)."""
    prep = loaded.preprocessing
    # The mimetype first: ``request.files`` parses the body as a form even when it is JSON.
    if request.mimetype == "multipart/form-data" and request.files:
        uploads = [f for name in IMAGE_FIELDS for f in request.files.getlist(name)]
        if not uploads:
            raise InvalidInput("send images as multipart field 'files'", field="files")
        if len(uploads) > MAX_ITEMS_PER_REQUEST:
            raise InvalidInput(f"at most {MAX_ITEMS_PER_REQUEST} images per request", field="files")
        raw_top_k = request.args.get("top_k") or request.form.get("top_k")
        query = validated(PredictQuery, {} if raw_top_k is None else {"top_k": raw_top_k})
        names = [f.filename or f"file {i}" for i, f in enumerate(uploads)]
        inputs = images_to_tensor([f.read() for f in uploads], prep, names=names)
        return inputs, query.top_k or 1
    return json_inputs(loaded, json_body(), request.args.to_dict())


def json_inputs(
    loaded: LoadedModel, body: dict[str, Any], query: dict[str, str]
) -> tuple[torch.Tensor, int]:
    """The model inputs and top_k of a JSON predict body (base64 images or normalized
    examples) and its query string's parameters."""
    prep = loaded.preprocessing
    checked = validated(PredictRequest, body)
    top_k = checked.top_k or validated(PredictQuery, query).top_k or 1
    if checked.instances is not None:
        names = [f"instances[{i}]" for i in range(len(checked.instances))]
        return images_to_tensor(checked.images(), prep, names=names), top_k
    if checked.examples is not None:
        return examples_to_tensor(checked.examples, prep, MAX_ITEMS_PER_REQUEST), top_k
    raise InvalidInput(
        "send images as multipart 'files', or JSON {'instances': [base64 PNG/JPEG]} or "
        "{'examples': nested normalized arrays}",
        field="instances",
    )


def load_model(context: ControllerContext, id_or_alias: str) -> LoadedModel:
    """The cached, ready-to-serve model named by id or alias."""
    check_id(id_or_alias, "model_id")
    row = context.predictor.model_row(id_or_alias, context.stores.catalog.get_model)
    return context.predictor.get(row, context.stores.artifacts.root)


def predict_answer(
    context: ControllerContext, loaded: LoadedModel, inputs: torch.Tensor, top_k: int
) -> dict[str, Any]:
    """Predict's answer for ``inputs``."""
    return {
        "model_id": loaded.model_id,
        "predictions": context.predictor.predict(loaded, inputs, top_k),
    }


@bp.post("/models/<model_id>/predict")
@doc(
    "Classify images (multipart 'files', JSON base64 'instances' or normalized 'examples')",
    body=PredictRequest,
    form=PredictUpload,
    responses={200: PredictAnswer, 503: ErrorBody},
    query=PredictQuery,
)
def predict(model_id: str) -> dict[str, Any]:
    # JSON bodies usually take the faster path in front of Flask (controller.predict_path),
    # which answers them with the functions above.
    context = ctx()
    with context.metrics.predict_request() as observed:
        loaded = load_model(context, model_id)
        observed.model = loaded.model_id
        inputs, top_k = request_inputs(loaded)
        return predict_answer(context, loaded, inputs, top_k)
