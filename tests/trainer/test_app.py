"""The trainer's routes, in process (Flask test client), with real job children.

Children here wait for a dataset the (fake) controller keeps answering 503 for, so they hold
their slot without training; that keeps these tests fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cnnswarm.config import Settings
from cnnswarm.trainer.app import TrainerService, create_app
from support import drive_until, wait_until

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def dispatch_body(job_id: str = "j1", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "job_id": job_id,
        "attempt": 1,
        "model_id": f"m-{job_id}",
        "model_type": "SmallConvNet",
        "dataset": "waiting",
        "example_idxs": None,
        "train_opts": {"num_epochs": 1},
    }
    body.update(changes)
    return body


@pytest.fixture
def app(fake_controller: Any, make_settings: Callable[..., Settings]) -> Iterator[Flask]:
    fake_controller.unavailable_datasets.add("waiting")
    fake_controller.required_token = TOKEN
    flask_app = create_app(make_settings(fake_controller.url, api_token=TOKEN))
    try:
        yield flask_app
    finally:
        service(flask_app).stop(timeout=5)


def service(app: Flask) -> TrainerService:
    result = app.extensions["trainer_service"]
    assert isinstance(result, TrainerService)
    return result


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_seed_routes(client: FlaskClient):
    assert b"trainer is running" in client.get("/").data
    assert client.get("/type").get_json() == {"type": "train"}
    status = client.get("/status").get_json()
    assert status["jobs"] == {}
    assert (status["trainer_id"], status["slots"], status["free_slots"]) == ("trainer-test", 1, 1)
    assert status["controller_reachable"] is False


def test_health_and_readiness(app: Flask, client: FlaskClient):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503  # not started
    service(app).start()
    # ready once the job fork server runs (it imports torch) and the agent announces it
    ready = wait_until(lambda: client.get("/readyz").get_json()["ready"], timeout=60)
    assert ready is True and client.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"job_id": 7}, "job_id"),
        ({"job_id": ""}, "job_id"),
        ({"attempt": "1"}, "attempt"),
        ({"attempt": 0}, "attempt"),
        ({"model_type": None}, "model_type"),
        ({"dataset": ["x"]}, "dataset"),
        ({"example_idxs": [1]}, "example_idxs"),
        ({"example_idxs": [3, 1]}, "example_idxs"),
        ({"train_opts": "fast"}, "train_opts"),
        ({"job_id": "../etc"}, "job_id"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_malformed_dispatch_is_400_naming_the_field(
    client: FlaskClient, change: dict[str, Any], field: str
):
    answer = client.post("/train", json=dispatch_body(**change), headers=AUTH)
    assert answer.status_code == 400
    assert answer.get_json()["field"] == field
    assert answer.get_json()["exception"] == "InvalidInputArg"


def test_token_is_required_when_configured(client: FlaskClient):
    assert client.post("/train", json=dispatch_body()).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/train", json=dispatch_body(), headers=wrong).status_code == 401
    assert client.post("/jobs/j1/cancel").status_code == 401


def test_dispatch_runs_then_full_then_cancel(app: Flask, client: FlaskClient, fake_controller: Any):
    answer = client.post("/train", json=dispatch_body("j1"), headers=AUTH)
    assert answer.status_code == 202
    assert answer.get_json() == {"status": {"initiated": True}, "job_id": "j1"}

    full = client.post("/train", json=dispatch_body("j2"), headers=AUTH)
    assert full.status_code == 409
    assert full.get_json()["exception"] == "Conflict"

    status = client.get("/status").get_json()
    assert status["free_slots"] == 0
    entry = status["jobs"]["j1"]
    assert entry["complete"] is False and entry["progress"] == 0.0
    assert entry["duration"] >= 0

    # The child really is waiting on the controller (with the token).
    fake_controller.wait_for(lambda: 503 in fake_controller.dataset_answers)

    cancel = client.post("/jobs/j1/cancel", headers=AUTH)
    assert cancel.status_code == 200 and cancel.get_json()["cancelled"] is True
    drive_until(
        service(app).runner.poll,
        lambda: client.get("/status").get_json()["jobs"]["j1"]["complete"],
    )
    assert client.get("/status").get_json()["jobs"]["j1"]["state"] == "cancelled"
    assert client.get("/status").get_json()["free_slots"] == 1
    assert fake_controller.failures == []


def test_cancel_of_unknown_job_is_404(client: FlaskClient):
    answer = client.post("/jobs/nope/cancel", headers=AUTH)
    assert answer.status_code == 404
    assert answer.get_json()["exception"] == "NotFound"


def test_seed_body_is_forwarded_to_the_controller_as_it_is(
    client: FlaskClient, fake_controller: Any
):
    # No id made up, no key dropped or added, not even re-encoded: the controller judges it.
    raw = b'{"model_type": "SmallConvNet",  "example_idxs": [0, 10], "extra": 1}'
    headers = {**AUTH, "Content-Type": "application/json", "Idempotency-Key": "k1"}
    answer = client.post("/train", data=raw, headers=headers)
    assert answer.status_code == 200
    assert answer.get_json() == {"status": {"initiated": True}, "job_id": "job-1", "model_id": "m"}
    assert fake_controller.seed_trains == [(raw, "k1")]


def test_seed_body_error_from_the_controller_is_relayed(client: FlaskClient):
    answer = client.post("/train", json={"model_type": "NoSuchModel"}, headers=AUTH)
    assert answer.status_code == 400
    assert answer.get_json() == {"exception": "InvalidInputArg", "field": "model_type"}


def test_seed_body_with_controller_away_is_503(
    dead_controller_url: str, make_settings: Callable[..., Settings]
):
    app = create_app(make_settings(dead_controller_url))
    answer = app.test_client().post("/train", json={"model_type": "SmallConvNet"})
    assert answer.status_code == 503
    assert answer.get_json()["exception"] == "ControllerUnavailable"
