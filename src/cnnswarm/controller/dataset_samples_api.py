"""/api/v1/datasets/<id>/samples and /images: what a dataset's classes look like.

``samples`` answers each class's image counts (train and test) and the row numbers of its first
few training images; ``images/<row>.png`` is one training image as a PNG, pixel for pixel (the
dashboard enlarges it). Both read the dataset's cached arrays, so they work for built-ins and
uploads alike and change nothing.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from flask import Blueprint, Response, request
from PIL import Image

from cnnswarm.controller.api_schemas import (
    DatasetSamples,
    DatasetSamplesQuery,
    ErrorBody,
    validated,
)
from cnnswarm.controller.context import ctx
from cnnswarm.controller.openapi import doc
from cnnswarm.errors import NotFound

bp = Blueprint("dataset_samples", __name__, url_prefix="/api/v1")


@bp.get("/datasets/<dataset_id>/samples")
@doc(
    "Per class: image counts (train, test) and the rows of its first training images",
    query=DatasetSamplesQuery,
    responses={200: DatasetSamples, 409: ErrorBody},
)
def dataset_samples(dataset_id: str) -> dict[str, Any]:
    query = validated(DatasetSamplesQuery, request.args.to_dict(), what="query parameter")
    context = ctx()
    resolved = context.datasets.resolve_id(dataset_id)
    dataset = context.datasets.load(resolved)
    num_classes = len(dataset.classes)
    train_counts = np.bincount(dataset.y_train, minlength=num_classes)
    test_counts = np.bincount(dataset.y_test, minlength=num_classes)
    classes = []
    for index, name in enumerate(dataset.classes):
        rows = np.flatnonzero(dataset.y_train == index)[: query.per_class]
        classes.append(
            {
                "index": index,
                "name": name,
                "num_train": int(train_counts[index]),
                "num_test": int(test_counts[index]),
                "samples": [int(row) for row in rows],
            }
        )
    return {"dataset": resolved, "shape": list(dataset.input_shape), "classes": classes}


@bp.get("/datasets/<dataset_id>/images/<int:row>.png")
@doc(
    "One training image of a dataset, as a PNG (image/png)",
    responses={200: None, 409: ErrorBody},
)
def dataset_image(dataset_id: str, row: int) -> Response:
    dataset = ctx().datasets.load(dataset_id)
    if not 0 <= row < len(dataset.x_train):
        raise NotFound(
            f"dataset {dataset_id!r} has training rows 0..{len(dataset.x_train) - 1}, not {row}",
            field="row",
        )
    pixels = dataset.x_train[row]  # (C, H, W) uint8
    array = pixels[0] if pixels.shape[0] == 1 else np.ascontiguousarray(pixels.transpose(1, 2, 0))
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    response = Response(buffer.getvalue(), mimetype="image/png")
    # A dataset's rows never change under its id: an uploaded one is replaced by a new id.
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response
