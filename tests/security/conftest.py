"""An app per test (temp HOME_DIR) and a small published model, for the security tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from flask import Flask
from flask.testing import FlaskClient

from cnnswarm.config import Settings
from cnnswarm.controller.app import create_app
from cnnswarm.ml.artifact import artifact_to_bytes
from cnnswarm.ml.datasets.registry import load_builtin
from cnnswarm.ml.train import train
from cnnswarm.ml.train_options import TrainOptions

TOKEN = "tok-5f1e0c9b7a"


@pytest.fixture(scope="session")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A SmallConvNet trained one epoch on a slice of digits."""
    dataset = load_builtin("digits", tmp_path_factory.mktemp("digits")).subset([0, 300])
    opts = TrainOptions.from_dict({"num_epochs": 1, "seed": 0}, model_type="SmallConvNet")
    data = artifact_to_bytes(train("SmallConvNet", dataset, opts).artifact)
    torch.set_num_threads(1)
    return data


def make_app(home: Path, **overrides: object) -> Flask:
    return create_app(Settings(home_dir=home, lease_timeout_s=60.0).with_overrides(**overrides))


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    application = make_app(tmp_path / "home")
    yield application
    application.extensions["cnnswarm"].stores.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


RunningJob = Callable[[FlaskClient, Flask, str, dict[str, str]], str]


@pytest.fixture
def running_job() -> RunningJob:
    """Makes a digits job claimed by trainer 't1' (attempt 1), as the scheduler would."""
    return _running_job


def _running_job(client: FlaskClient, app: Flask, model_id: str, headers: dict[str, str]) -> str:
    response = client.post(
        "/api/v1/jobs", json={"dataset": "digits", "model_id": model_id}, headers=headers
    )
    assert response.status_code == 202, response.json
    job_id: str = response.json["id"]
    jobs = app.extensions["cnnswarm"].stores.jobs
    assert jobs.claim(jobs.get(job_id), "t1", lease_s=60) is not None
    return job_id


@pytest.fixture
def published(client: FlaskClient, app: Flask, model_bytes: bytes) -> str:
    """A model 'm1' published through the trainer protocol."""
    job_id = _running_job(client, app, "m1", {})
    response = client.post(f"/internal/v1/jobs/{job_id}/result?attempt=1", data=model_bytes)
    assert response.status_code == 200, response.json
    return "m1"
