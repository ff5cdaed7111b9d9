"""The OpenAPI document comes from the declarations that validate: every schema in it is a
pydantic model's ``model_json_schema()``, the id pattern is store.artifacts.SAFE_ID, the job
states are JobState and train_opts is TrainOptions, not copies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import BaseModel, TypeAdapter

from cnnswarm.controller import api_schemas as api
from cnnswarm.controller.api_schemas import (
    AliasRequest,
    JobListQuery,
    PredictRequest,
    PredictUpload,
)
from cnnswarm.controller.job_requests import JobRequest
from cnnswarm.controller.model_files_api import ModelImport
from cnnswarm.controller.openapi import REF_TEMPLATE, model_schemas
from cnnswarm.ml.train_options import TrainOptions
from cnnswarm.protocol import SafeId
from cnnswarm.store.artifacts import SAFE_ID
from cnnswarm.store.job_records import JobState

METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/api/v1/openapi.json").json
    return body


def component(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The component a ``{"$ref": ...}`` names."""
    name = schema["$ref"].removeprefix(REF_TEMPLATE.format(model=""))
    found: dict[str, Any] = document["components"]["schemas"][name]
    return found


def operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def declared_models(app: Flask) -> tuple[list[type[BaseModel]], list[type[BaseModel]]]:
    """The models views declare through @doc: bodies and answers; query strings and headers."""
    documents: list[type[BaseModel]] = []
    parameters: list[type[BaseModel]] = []
    for view in app.view_functions.values():
        spec = getattr(view, "_openapi", None)
        if spec is not None:
            declared = (spec["body"], spec["form"], *spec["responses"].values())
            documents += [m for m in declared if m is not None]
            parameters += [m for m in (spec["query"], spec["headers"]) if m is not None]
    return documents, parameters


def test_every_component_is_a_declared_models_schema(app: Flask, document: dict[str, Any]) -> None:
    """No schema is written by hand: the components are exactly the declared models' schemas
    (with what they refer to), and bodies and answers only refer to them."""
    documents, parameters = declared_models(app)
    expected: dict[str, Any] = {}
    for model in documents + parameters:
        schemas = model_schemas(model)
        if model in parameters:  # its fields are parameters, not a component
            schemas.pop(model.__name__)
        for name, schema in schemas.items():
            assert expected.setdefault(name, schema) == schema, f"two schemas named {name}"
    assert len(expected) > 20
    assert document["components"]["schemas"] == expected

    for label, operation in operations(document):
        contents = [
            *operation.get("requestBody", {}).get("content", {}).values(),
            *(c for r in operation["responses"].values() for c in r.get("content", {}).values()),
        ]
        for content in contents:
            assert set(content["schema"]) == {"$ref"}, (label, content)
            assert component(document, content["schema"]), label


def test_ids_states_and_train_opts_are_the_codes(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["JobState"]["enum"] == [state.value for state in JobState]
    assert schemas["TrainOptions"] == TrainOptions.json_schema()
    (train_opts, _null) = schemas["JobRequest"]["properties"]["train_opts"]["anyOf"]
    assert train_opts == TrainOptions.json_schema()
    (model_id, _null) = schemas["JobRequest"]["properties"]["model_id"]["anyOf"]
    assert model_id["pattern"] == SAFE_ID.pattern
    assert schemas["AliasRequest"]["properties"]["model_id"]["pattern"] == SAFE_ID.pattern
    assert schemas["ModelImport"]["properties"]["id"]["pattern"] == SAFE_ID.pattern
    path_parameters = [
        (label, parameter)
        for label, operation in operations(document)
        for parameter in operation["parameters"]
        if parameter["in"] == "path"
    ]
    assert len(path_parameters) >= 11
    for label, parameter in path_parameters:
        if parameter["name"] == "row":  # <int:row>
            assert parameter["schema"] == {"type": "integer", "minimum": 0}, label
        else:
            assert parameter["schema"] == TypeAdapter(SafeId).json_schema(), label
            assert parameter["schema"]["pattern"] == SAFE_ID.pattern, label


def test_query_and_header_parameters_are_the_models_fields(document: dict[str, Any]) -> None:
    listing = {p["name"]: p for p in document["paths"]["/api/v1/jobs"]["get"]["parameters"]}
    assert set(listing) == set(JobListQuery.model_fields)
    fields = JobListQuery.model_json_schema()["properties"]
    assert listing["limit"]["schema"] == fields["limit"]
    # state: JobState | None, documented as an optional JobState (absent, never null)
    assert component(document, listing["state"]["schema"])["enum"] == [s.value for s in JobState]
    assert not listing["state"]["required"]
    (header,) = document["paths"]["/api/v1/jobs"]["post"]["parameters"]
    assert header["in"] == "header" and header["name"] == "Idempotency-Key"
    assert (header["schema"]["minLength"], header["schema"]["maxLength"]) == (1, 200)


def test_the_bodies_are_the_models_that_validate(document: dict[str, Any]) -> None:
    def body(path: str, method: str, media: str = "application/json") -> dict[str, Any]:
        content = document["paths"][path][method]["requestBody"]["content"][media]
        return component(document, content["schema"])

    assert body("/api/v1/jobs", "post") == model_schemas(JobRequest)["JobRequest"]
    assert body("/api/v1/aliases/{alias}", "put") == model_schemas(AliasRequest)["AliasRequest"]
    assert (
        body("/api/v1/models", "post", "multipart/form-data")
        == model_schemas(ModelImport)["ModelImport"]
    )
    predict = "/api/v1/models/{model_id}/predict"
    assert body(predict, "post") == model_schemas(PredictRequest)["PredictRequest"]
    upload = body(predict, "post", "multipart/form-data")
    assert upload == model_schemas(PredictUpload)["PredictUpload"]
    assert upload["properties"]["files"]["items"]["format"] == "binary"
    job_request = body("/api/v1/jobs", "post")
    assert job_request["additionalProperties"] is False and job_request["required"] == ["dataset"]
    upload = body("/api/v1/datasets", "post", "multipart/form-data")
    assert upload["required"] == ["file"] and upload["additionalProperties"] is False
    assert upload["properties"]["file"]["format"] == "binary"


def test_train_opts_are_documented_key_by_key_with_their_bounds(document: dict[str, Any]) -> None:
    train_opts = document["components"]["schemas"]["TrainOptions"]
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


def test_every_documented_bound_is_enforced(client: FlaskClient, document: dict[str, Any]) -> None:
    train_opts = document["components"]["schemas"]["TrainOptions"]
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


def test_job_states_in_answers_are_the_stores(document: dict[str, Any]) -> None:
    answer = document["paths"]["/api/v1/jobs"]["post"]["responses"]["202"]
    job = component(document, answer["content"]["application/json"]["schema"])
    assert (
        component(document, job["properties"]["state"])
        == document["components"]["schemas"]["JobState"]
    )
    assert job["additionalProperties"] is False  # every key an answer carries is documented


def test_real_answers_are_their_documented_models(
    app: Flask,
    client: FlaskClient,
    publish: Callable[[Flask, str, bytes], None],
    digits_model_bytes: bytes,
) -> None:
    """Each answer validates as its model (extra="forbid": no key is left undocumented)."""
    M = TypeVar("M", bound=BaseModel)

    def answer(model: type[M], response: Any) -> M:
        return model.model_validate_json(response.get_data())

    publish(app, "m", digits_model_bytes)
    queued = answer(api.Job, client.post("/api/v1/jobs", json={"dataset": "digits"}))
    assert queued.queue_position == 0 and queued.train_opts.optimizer == "adamw"
    answer(api.JobList, client.get("/api/v1/jobs"))
    assert answer(api.Model, client.get("/api/v1/models/m")).preprocessing.channels == 1
    answer(api.ModelList, client.get("/api/v1/models"))
    answer(api.Alias, client.put("/api/v1/aliases/a", json={"model_id": "m"}))
    answer(api.DatasetList, client.get("/api/v1/datasets"))
    answer(api.Dataset, client.get("/api/v1/datasets/digits"))
    predicted = client.post("/api/v1/models/a/predict", json={"examples": [[[[0.0] * 8] * 8]]})
    assert answer(api.PredictAnswer, predicted).model_id == "m"
    heartbeat = {"trainer_id": "t9", "url": "http://127.0.0.1:1", "slots": 2, "jobs": []}
    assert client.post("/internal/v1/heartbeat", json=heartbeat).status_code == 200
    (trainer,) = answer(api.TrainerList, client.get("/api/v1/trainers")).trainers
    assert trainer.state == "idle" and trainer.free_slots == 2
    assert answer(api.ErrorBody, client.get("/api/v1/jobs?limit=0")).field == "limit"
