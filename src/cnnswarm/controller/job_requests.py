"""Turning a train request (v1 or the seed's) into a validated ``JobSpec``.

Everything a retry cannot fix is caught here, before the job is accepted: unknown keys, an
unknown dataset or model type, a model that does not fit the dataset's images, bad training
options, an out-of-range ``example_idxs``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

from cnnswarm.controller.datasets import DatasetService
from cnnswarm.errors import InvalidInput, NotFound
from cnnswarm.ml.models import build_model, default_model_type
from cnnswarm.ml.train_options import TrainOptions
from cnnswarm.store.artifacts import check_id
from cnnswarm.store.jobs import JobSpec

JOB_REQUEST_KEYS = ("dataset", "model_type", "model_id", "example_idxs", "train_opts")


def parse_job_request(
    body: Mapping[str, Any],
    datasets: DatasetService,
    *,
    default_dataset: str | None = None,
    idempotency_key: str | None = None,
) -> JobSpec:
    """Validate ``body`` into a ``JobSpec``; ``InvalidInput`` names the first bad field.

    Without ``model_id`` one is generated (derived from ``idempotency_key`` when given, so a
    retried request describes the same job).
    """
    unknown = sorted(set(body) - set(JOB_REQUEST_KEYS))
    if unknown:
        raise InvalidInput(
            f"unknown field(s) {', '.join(unknown)}; a job takes {', '.join(JOB_REQUEST_KEYS)}",
            field=unknown[0],
        )
    dataset_name = body.get("dataset", default_dataset)
    if dataset_name is None:
        raise InvalidInput(
            "dataset is required (cifar10, digits, synthetic or an upload id)", field="dataset"
        )
    try:
        dataset_id = datasets.resolve_id(dataset_name)
    except NotFound as exc:
        raise InvalidInput(
            f"{exc.message}; use cifar10, digits, synthetic or an uploaded dataset's id",
            field="dataset",
        ) from None
    info = datasets.info(dataset_id)
    channels, height, width = info["shape"]

    model_type = body.get("model_type")
    if model_type is None:
        model_type = default_model_type((channels, height, width))
    if not isinstance(model_type, str):
        raise InvalidInput("model_type must be a string", field="model_type")
    # Building the model checks that it accepts this dataset's images and class count.
    build_model(
        model_type,
        in_channels=channels,
        height=height,
        width=width,
        num_classes=int(info["num_classes"]),
    )

    model_id = body.get("model_id")
    if model_id is None:
        suffix = (
            hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]
            if idempotency_key
            else uuid.uuid4().hex[:16]
        )
        model_id = f"model-{suffix}"
    check_id(model_id, "model_id")

    example_idxs = body.get("example_idxs")
    if example_idxs is not None:
        if (
            not isinstance(example_idxs, list)
            or len(example_idxs) != 2
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in example_idxs)
        ):
            raise InvalidInput(
                "example_idxs must be null or [start, end] (two integers)", field="example_idxs"
            )
        start, end = example_idxs
        if not 0 <= start < end <= int(info["num_train"]):
            raise InvalidInput(
                f"example_idxs must satisfy 0 <= start < end <= {info['num_train']} "
                f"(the training set of {dataset_id}), got [{start}, {end}]",
                field="example_idxs",
            )

    train_opts = body.get("train_opts")
    if train_opts is not None and not isinstance(train_opts, dict):
        raise InvalidInput("train_opts must be an object or null", field="train_opts")
    options = TrainOptions.from_dict(train_opts, model_type=model_type)
    return JobSpec(
        model_id=model_id,
        dataset=dataset_id,
        model_type=model_type,
        example_idxs=example_idxs,
        train_opts=options.to_dict(),
    )
