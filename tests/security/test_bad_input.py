"""Malformed, mistyped, missing, huge and non-finite inputs on every JSON route: a 4xx whose
message names the field, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

BIG = "100000000000000000000000000000"  # 10**30 as a JSON literal
JOB = '{"dataset": "digits", %s}'
HEARTBEAT = '{"trainer_id": "t1", "url": "http://t", "slots": 1, "jobs": [%s]}'

# (method, url, raw JSON body, the field the error must name or None for "the body")
CASES = [
    # every JSON route: not JSON, not an object
    *[
        (method, url, body, None)
        for method, url in [
            ("POST", "/train"),
            ("POST", "/predict"),
            ("POST", "/get_examples"),
            ("POST", "/get_dataset_info"),
            ("POST", "/api/v1/jobs"),
            ("PUT", "/api/v1/aliases/a"),
            ("POST", "/api/v1/models/m1/predict"),
            ("POST", "/internal/v1/heartbeat"),
            ("POST", "/internal/v1/jobs/JOB/failure"),
        ]
        for body in ("{bad", "[1, 2]", "", '"text"')
    ],
    # /api/v1/jobs
    ("POST", "/api/v1/jobs", '{"dataset": 5}', "dataset"),
    ("POST", "/api/v1/jobs", "{}", "dataset"),
    ("POST", "/api/v1/jobs", JOB % '"model_type": "NoSuchNet"', "model_type"),
    ("POST", "/api/v1/jobs", JOB % '"model_type": 7', "model_type"),
    ("POST", "/api/v1/jobs", JOB % '"example_idxs": [10, 5]', "example_idxs"),
    ("POST", "/api/v1/jobs", JOB % '"example_idxs": [-5, 3]', "example_idxs"),
    ("POST", "/api/v1/jobs", JOB % f'"example_idxs": [0, {BIG}]', "example_idxs"),
    ("POST", "/api/v1/jobs", JOB % '"example_idxs": [0, 1e308]', "example_idxs"),
    ("POST", "/api/v1/jobs", JOB % '"example_idxs": [0, NaN]', "example_idxs"),
    ("POST", "/api/v1/jobs", JOB % '"train_opts": "fast"', "train_opts"),
    ("POST", "/api/v1/jobs", JOB % '"train_opts": {"num_epochs": NaN}', "num_epochs"),
    ("POST", "/api/v1/jobs", JOB % f'"train_opts": {{"num_epochs": {BIG}}}', "num_epochs"),
    ("POST", "/api/v1/jobs", JOB % '"train_opts": {"lr": Infinity}', "lr"),
    ("POST", "/api/v1/jobs", JOB % '"train_opts": {"lr": -1e308}', "lr"),
    ("POST", "/api/v1/jobs", JOB % '"train_opts": {"no_such_option": 1}', "no_such_option"),
    ("POST", "/api/v1/jobs", JOB % '"model_id": "../etc"', "model_id"),
    ("POST", "/api/v1/jobs", JOB % '"unknown_key": 1', None),
    # seed /train
    ("POST", "/train", '{"model_id": "a"}', "model_type"),
    ("POST", "/train", '{"model_type": "SmallConvNet"}', "model_id"),
    (
        "POST",
        "/train",
        '{"model_type": "Nope", "model_id": "a", "dataset": "digits"}',
        "model_type",
    ),
    (
        "POST",
        "/train",
        '{"model_type": "SmallConvNet", "model_id": "a", "dataset": "digits", '
        '"example_idxs": [5, 2]}',
        "example_idxs",
    ),
    # seed /predict
    ("POST", "/predict", '{"examples": [1]}', "model_id"),
    ("POST", "/predict", '{"model_id": 5}', "model_id"),
    ("POST", "/predict", '{"model_id": "m1", "examples": "x"}', "examples"),
    ("POST", "/predict", '{"model_id": "m1", "examples": [[[[NaN]]]]}', "examples"),
    ("POST", "/predict", f'{{"model_id": "m1", "examples": [[[[{BIG}]]]]}}', "examples"),
    # seed /get_examples and /get_dataset_info
    ("POST", "/get_examples", '{"dataset": "digits", "example_idxs": [5, 2]}', "example_idxs"),
    ("POST", "/get_examples", '{"dataset": "digits", "example_idxs": [-1, 2]}', "example_idxs"),
    (
        "POST",
        "/get_examples",
        f'{{"dataset": "digits", "example_idxs": [0, {BIG}]}}',
        "example_idxs",
    ),
    ("POST", "/get_examples", '{"dataset": "digits", "example_idxs": NaN}', "example_idxs"),
    ("POST", "/get_examples", '{"dataset": "digits", "example_idxs": [0, 1e308]}', "example_idxs"),
    (
        "POST",
        "/get_examples",
        '{"dataset": "digits", "example_idxs": [0, 2], "dataset_type": 1}',
        "dataset_type",
    ),
    ("POST", "/get_examples", '{"dataset": 5, "example_idxs": [0, 1]}', "dataset"),
    ("POST", "/get_dataset_info", '{"dataset_name": 5}', "dataset_name"),
    ("POST", "/get_dataset_info", '{"dataset_name": "nope"}', "dataset"),
    # v1 aliases and predict
    ("PUT", "/api/v1/aliases/a", '{"model_id": 5}', "model_id"),
    ("PUT", "/api/v1/aliases/a", "{}", "model_id"),
    ("PUT", "/api/v1/aliases/a", '{"model_id": "ghost"}', "model_id"),
    ("POST", "/api/v1/models/m1/predict", '{"examples": [[[[Infinity]]]]}', "examples"),
    ("POST", "/api/v1/models/m1/predict", f'{{"examples": [[[[{BIG}]]]]}}', "examples"),
    ("POST", "/api/v1/models/m1/predict", '{"examples": [[[["1"]]]]}', "examples"),
    ("POST", "/api/v1/models/m1/predict", '{"instances": [5]}', "instances"),
    ("POST", "/api/v1/models/m1/predict", '{"examples": [[[[0]]]], "top_k": 1e308}', "top_k"),
    ("POST", "/api/v1/models/m1/predict", f'{{"examples": [[[[0]]]], "top_k": {BIG}}}', "top_k"),
    ("POST", "/api/v1/models/m1/predict", '{"examples": [[[[0]]]], "top_k": -1}', "top_k"),
    ("POST", "/api/v1/models/ghost/predict", '{"examples": [[[[0]]]]}', "model_id"),
    # internal routes
    ("POST", "/internal/v1/heartbeat", '{"url": "http://t:1", "slots": 1}', "trainer_id"),
    ("POST", "/internal/v1/heartbeat", '{"trainer_id": "t", "url": "ftp://t", "slots": 1}', "url"),
    (
        "POST",
        "/internal/v1/heartbeat",
        f'{{"trainer_id": "t", "url": "http://t", "slots": {BIG}}}',
        "slots",
    ),
    (
        "POST",
        "/internal/v1/heartbeat",
        '{"trainer_id": "t", "url": "http://t", "slots": NaN}',
        "slots",
    ),
    (
        "POST",
        "/internal/v1/heartbeat",
        '{"trainer_id": "t", "url": "http://t", "slots": 1, "jobs": 3}',
        "jobs",
    ),
    (
        "POST",
        "/internal/v1/heartbeat",
        HEARTBEAT % f'{{"job_id": "JOB", "attempt": {BIG}}}',
        "jobs[0].attempt",
    ),
    (
        "POST",
        "/internal/v1/heartbeat",
        HEARTBEAT % '{"job_id": "JOB", "attempt": Infinity}',
        "jobs[0].attempt",
    ),
    ("POST", "/internal/v1/jobs/JOB/failure", '{"attempt": 1e308}', "attempt"),
    ("POST", "/internal/v1/jobs/JOB/failure", f'{{"attempt": {BIG}}}', "attempt"),
    ("POST", "/internal/v1/jobs/JOB/failure", '{"attempt": -1}', "attempt"),
    ("POST", "/internal/v1/jobs/JOB/failure", '{"attempt": "x"}', "attempt"),
    ("POST", f"/internal/v1/jobs/JOB/result?attempt={BIG}", "x", "attempt"),
    ("POST", "/internal/v1/jobs/JOB/result?attempt=0", "x", "attempt"),
    ("PUT", "/internal/v1/jobs/JOB/checkpoint?attempt=-1", "x", "attempt"),
    ("PUT", "/internal/v1/jobs/JOB/checkpoint?attempt=inf", "x", "attempt"),
    ("GET", "/api/v1/jobs?state=exploded", None, "state"),
]


@pytest.mark.parametrize(("method", "url", "body", "field"), CASES)
def test_bad_input_is_4xx_naming_the_field(
    client: FlaskClient,
    app: Flask,
    published: str,
    method: str,
    url: str,
    body: str | None,
    field: str | None,
    running_job: Any,
) -> None:
    job_id = running_job(client, app, "m2", {})
    response = client.open(
        url.replace("JOB", job_id),
        method=method,
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert 400 <= response.status_code < 500, (response.status_code, response.get_data())
    payload = response.json
    assert payload is not None and payload["error"], response.get_data()
    if field is not None:
        assert payload.get("field") == field, payload
    # nothing broke: the job is still running on its attempt, the model still serves
    assert client.get(f"/api/v1/jobs/{job_id}").json["state"] == "running"
    assert client.get("/api/v1/models/m1").status_code == 200
