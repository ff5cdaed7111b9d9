"""The seed's controller routes, with the seed's request and response shapes.

Clients written for the seed keep working; what changed is underneath: ``/train`` queues a
durable job (the seed started a thread on one trainer), ``/predict`` uses the model cache and
eval mode, and errors use 4xx codes while keeping the ``exception`` key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

import numpy as np
from flask import Blueprint, Response, jsonify, redirect, request, url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from cnnswarm.controller.api_schemas import (
    MAX_SEED_EXAMPLES,
    SeedDatasetInfoRequest,
    SeedExamplesRequest,
    SeedPredictRequest,
    validated,
)
from cnnswarm.controller.context import ctx, token_required
from cnnswarm.controller.job_requests import SeedTrainRequest
from cnnswarm.controller.jobs_api import submit_job
from cnnswarm.controller.models_api import load_model
from cnnswarm.controller.predictor import examples_to_tensor
from cnnswarm.errors import CnnSwarmError
from cnnswarm.http import json_body
from cnnswarm.ml.datasets import SEED_CIFAR10_TAGS, normalize
from cnnswarm.ml.datasets.cifar10 import CIFAR10_CLASSES
from cnnswarm.protocol import seed_status_entry
from cnnswarm.store.jobs import JobState

bp = Blueprint("seed", __name__)
F = TypeVar("F", bound=Callable[..., Any])

STATUS_RECENT_JOBS = 1000


def seed_errors(view: F) -> F:
    """Answer errors as the seed did (``exception`` plus the request as ``content``), with a
    4xx status instead of the seed's 200."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except CnnSwarmError as error:
            body = error.to_json()
            if 400 <= error.status < 500 and error.status != 401:
                body["exception"] = "InvalidInputArg"
                body["content"] = request.get_json(silent=True)
            response = jsonify(body)
            response.status_code = error.status
            return response

    return cast(F, wrapped)


def seed_tags(classes: list[str]) -> list[str]:
    """The seed's short CIFAR-10 tags for a CIFAR-10 model's classes; other classes as is."""
    if tuple(classes) == CIFAR10_CLASSES:
        return list(SEED_CIFAR10_TAGS)
    return classes


@bp.get("/")
def index() -> WerkzeugResponse:
    """The seed's answer; a browser (which names text/html in Accept: curl and API clients
    send */*) is sent to the dashboard instead."""
    if any(mimetype == "text/html" for mimetype, _ in request.accept_mimetypes):
        return redirect(url_for("ui.jobs_page"))
    return Response("<p>cnn-swarm controller is running.</p>", mimetype="text/html")


@bp.get("/type")
def app_type() -> dict[str, str]:
    return {"type": "controller"}


@bp.get("/status")
def status() -> dict[str, Any]:
    """Per trainer, its jobs in the seed's shape (``duration``, ``progress`` 0-100,
    ``complete``) and its ``url``; plus queue counts and trainer details.

    As the seed's trainers did, finished jobs stay listed with ``complete: true``: seed clients
    poll this route until their job is complete."""
    context = ctx()
    timeout = context.settings.lease_timeout_s
    # Every running job, and the most recent finished ones.
    listed = {job.id: job for job in context.stores.jobs.list_jobs(limit=STATUS_RECENT_JOBS)}
    listed.update((job.id, job) for job in context.stores.jobs.list_jobs(JobState.RUNNING, 10**6))
    now = time.time()
    train_jobs = []
    for trainer in context.stores.trainers.all():
        if not trainer.is_alive(timeout):
            continue
        jobs = {
            job.id: seed_status_entry(
                duration_s=(job.finished_at or now) - (job.started_at or now),
                progress=job.progress,
                complete=job.state.is_final,
                state=job.state.value,
                attempt=job.attempt,
                model_id=job.model_id,
            )
            for job in listed.values()
            if job.trainer_id == trainer.id
            and (job.state == JobState.RUNNING or job.state.is_final)
        }
        train_jobs.append(
            {
                "url": trainer.url.rstrip("/") + "/",
                "trainer_id": trainer.id,
                "slots": trainer.slots,
                "jobs": jobs,
            }
        )
    return {
        "train_jobs": train_jobs,
        "job_counts": context.stores.jobs.count_by_state(),
        "leader": context.scheduler.leads_here(),
    }


@bp.post("/train")
@token_required
@seed_errors
def train() -> dict[str, Any]:
    """Queue a training job; without ``dataset`` it trains on CIFAR-10, as in the seed."""
    job, _ = submit_job(json_body(), request_model=SeedTrainRequest)
    return {"status": {"initiated": True}, "job_id": job.id, "model_id": job.model_id}


@bp.post("/predict")
@seed_errors
def predict() -> dict[str, Any]:
    context = ctx()
    with context.metrics.predict_request() as observed:
        body = validated(SeedPredictRequest, json_body())
        loaded = load_model(context, body.model_id)
        observed.model = loaded.model_id
        inputs = examples_to_tensor(body.examples, loaded.preprocessing, MAX_SEED_EXAMPLES)
        predictions = context.predictor.predict(loaded, inputs, top_k=1)
    tags = seed_tags(loaded.classes)
    idxs = [p["class_idx"] for p in predictions]
    return {
        "class_idxs": idxs,
        "class_tags": [tags[i] for i in idxs],
        "probabilities": [p["probability"] for p in predictions],
    }


@bp.post("/get_examples")
@seed_errors
def get_examples() -> dict[str, Any]:
    """Normalized examples of a dataset split (CIFAR-10 by default), as the seed served them."""
    import torch

    body = validated(SeedExamplesRequest, json_body())
    dataset = ctx().datasets.load(body.dataset)
    x = dataset.x_train if body.dataset_type == "train" else dataset.x_test
    y = dataset.y_train if body.dataset_type == "train" else dataset.y_test
    start, end = body.rows(len(x))
    examples = normalize(
        torch.from_numpy(np.ascontiguousarray(x[start:end])), dataset.normalization
    )
    tags = seed_tags(dataset.classes)
    labels = [int(v) for v in y[start:end]]
    return {
        "class_idxs": labels,
        "class_tags": [tags[i] for i in labels],
        "examples": examples.tolist(),
    }


@bp.post("/get_dataset_info")
@seed_errors
def get_dataset_info() -> dict[str, Any]:
    body = validated(SeedDatasetInfoRequest, json_body())
    info = ctx().datasets.info(body.dataset_name or body.dataset or "cifar10")
    return {
        "num_train": info["num_train"],
        "num_test": info["num_test"],
        "ex_shape": info["shape"],
        "num_classes": info["num_classes"],
    }


@bp.get("/get_model_info")
def get_model_info() -> dict[str, Any]:
    return {
        row["id"]: {
            "model_type": row["model_type"],
            "example_idxs": row["example_idxs"],
            "train_opts": row["train_opts"],
            "filename": f"{row['id']}.pth",
            "dataset": row["dataset"],
        }
        for row in ctx().stores.catalog.list_models()
    }
