"""The OpenAPI document comes from the declarations that validate: the job request body, its
train_opts and the job states are the ones the code checks, not copies."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from cnnswarm.controller.job_requests import JobRequest
from cnnswarm.store.artifacts import SAFE_ID
from cnnswarm.store.job_records import JobState


def job_post(client: FlaskClient) -> dict[str, Any]:
    operation: dict[str, Any] = client.get("/api/v1/openapi.json").json["paths"]["/api/v1/jobs"][
        "post"
    ]
    return operation


def test_the_job_request_schema_is_the_model_that_validates(client: FlaskClient) -> None:
    schema = job_post(client)["requestBody"]["content"]["application/json"]["schema"]
    assert schema == JobRequest.model_json_schema()
    assert schema["additionalProperties"] is False and schema["required"] == ["dataset"]
    (model_id, _null) = schema["properties"]["model_id"]["anyOf"]
    assert model_id["pattern"] == SAFE_ID.pattern


def test_train_opts_are_documented_key_by_key_with_their_bounds(client: FlaskClient) -> None:
    schema = job_post(client)["requestBody"]["content"]["application/json"]["schema"]
    (train_opts, _null) = schema["properties"]["train_opts"]["anyOf"]
    assert train_opts["additionalProperties"] is False
    assert "required" not in train_opts  # every key defaults by model type
    properties = train_opts["properties"]
    assert len(properties) == 13
    assert properties["num_epochs"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 10_000,
        "title": "Num Epochs",
    }
    assert properties["optimizer"]["enum"] == ["sgd", "adamw"]
    assert properties["lr"]["exclusiveMinimum"] == 0


def test_every_documented_bound_is_enforced(client: FlaskClient) -> None:
    schema = job_post(client)["requestBody"]["content"]["application/json"]["schema"]
    (train_opts, _null) = schema["properties"]["train_opts"]["anyOf"]
    for name, rules in train_opts["properties"].items():
        for bound, beyond in (
            ("maximum", 1),
            ("exclusiveMaximum", 0),
            ("minimum", -1),
            ("exclusiveMinimum", 0),
        ):
            if bound not in rules:
                continue
            value = rules[bound] + beyond
            response = client.post(
                "/api/v1/jobs", json={"dataset": "digits", "train_opts": {name: value}}
            )
            assert response.status_code == 400, (name, value, response.json)
            assert response.json["field"] == name


def test_job_states_in_responses_are_the_stores(client: FlaskClient) -> None:
    job = job_post(client)["responses"]["202"]["content"]["application/json"]["schema"]
    assert job["properties"]["state"]["enum"] == [state.value for state in JobState]
