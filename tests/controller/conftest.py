"""A controller app per test (temp HOME_DIR, SQLite file) and a small trained model.

The scheduler thread is not started: tests drive it with ``scheduler.tick()`` or play the
trainer's side of the protocol through the real internal routes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cnnswarm.config import Settings
from cnnswarm.controller.app import create_app
from cnnswarm.controller.context import ControllerContext
from cnnswarm.ml.artifact import artifact_to_bytes
from cnnswarm.ml.datasets.registry import load_builtin
from cnnswarm.ml.train import train
from cnnswarm.ml.train_options import TrainOptions


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home_dir=tmp_path / "home", lease_timeout_s=5.0)


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    application = create_app(settings)
    yield application
    application.extensions["cnnswarm"].stores.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def context(app: Flask) -> ControllerContext:
    ctx: ControllerContext = app.extensions["cnnswarm"]
    return ctx


Publish = Callable[[Flask, str, bytes], None]


@pytest.fixture
def publish() -> Publish:
    """``publish(app, model_id, model_bytes)``: a job for ``model_id`` queued, claimed and its
    model file posted through ``app``'s real routes, as a trainer does."""

    def publish_model(app: Flask, model_id: str, model_bytes: bytes) -> None:
        client = app.test_client()
        jobs = app.extensions["cnnswarm"].stores.jobs
        job = client.post("/api/v1/jobs", json={"dataset": "digits", "model_id": model_id})
        assert job.status_code == 202, job.json
        job_id = str(job.get_json()["id"])
        assert jobs.claim(jobs.get(job_id), "t1", lease_s=30) is not None
        result = client.post(f"/internal/v1/jobs/{job_id}/result?attempt=1", data=model_bytes)
        assert result.status_code == 200, result.json

    return publish_model


@pytest.fixture(scope="session")
def digits_model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A SmallConvNet trained for a few epochs on digits (good enough to beat chance)."""
    dataset = load_builtin("digits", tmp_path_factory.mktemp("digits"))
    opts = TrainOptions.from_dict({"num_epochs": 3, "seed": 0}, model_type="SmallConvNet")
    result = train("SmallConvNet", dataset, opts)
    return artifact_to_bytes(result.artifact)
