"""Every request body, query string and header is checked by its declared model (strict
types, bounds, unknown keys refused by name) and answers a 4xx in today's error shape; the seed
routes keep the seed's error body (``InvalidInputArg`` and the request as ``content``)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cnnswarm.controller.api_schemas import (
    Base64Image,
    DatasetUploadForm,
    JobListQuery,
    PredictRequest,
    validated,
)
from cnnswarm.errors import InvalidInput
from support import digits_png

Publish = Callable[[Flask, str, bytes], None]


def refused(response: Any, field: str) -> dict[str, Any]:
    """The error body of a 400 that names ``field``."""
    assert response.status_code == 400, (response.status_code, response.json)
    body: dict[str, Any] = response.json
    assert body["field"] == field and body["error"] and body["exception"], body
    return body


@pytest.mark.parametrize(
    ("body", "field", "said"),
    [
        ({"examples": [[[[0.0]]]], "extra": 1}, "extra", "unknown field(s): extra; known: "),
        ({"instances": [5]}, "instances", "instances.0.string should be a valid string"),
        ({"instances": [{"b64": "AAAA", "x": 1}]}, "instances", "unknown key 'x'"),
        ({"instances": [{"b64": 5}]}, "instances", "b64 should be a valid string"),
        ({"instances": ["AAAA", "###"]}, "instances", "instances[1] is not valid base64"),
        ({"examples": [[[[0.0]]]], "top_k": True}, "top_k", "top_k should be a valid integer"),
        ({"examples": [[[[0.0]]]], "top_k": 10_001}, "top_k", "less than or equal to 10000"),
    ],
)
def test_predict_bodies_are_checked_by_their_model(
    body: dict[str, Any], field: str, said: str
) -> None:
    with pytest.raises(InvalidInput) as error:
        validated(PredictRequest, body).images()
    assert error.value.field == field and said in error.value.message, error.value.message


def test_both_instance_forms_are_decoded() -> None:
    png, _ = digits_png(0)
    text = base64.b64encode(png).decode()
    request = validated(PredictRequest, {"instances": [text, {"b64": text}]})
    assert request.instances == [text, Base64Image(b64=text)]
    assert request.images() == [png, png]


def test_predict_takes_the_object_form_and_top_k_from_the_query(
    app: Flask, client: FlaskClient, publish: Publish, digits_model_bytes: bytes
) -> None:
    publish(app, "m", digits_model_bytes)
    b64 = base64.b64encode(digits_png(0)[0]).decode()
    answer = client.post("/api/v1/models/m/predict?top_k=2", json={"instances": [{"b64": b64}]})
    assert answer.status_code == 200, answer.json
    assert len(answer.json["predictions"][0]["top_k"]) == 2
    refused(client.post("/api/v1/models/m/predict?top_k=x", json={"instances": [b64]}), "top_k")
    form = {"files": [(io.BytesIO(digits_png(0)[0]), "0.png")], "top_k": "0"}
    refused(client.post("/api/v1/models/m/predict", data=form), "top_k")


def test_aliases_take_one_safe_model_id(
    app: Flask, client: FlaskClient, publish: Publish, digits_model_bytes: bytes
) -> None:
    publish(app, "m", digits_model_bytes)
    refused(client.put("/api/v1/aliases/a", json={"model_id": "m", "x": 1}), "x")
    refused(client.put("/api/v1/aliases/a", json={"model_id": "a..b"}), "model_id")
    refused(client.put("/api/v1/aliases/a", json={"model_id": "../m"}), "model_id")
    assert client.put("/api/v1/aliases/a", json={"model_id": "m"}).json == {
        "alias": "a",
        "model_id": "m",
    }


def test_the_job_listing_query_and_the_idempotency_key(client: FlaskClient) -> None:
    for query in ("limit=abc", "limit=0", "limit=10001"):
        refused(client.get(f"/api/v1/jobs?{query}"), "limit")
    body = refused(client.get("/api/v1/jobs?state=exploded"), "state")
    assert "'queued'" in body["error"]
    assert validated(JobListQuery, {"state": "running", "limit": "7"}) == JobListQuery(
        state="running", limit=7
    )
    assert client.get("/api/v1/jobs?limit=10000&unrelated=1").status_code == 200
    for key in ("", "k" * 201):
        answer = client.post(
            "/api/v1/jobs", json={"dataset": "digits"}, headers={"Idempotency-Key": key}
        )
        refused(answer, "Idempotency-Key")


def test_dataset_upload_form_fields(client: FlaskClient) -> None:
    def upload(**form: str) -> Any:
        data: dict[str, Any] = {"file": (io.BytesIO(b"junk"), "a.zip"), **form}
        return client.post("/api/v1/datasets", data=data, content_type="multipart/form-data")

    body = refused(upload(nmae="x"), "nmae")
    assert "known: name" in body["error"]
    refused(upload(name=""), "name")
    refused(upload(name="n" * 201), "name")
    assert validated(DatasetUploadForm, {"name": "n" * 200}).name == "n" * 200


@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        ("/train", {"model_type": "SmallConvNet", "model_id": "a", "epochs": 3}, "epochs"),
        ("/train", {"model_type": "SmallConvNet", "model_id": "../a"}, "model_id"),
        ("/predict", {"model_id": "m", "examples": [[[[0.0]]]], "top_k": 3}, "top_k"),
        ("/predict", {"model_id": "m"}, "examples"),
        ("/get_examples", {"example_idxs": [0, 2], "split": "test"}, "split"),
        ("/get_examples", {"example_idxs": [0, 1, 2]}, "example_idxs"),
        ("/get_examples", {"example_idxs": True}, "example_idxs"),
        ("/get_examples", {"example_idxs": [0, 2], "dataset_type": "val"}, "dataset_type"),
        ("/get_examples", {}, "example_idxs"),
        ("/get_dataset_info", {"dataset_name": "digits", "x": 1}, "x"),
    ],
)
def test_seed_bodies_keep_the_seeds_error_body(
    client: FlaskClient, url: str, body: dict[str, Any], field: str
) -> None:
    error = refused(client.post(url, json=body), field)
    assert error["exception"] == "InvalidInputArg" and error["content"] == body


def test_seed_example_idxs_say_what_they_take(client: FlaskClient) -> None:
    error = refused(client.post("/get_examples", json={"example_idxs": "0:2"}), "example_idxs")
    assert error["error"] == "example_idxs must be an integer or [start, end], got '0:2'"
    one = client.post("/get_examples", json={"example_idxs": 3, "dataset": "digits"})
    assert one.status_code == 200 and len(one.json["examples"]) == 1
    info = client.post("/get_dataset_info", json={"dataset": "digits"}).json
    assert info["num_classes"] == 10
