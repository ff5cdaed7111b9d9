"""The JSON predict path in front of Flask (``controller.predict_path``): which requests it
answers, and that its answers, errors and metrics are the Flask route's, request by request.

The same JSON body sent as ``text/plain`` goes to the Flask route (which reads any body that is
not multipart as JSON), so each check compares the two paths on identical input."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from cnnswarm.controller.context import ControllerContext
from support import digits_png, metric_value

Publish = Callable[[Flask, str, bytes], None]
FLASK_PATH = "text/plain"  # a JSON body of this type is answered by the Flask route
FAST_PATH = "application/json"


@pytest.fixture
def flask_views(app: Flask) -> Iterator[list[str]]:
    """The model ids of the predict requests that reached the Flask route's view."""
    calls: list[str] = []
    view = app.view_functions["models.predict"]

    def counted(model_id: str) -> Any:
        calls.append(model_id)
        return view(model_id)

    app.view_functions["models.predict"] = counted
    yield calls


@pytest.fixture
def model(app: Flask, publish: Publish, digits_model_bytes: bytes) -> str:
    publish(app, "m1", digits_model_bytes)
    return "m1"


def _instances(count: int) -> dict[str, Any]:
    return {"instances": [base64.b64encode(digits_png(i)[0]).decode() for i in range(count)]}


def _post(
    client: FlaskClient, body: Any, content_type: str, path: str = "/api/v1/models/m1/predict"
) -> TestResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, data=raw, content_type=content_type)


def _scrape(client: FlaskClient) -> str:
    return client.get("/metrics").get_data(as_text=True)


def test_a_json_predict_is_answered_before_flask_and_as_flask_answers_it(
    client: FlaskClient, model: str, flask_views: list[str]
) -> None:
    for body in (_instances(3), {**_instances(2), "top_k": 4}, {"examples": [[[[0.0] * 8] * 8]]}):
        fast = _post(client, body, FAST_PATH)
        assert fast.status_code == 200, fast.json
        assert flask_views == []
        slow = _post(client, body, FLASK_PATH)
        assert flask_views == ["m1"]
        flask_views.clear()
        assert fast.get_json() == slow.get_json()
        assert fast.content_type == slow.content_type == "application/json"
    by_query = _post(client, _instances(1), FAST_PATH, "/api/v1/models/m1/predict?top_k=3")
    assert [len(p["top_k"]) for p in by_query.get_json()["predictions"]] == [3]
    assert flask_views == []


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("/api/v1/models/m1/predict?top_k=2&top_k=3", FAST_PATH),  # a query it does not read
        ("/api/v1/models/m1/predict?other=1", FAST_PATH),
        ("/api/v1/models/m1/predict", "application/x-www-form-urlencoded"),
    ],
)
def test_requests_of_other_shapes_go_to_the_flask_route(
    client: FlaskClient, model: str, flask_views: list[str], path: str, content_type: str
) -> None:
    _post(client, _instances(1), content_type, path)
    assert flask_views == ["m1"]


def test_multipart_images_go_to_the_flask_route(
    client: FlaskClient, model: str, flask_views: list[str]
) -> None:
    png, _ = digits_png(0)
    upload = client.post(
        "/api/v1/models/m1/predict",
        data={"files": [(io.BytesIO(png), "0.png")]},
        content_type="multipart/form-data",
    )
    assert upload.status_code == 200 and flask_views == ["m1"]
    as_json = _post(client, _instances(1), FAST_PATH).get_json()["predictions"]
    assert upload.get_json()["predictions"] == as_json


@pytest.mark.parametrize(
    "body, path",
    [
        (b"{not json", "/api/v1/models/m1/predict"),
        (b"[1, 2]", "/api/v1/models/m1/predict"),
        (b'{"instances": ["not base64!"]}', "/api/v1/models/m1/predict"),
        (b'{"instances": []}', "/api/v1/models/m1/predict"),
        (b'{"examples": [[1.0]]}', "/api/v1/models/m1/predict"),
        (b'{"examples": [[[[0.0]]]], "extra": 1}', "/api/v1/models/m1/predict"),
        (b'{"examples": [[[[0.0]]]]}', "/api/v1/models/ghost/predict"),
        (b'{"examples": [[[[0.0]]]]}', "/api/v1/models/m1/predict?top_k=0"),
        (b'{"examples": [[[[NaN]]]]}', "/api/v1/models/m1/predict"),
    ],
)
def test_bad_requests_get_the_flask_routes_error_counted_once(
    client: FlaskClient, model: str, body: bytes, path: str
) -> None:
    fast = _post(client, body, FAST_PATH, path)
    slow = _post(client, body, FLASK_PATH, path)
    assert 400 <= fast.status_code < 500
    assert (fast.status_code, fast.get_json()) == (slow.status_code, slow.get_json())
    assert fast.get_json()["exception"] and fast.get_json()["error"]
    text = _scrape(client)
    route = "/api/v1/models/<model_id>/predict"
    status = str(fast.status_code)
    http = metric_value(
        text, "cnnswarm_http_requests_total", route=route, method="POST", status=status
    )
    assert http == 2  # one per request: the one handed over is not counted twice
    model_label = "" if "ghost" in path else "m1"  # the route loads the model first
    counted = metric_value(
        text, "cnnswarm_predict_requests_total", model=model_label, status=status
    )
    assert counted == 2


def test_a_failed_forward_pass_is_a_logged_500_counted_as_such(
    app: Flask,
    client: FlaskClient,
    context: ControllerContext,
    model: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert _post(client, _instances(1), FAST_PATH).status_code == 200
    loaded = context.predictor.get(
        context.stores.catalog.get_model("m1"), context.stores.artifacts.root
    )

    def broken(inputs: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the forward pass broke")

    loaded.queue.forward = broken
    with caplog.at_level(logging.ERROR):
        failed = _post(client, _instances(1), FAST_PATH)
    assert failed.status_code == 500
    assert failed.get_json()["exception"] == "InternalError"
    request_id = failed.get_json()["request_id"]
    assert any(request_id in record.getMessage() for record in caplog.records)
    assert any("the forward pass broke" in (record.exc_text or "") for record in caplog.records)
    text = _scrape(client)
    route = "/api/v1/models/<model_id>/predict"
    for status, count in (("200", 1), ("500", 1)):
        assert (
            metric_value(
                text, "cnnswarm_http_requests_total", route=route, method="POST", status=status
            )
            == count
        )
        assert (
            metric_value(text, "cnnswarm_predict_requests_total", model="m1", status=status)
            == count
        )
    assert metric_value(text, "cnnswarm_predict_duration_seconds_count") == 1
