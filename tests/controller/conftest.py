"""A controller app per test (temp HOME_DIR, SQLite file) and a small trained model.

The scheduler thread is not started: tests drive it with ``scheduler.tick()`` or play the
trainer's side of the protocol through the real internal routes.
"""

from __future__ import annotations

from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def digits_model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A SmallConvNet trained for a few epochs on digits (good enough to beat chance)."""
    dataset = load_builtin("digits", tmp_path_factory.mktemp("digits"))
    opts = TrainOptions.from_dict({"num_epochs": 3, "seed": 0}, model_type="SmallConvNet")
    result = train("SmallConvNet", dataset, opts)
    return artifact_to_bytes(result.artifact)
