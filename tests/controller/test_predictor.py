"""The predictor's model cache serves a re-published model or a moved alias fresh in every
controller within ``ROW_TTL_S`` (the inference queue: ``test_inference_queue.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flask import Flask
from flask.testing import FlaskClient

from cnnswarm.config import Settings
from cnnswarm.controller.app import create_app
from cnnswarm.controller.predictor import ROW_TTL_S
from cnnswarm.ml.artifact import artifact_from_bytes, artifact_to_bytes
from support import wait_until

# -- stale weights across controllers --------------------------------------------------------

Publish = Callable[[Flask, str, bytes], None]  # the ``publish`` fixture


def _shifted_classes(model_bytes: bytes) -> bytes:
    """The same artefact with its output rows rolled by one: other weights, other answers."""
    artifact = artifact_from_bytes(model_bytes)
    for name in ("fc.weight", "fc.bias"):
        artifact.state_dict[name] = torch.roll(artifact.state_dict[name], 1, dims=0)
    return artifact_to_bytes(artifact)


def _probabilities(model_bytes: bytes, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(artifact_from_bytes(model_bytes).build_model()(x), dim=1)


def _served(client: FlaskClient, model: str, x: torch.Tensor) -> torch.Tensor | None:
    """Every class's probability for each row of ``x``, as ``model`` is served (None: 404)."""
    response = client.post(
        f"/api/v1/models/{model}/predict", json={"examples": x.tolist(), "top_k": 10}
    )
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.get_json()
    served = torch.zeros(len(x), 10)
    for row, prediction in enumerate(body["predictions"]):
        for entry in prediction["top_k"]:
            served[row, entry["class_idx"]] = entry["probability"]
    return served


def _serves(client: FlaskClient, model: str, x: torch.Tensor, expected: torch.Tensor) -> bool:
    served = _served(client, model, x)
    return served is not None and torch.allclose(served, expected, rtol=1e-4, atol=1e-5)


@pytest.fixture
def two_controllers(tmp_path: Path) -> Iterator[tuple[Flask, Flask]]:
    """Two controller apps on one database and one HOME_DIR (as two processes would be)."""
    settings = Settings(home_dir=tmp_path / "home", lease_timeout_s=5.0)
    apps = (create_app(settings), create_app(settings))
    yield apps
    for app in apps:
        app.extensions["cnnswarm"].stores.close()


# Fresh within the TTL; the slack is for loading the new weights on a slow machine.
FRESH_WITHIN_S = ROW_TTL_S + 5.0


def test_a_model_re_published_elsewhere_is_served_fresh(
    two_controllers: tuple[Flask, Flask], digits_model_bytes: bytes, publish: Publish
) -> None:
    app_a, app_b = two_controllers
    client_a, client_b = app_a.test_client(), app_b.test_client()
    first, second = digits_model_bytes, _shifted_classes(digits_model_bytes)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(6, 1, 8, 8)).astype(np.float32))
    first_probs, second_probs = _probabilities(first, x), _probabilities(second, x)
    assert not torch.allclose(first_probs, second_probs, atol=1e-3)  # the test can tell them apart

    publish(app_a, "m", first)
    assert _serves(client_a, "m", x, first_probs)  # A has loaded and cached it

    assert client_b.delete("/api/v1/models/m").status_code == 200
    wait_until(lambda: _served(client_a, "m", x) is None, FRESH_WITHIN_S, what="A to see 404")
    publish(app_b, "m", second)  # the same id and the same file name, attempt-1.pth
    wait_until(lambda: _serves(client_a, "m", x, second_probs), FRESH_WITHIN_S, what="new m")

    # Without a 404 in between: A still holds the first publication's row when it is replaced.
    assert _serves(client_b, "m", x, second_probs)
    assert client_b.delete("/api/v1/models/m").status_code == 200
    publish(app_b, "m", first)
    wait_until(lambda: _serves(client_a, "m", x, first_probs), FRESH_WITHIN_S, what="first m")


def test_an_alias_moved_elsewhere_is_served_fresh(
    two_controllers: tuple[Flask, Flask], digits_model_bytes: bytes, publish: Publish
) -> None:
    app_a, app_b = two_controllers
    client_a, client_b = app_a.test_client(), app_b.test_client()
    first, second = digits_model_bytes, _shifted_classes(digits_model_bytes)
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(6, 1, 8, 8)).astype(np.float32))
    first_probs, second_probs = _probabilities(first, x), _probabilities(second, x)

    publish(app_a, "m1", first)
    publish(app_b, "m2", second)
    assert client_a.put("/api/v1/aliases/prod", json={"model_id": "m1"}).status_code == 200
    assert _serves(client_a, "prod", x, first_probs)

    assert client_b.put("/api/v1/aliases/prod", json={"model_id": "m2"}).status_code == 200
    wait_until(lambda: _serves(client_a, "prod", x, second_probs), FRESH_WITHIN_S, what="m2")
    assert client_b.put("/api/v1/aliases/prod", json={"model_id": "m1"}).status_code == 200
    wait_until(lambda: _serves(client_a, "prod", x, first_probs), FRESH_WITHIN_S, what="m1")
