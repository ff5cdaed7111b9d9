"""The controller's ``/metrics``, in-process: names, bounded labels, the token policy, the off
switch, and the job and predict series after real requests through the real routes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from cnnswarm.config import Settings
from cnnswarm.controller.app import create_app
from cnnswarm.controller.context import ControllerContext
from support import metric_samples, metric_value

Publish = Callable[[Flask, str, bytes], None]  # the ``publish`` fixture
EXAMPLE = np.zeros((1, 1, 8, 8), dtype=np.float32).tolist()


def scrape(client: FlaskClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain")
    return response.get_data(as_text=True)


def test_every_series_follows_the_naming_conventions(client: FlaskClient) -> None:
    client.get("/healthz")
    families = list(text_string_to_metric_families(scrape(client)))
    names = {family.name for family in families}
    assert {
        "cnnswarm_jobs",
        "cnnswarm_trainers",
        "cnnswarm_job_duration_seconds",
        "cnnswarm_job_queue_wait_seconds",
        "cnnswarm_job_attempts",
        "cnnswarm_predict_requests",
        "cnnswarm_predict_duration_seconds",
        "cnnswarm_predict_batch_size",
        "cnnswarm_predict_queue_seconds",
        "cnnswarm_predict_rejected",
        "cnnswarm_predict_models_cached",
        "cnnswarm_predict_model_loads",
        "cnnswarm_http_requests",
    } <= names
    for family in families:
        assert family.name.startswith("cnnswarm_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        assert not family.name.endswith(("_ms", "_milliseconds")), family.name


def test_route_labels_are_templates_never_paths(client: FlaskClient) -> None:
    for _ in range(5):
        client.get(f"/api/v1/jobs/job-{uuid.uuid4().hex[:16]}")
        client.get(f"/no/such/{uuid.uuid4().hex}")
    client.open("/healthz", method="BREW")
    text = scrape(client)
    job_reads = metric_value(
        text,
        "cnnswarm_http_requests_total",
        route="/api/v1/jobs/<job_id>",
        method="GET",
        status="404",
    )
    assert job_reads == 5
    routes = {labels["route"] for labels in metric_samples(text, "cnnswarm_http_requests_total")}
    assert "<unmatched>" in routes
    assert not any("job-" in route or "/no/such" in route for route in routes)
    methods = {labels["method"] for labels in metric_samples(text, "cnnswarm_http_requests_total")}
    assert "BREW" not in methods and "OTHER" in methods


def test_job_series_follow_a_job_through_the_trainer_protocol(
    app: Flask, client: FlaskClient, context: ControllerContext, publish: Publish,
    digits_model_bytes: bytes,
) -> None:  # fmt: skip
    publish(app, "m1", digits_model_bytes)
    jobs = context.stores.jobs
    # A second job: its trainer reports a retryable failure (requeued), then the lease of its
    # next attempt expires (requeued again) under the real scheduler round.
    job_id = client.post("/api/v1/jobs", json={"dataset": "digits", "model_id": "m2"}).json["id"]
    assert jobs.claim(jobs.get(job_id), "t1", lease_s=30) is not None
    failure = {"attempt": 1, "error": "killed by signal 9", "retryable": True}
    assert client.post(f"/internal/v1/jobs/{job_id}/failure", json=failure).status_code == 200
    context.scheduler.tick()  # leads (a new leader renews running leases: none yet)
    assert jobs.claim(jobs.get(job_id), "t1", lease_s=-1.0) is not None
    context.scheduler.tick()  # expires the lease; no trainer is alive, so nothing is dispatched

    text = scrape(client)
    assert metric_value(text, "cnnswarm_jobs", state="succeeded") == 1
    assert metric_value(text, "cnnswarm_jobs", state="queued") == 1
    assert metric_value(text, "cnnswarm_jobs_ended_total", state="succeeded") == 1
    assert metric_value(text, "cnnswarm_job_duration_seconds_count", state="succeeded") == 1
    assert metric_value(text, "cnnswarm_job_requeues_total", reason="trainer_failure") == 1
    assert metric_value(text, "cnnswarm_job_requeues_total", reason="lease_expired") == 1
    assert metric_value(text, "cnnswarm_trainers", state="idle") == 0


def test_predict_series_count_requests_by_model_and_status(
    app: Flask, client: FlaskClient, publish: Publish, digits_model_bytes: bytes
) -> None:
    publish(app, "m1", digits_model_bytes)
    answered = 6
    for _ in range(answered):
        response = client.post("/api/v1/models/m1/predict", json={"examples": EXAMPLE})
        assert response.status_code == 200
    assert client.post("/api/v1/models/m1/predict", json={"examples": [[1.0]]}).status_code == 400
    seed = client.post("/predict", json={"model_id": "m1", "examples": EXAMPLE})
    assert seed.status_code == 200
    for _ in range(3):  # made-up names never become series
        name = f"ghost-{uuid.uuid4().hex[:8]}"
        assert client.post(f"/api/v1/models/{name}/predict", json={}).status_code == 404

    text = scrape(client)
    ok = metric_value(text, "cnnswarm_predict_requests_total", model="m1", status="200")
    assert ok == answered + 1
    assert metric_value(text, "cnnswarm_predict_requests_total", model="m1", status="400") == 1
    assert metric_value(text, "cnnswarm_predict_requests_total", model="", status="404") == 3
    assert metric_value(text, "cnnswarm_predict_duration_seconds_count") == answered + 1
    assert metric_value(text, "cnnswarm_predict_batch_size_count") == answered + 1
    assert metric_value(text, "cnnswarm_predict_batch_size_sum") == answered + 1
    assert metric_value(text, "cnnswarm_predict_queue_seconds_count") == answered + 1
    assert metric_value(text, "cnnswarm_predict_model_loads_total") == 1
    assert metric_value(text, "cnnswarm_predict_models_cached") == 1
    assert metric_value(text, "cnnswarm_predict_rejected_total") == 0


def test_a_request_shed_past_the_queue_time_bound_counts_as_rejected(
    context: ControllerContext, client: FlaskClient
) -> None:
    from cnnswarm.controller.inference_queue import InferenceQueue
    from cnnswarm.errors import Overloaded

    entered, release = threading.Event(), threading.Event()

    def held_forward(inputs: torch.Tensor) -> torch.Tensor:
        entered.set()
        release.wait(30)
        return inputs

    # A bound of 0 s: a request that has to queue behind the held forward is shed at once.
    queue = InferenceQueue(held_forward, max_batch=1, max_queue_s=0.0, observer=context.metrics)
    holder = threading.Thread(target=queue.run, args=(torch.zeros(1, 1),))
    holder.start()
    try:
        assert entered.wait(30)
        with pytest.raises(Overloaded):
            queue.run(torch.zeros(1, 1))
    finally:
        release.set()
        holder.join(30)
    text = scrape(client)
    assert metric_value(text, "cnnswarm_predict_rejected_total") == 1
    assert metric_value(text, "cnnswarm_predict_batch_size_count") == 1  # only the held one ran


@pytest.mark.parametrize("token", ["", "s3cret"])
def test_metrics_need_a_token_only_as_other_reads_do(tmp_path: Path, token: str) -> None:
    app = create_app(Settings(home_dir=tmp_path / "home", api_token=token))
    try:
        client = app.test_client()
        assert client.get("/metrics").status_code == 200  # a read: no token, like GET /jobs
        assert client.get("/api/v1/jobs").status_code == 200
        action = client.post("/api/v1/jobs", json={"dataset": "digits", "model_id": "x"})
        assert action.status_code == (401 if token else 202)
    finally:
        app.extensions["cnnswarm"].stores.close()


def test_metrics_off_serves_no_route_and_records_nothing(tmp_path: Path) -> None:
    app = create_app(Settings(home_dir=tmp_path / "home", metrics_enabled=False))
    try:
        client = app.test_client()
        assert client.get("/metrics").status_code == 404
        context: ControllerContext = app.extensions["cnnswarm"]
        context.metrics.count_rejected()
        assert context.metrics.predict_rejected._value.get() == 0
    finally:
        context.stores.close()
