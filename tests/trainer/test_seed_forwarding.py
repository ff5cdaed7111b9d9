"""A seed ``/train`` body sent to a trainer meets the real controller's one rule set.

The real controller app (temp HOME_DIR, SQLite) is served over HTTP in a thread; the real
trainer app forwards to it. Every body gets from the trainer exactly the status and answer the
controller gives for it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cnnswarm.config import Settings
from cnnswarm.controller.app import create_app as create_controller
from cnnswarm.controller.context import ControllerContext
from cnnswarm.trainer.app import create_app as create_trainer
from support import serve_in_thread

pytestmark = pytest.mark.timeout(120)

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def controller(tmp_path: Any) -> Iterator[tuple[FlaskClient, ControllerContext, str]]:
    """The real controller: its in-process client, its context and its URL."""
    app = create_controller(Settings(home_dir=tmp_path / "controller", api_token=TOKEN))
    context: ControllerContext = app.extensions["cnnswarm"]
    try:
        with serve_in_thread(app) as url:
            yield app.test_client(), context, url
    finally:
        context.stores.close()


@pytest.fixture
def trainer(
    controller: tuple[FlaskClient, ControllerContext, str],
    make_settings: Callable[..., Settings],
) -> FlaskClient:
    """The real trainer app, pointed at the real controller (its threads are not started:
    forwarding needs none)."""
    app: Flask = create_trainer(make_settings(controller[2], api_token=TOKEN))
    return app.test_client()


def both(controller: FlaskClient, trainer: FlaskClient, raw: bytes) -> list[tuple[int, Any]]:
    """The (status, JSON answer) of ``raw`` sent to the controller, then to the trainer."""
    headers = {**AUTH, "Content-Type": "application/json"}
    answers = [client.post("/train", data=raw, headers=headers) for client in (controller, trainer)]
    return [(answer.status_code, answer.get_json()) for answer in answers]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"model_type": "SmallConvNet", "model_id": "m1", "dataset": "digits", "x": 1}', "x"),
        (b'{"model_type": "SmallConvNet", "dataset": "digits"}', "model_id"),
        (b'{"model_id": "m1", "dataset": "digits"}', "model_type"),
        (b'{"model_type": "SmallConvNet", "model_id": "../m", "dataset": "digits"}', "model_id"),
        (
            b'{"model_type": "SmallConvNet", "model_id": "m1", "dataset": "digits", '
            b'"example_idxs": [5, 2]}',
            "example_idxs",
        ),
        (b"[1, 2]", None),
        (b"not json", None),
    ],
)
def test_a_refused_body_gets_the_controllers_answer(
    controller: tuple[FlaskClient, ControllerContext, str],
    trainer: FlaskClient,
    raw: bytes,
    field: str | None,
) -> None:
    client, context, _ = controller
    direct, forwarded = both(client, trainer, raw)
    assert 400 <= direct[0] < 500, direct
    assert forwarded == direct
    if field is not None:
        assert direct[1]["field"] == field
    assert context.stores.jobs.list_jobs() == []  # neither made a job


def test_a_valid_body_becomes_the_job_it_describes(
    controller: tuple[FlaskClient, ControllerContext, str], trainer: FlaskClient
) -> None:
    _, context, _ = controller
    raw = b'{"model_type": "SmallConvNet", "model_id": "m1", "dataset": "digits"}'
    headers = {**AUTH, "Content-Type": "application/json", "Idempotency-Key": "k1"}
    answer = trainer.post("/train", data=raw, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["status"] == {"initiated": True} and body["model_id"] == "m1"
    job = context.stores.jobs.get(body["job_id"])
    assert (job.model_id, job.model_type, job.dataset) == ("m1", "SmallConvNet", "digits")
    # The Idempotency-Key travels too: the same request again is the same job.
    again = trainer.post("/train", data=raw, headers=headers)
    assert again.get_json()["job_id"] == body["job_id"]
    assert len(context.stores.jobs.list_jobs()) == 1
