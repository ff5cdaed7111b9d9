"""Turning a train request (v1 or the seed's) into a validated ``JobSpec``.

Everything a retry cannot fix is caught here, before the job is accepted: unknown keys, an
unknown dataset or model type, a model that does not fit the dataset's images, bad training
options, an out-of-range ``example_idxs``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
)

from cnnswarm.controller.api_schemas import validated
from cnnswarm.controller.datasets import DatasetService
from cnnswarm.errors import InvalidInput, NotFound
from cnnswarm.ml.models import build_model, default_model_type
from cnnswarm.ml.train_options import TrainOptions
from cnnswarm.protocol import MAX_WORKERS, ExampleIdxs, SafeId, check_example_idxs, check_id
from cnnswarm.store.jobs import JobSpec


class JobBase(BaseModel):
    """What a job trains: the fields a job request and a sweep's base job share."""

    # This declaration is both the validation and (model_json_schema) the OpenAPI schema.

    # protected_namespaces=(): model_type and model_id are ours, not pydantic's "model_".
    model_config = ConfigDict(
        strict=True, extra="forbid", allow_inf_nan=False, frozen=True, protected_namespaces=()
    )

    dataset: Annotated[
        str,
        Field(min_length=1, description="cifar10, digits, synthetic or an uploaded dataset's id"),
    ]
    model_type: Annotated[
        str | None, Field(description="null: the default model for the dataset's images")
    ] = None
    example_idxs: ExampleIdxs | None = None
    # Checked by TrainOptions.from_dict once model_type is known: the defaults depend on it.
    train_opts: Annotated[dict[str, Any], WithJsonSchema(TrainOptions.json_schema())] | None = None


class JobRequest(JobBase):
    """A training job request: the body of POST /api/v1/jobs and of the seed's /train."""

    model_id: Annotated[
        SafeId | None,
        Field(description="null: generated (from the Idempotency-Key when given)"),
    ] = None
    workers: Annotated[
        int,
        Field(
            ge=1,
            le=MAX_WORKERS,
            description="trainers to train on at once (data-parallel; same run as on one)",
        ),
    ] = 1
    min_workers: Annotated[
        int | None,
        Field(
            ge=1,
            le=MAX_WORKERS,
            description="null: workers; a resumed attempt may run on this few",
        ),
    ] = None


class SeedTrainRequest(JobRequest):
    """The body of the seed's ``POST /train``: ``model_type`` and ``model_id`` are required
    and ``dataset`` (cnn-swarm's addition) defaults to the seed's CIFAR-10."""

    dataset: Annotated[str, Field(min_length=1)] = "cifar10"
    model_type: str
    model_id: SafeId


def parse_job_request(
    body: Mapping[str, Any],
    datasets: DatasetService,
    request_model: type[JobRequest] = JobRequest,
    *,
    idempotency_key: str | None = None,
) -> JobSpec:
    """Validate ``body`` (by ``request_model``) into a ``JobSpec``; ``InvalidInput`` names the
    first bad field.

    Without ``model_id`` one is generated (derived from ``idempotency_key`` when given, so a
    retried request describes the same job).
    """
    job = validated(request_model, body)
    try:
        dataset_id = datasets.resolve_id(job.dataset)
    except NotFound as exc:
        raise InvalidInput(
            f"{exc.message}; use cifar10, digits, synthetic or an uploaded dataset's id",
            field="dataset",
        ) from None
    info = datasets.info(dataset_id)
    channels, height, width = info["shape"]

    model_type = job.model_type
    if model_type is None:
        model_type = default_model_type((channels, height, width))
    # Building the model checks that it accepts this dataset's images and class count.
    build_model(
        model_type,
        in_channels=channels,
        height=height,
        width=width,
        num_classes=int(info["num_classes"]),
    )

    model_id = job.model_id
    if model_id is None:
        suffix = (
            hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]
            if idempotency_key
            else uuid.uuid4().hex[:16]
        )
        model_id = f"model-{suffix}"
    check_id(model_id, "model_id")

    example_idxs = job.example_idxs
    if example_idxs is not None:
        check_example_idxs(example_idxs, train_size=int(info["num_train"]))

    options = TrainOptions.from_dict(job.train_opts, model_type=model_type)
    if job.min_workers is not None and job.min_workers > job.workers:
        raise InvalidInput(
            f"min_workers ({job.min_workers}) must not exceed workers ({job.workers})",
            field="min_workers",
        )
    return JobSpec(
        model_id=model_id,
        dataset=dataset_id,
        model_type=model_type,
        example_idxs=example_idxs,
        train_opts=options.to_dict(),
        workers=job.workers,
        min_workers=job.min_workers if job.workers > 1 else None,
    )
