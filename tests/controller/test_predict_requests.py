"""What predict answers: ``top_k`` rankings, the seed route agreeing with v1, the per-request
limits of every input form (exactly at the limit accepted, one more refused), and 503 with
``Retry-After`` past the queue-time bound."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flask import Flask
from flask.testing import FlaskClient

from cnnswarm.config import Settings
from cnnswarm.controller.api_schemas import MAX_ITEMS_PER_REQUEST
from cnnswarm.controller.api_schemas import MAX_SEED_EXAMPLES as MAX_EXAMPLES
from cnnswarm.controller.app import create_app
from support import digits_png, wait_until


@pytest.fixture
def model(
    app: Flask, publish: Callable[[Flask, str, bytes], None], digits_model_bytes: bytes
) -> str:
    publish(app, "digits-model", digits_model_bytes)
    return "digits-model"


def _examples(count: int, seed: int = 0) -> list[Any]:
    """``count`` distinct normalized 1x8x8 inputs, as nested lists."""
    rng = np.random.default_rng(seed)
    examples: list[Any] = rng.normal(size=(count, 1, 8, 8)).astype(np.float32).tolist()
    return examples


def _predictions(client: FlaskClient, model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(f"/api/v1/models/{model}/predict", json=body)
    assert response.status_code == 200, response.json
    predictions: list[dict[str, Any]] = response.get_json()["predictions"]
    return predictions


# -- top_k ----------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [1, 3, 9])
def test_top_k_is_a_ranking_of_distinct_classes(
    client: FlaskClient, model: str, top_k: int
) -> None:
    classes = client.get(f"/api/v1/models/{model}").get_json()["classes"]
    predictions = _predictions(client, model, {"examples": _examples(16), "top_k": top_k})
    assert len(predictions) == 16
    for prediction in predictions:
        ranked = prediction["top_k"]
        assert len(ranked) == top_k
        probabilities = [entry["probability"] for entry in ranked]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0 <= p <= 1 for p in probabilities)
        indices = [entry["class_idx"] for entry in ranked]
        assert len(set(indices)) == top_k and all(0 <= i < len(classes) for i in indices)
        assert all(entry["class_tag"] == classes[entry["class_idx"]] for entry in ranked)
        best = {key: prediction[key] for key in ("class_idx", "class_tag", "probability")}
        assert best == ranked[0]


def test_a_large_top_k_returns_every_class_summing_to_one(client: FlaskClient, model: str) -> None:
    classes = client.get(f"/api/v1/models/{model}").get_json()["classes"]
    for prediction in _predictions(client, model, {"examples": _examples(8), "top_k": 1000}):
        ranked = prediction["top_k"]
        assert sorted(entry["class_idx"] for entry in ranked) == list(range(len(classes)))
        assert sum(entry["probability"] for entry in ranked) == pytest.approx(1.0, abs=1e-5)
        probabilities = [entry["probability"] for entry in ranked]
        assert probabilities == sorted(probabilities, reverse=True)


def test_top_k_from_the_query_and_the_form(client: FlaskClient, model: str) -> None:
    png, _ = digits_png(0)
    by_query = client.post(
        f"/api/v1/models/{model}/predict?top_k=4", json={"examples": _examples(2)}
    )
    assert [len(p["top_k"]) for p in by_query.get_json()["predictions"]] == [4, 4]
    by_form = client.post(
        f"/api/v1/models/{model}/predict",
        data={"files": [(io.BytesIO(png), "0.png")], "top_k": "5"},
        content_type="multipart/form-data",
    )
    assert [len(p["top_k"]) for p in by_form.get_json()["predictions"]] == [5]


def test_the_seed_route_agrees_with_v1_top_1(client: FlaskClient, model: str) -> None:
    examples = _examples(32, seed=3)
    v1 = _predictions(client, model, {"examples": examples})
    seed = client.post("/predict", json={"model_id": model, "examples": examples})
    assert seed.status_code == 200, seed.json
    answer = seed.get_json()
    assert answer["class_idxs"] == [p["class_idx"] for p in v1]
    assert answer["class_tags"] == [p["class_tag"] for p in v1]
    assert answer["probabilities"] == pytest.approx([p["probability"] for p in v1], abs=1e-6)
    # and on the seed's own examples, as a seed client sends them
    got = client.post(
        "/get_examples", json={"example_idxs": [0, 20], "dataset_type": "test", "dataset": "digits"}
    ).get_json()
    v1 = _predictions(client, model, {"examples": got["examples"]})
    seed_answer = client.post("/predict", json={"model_id": model, "examples": got["examples"]})
    assert seed_answer.get_json()["class_idxs"] == [p["class_idx"] for p in v1]
    assert seed_answer.get_json()["probabilities"] == pytest.approx(
        [p["probability"] for p in v1], abs=1e-6
    )


# -- per-request limits -----------------------------------------------------------------------


def _multipart(client: FlaskClient, model: str, count: int) -> Any:
    png, _ = digits_png(0)
    files = [(io.BytesIO(png), f"{i}.png") for i in range(count)]
    return client.post(
        f"/api/v1/models/{model}/predict",
        data={"files": files},
        content_type="multipart/form-data",
    )


def _instances(client: FlaskClient, model: str, count: int) -> Any:
    b64 = base64.b64encode(digits_png(0)[0]).decode()
    return client.post(f"/api/v1/models/{model}/predict", json={"instances": [b64] * count})


def _v1_examples(client: FlaskClient, model: str, count: int) -> Any:
    return client.post(f"/api/v1/models/{model}/predict", json={"examples": _examples(count)})


@pytest.mark.parametrize(
    ("send", "field"),
    [(_multipart, "files"), (_instances, "instances"), (_v1_examples, "examples")],
)
def test_v1_predict_takes_at_most_256_items(
    client: FlaskClient, model: str, send: Callable[[FlaskClient, str, int], Any], field: str
) -> None:
    assert MAX_ITEMS_PER_REQUEST == 256  # the documented limit
    at_limit = send(client, model, MAX_ITEMS_PER_REQUEST)
    assert at_limit.status_code == 200, at_limit.json
    assert len(at_limit.get_json()["predictions"]) == MAX_ITEMS_PER_REQUEST
    over = send(client, model, MAX_ITEMS_PER_REQUEST + 1)
    assert over.status_code == 400, over.json
    assert over.get_json()["field"] == field
    assert str(MAX_ITEMS_PER_REQUEST) in over.get_json()["error"]


def test_seed_predict_takes_at_most_1000_examples(client: FlaskClient, model: str) -> None:
    assert MAX_EXAMPLES == 1000
    examples = _examples(MAX_EXAMPLES + 1)
    at_limit = client.post("/predict", json={"model_id": model, "examples": examples[:-1]})
    assert at_limit.status_code == 200, at_limit.json
    assert len(at_limit.get_json()["class_idxs"]) == MAX_EXAMPLES
    over = client.post("/predict", json={"model_id": model, "examples": examples})
    assert over.status_code == 400, over.json
    assert over.get_json()["field"] == "examples"
    assert over.get_json()["exception"] == "InvalidInputArg"


def test_seed_get_examples_serves_at_most_1000(client: FlaskClient) -> None:
    def get(end: int) -> Any:
        body = {"example_idxs": [0, end], "dataset_type": "train", "dataset": "digits"}
        return client.post("/get_examples", json=body)

    at_limit = get(MAX_EXAMPLES)
    assert at_limit.status_code == 200, at_limit.json
    assert len(at_limit.get_json()["examples"]) == MAX_EXAMPLES
    over = get(MAX_EXAMPLES + 1)  # digits has 1437 training images: only the limit refuses it
    assert over.status_code == 400, over.json
    assert over.get_json()["field"] == "example_idxs"
    assert str(MAX_EXAMPLES) in over.get_json()["error"]


# -- load shedding by queue time -------------------------------------------------------------


def test_past_the_queue_time_bound_predict_answers_503_with_retry_after(
    tmp_path: Path, publish: Callable[[Flask, str, bytes], None], digits_model_bytes: bytes
) -> None:
    """A forward pass held open builds a queue; requests queued past ``PREDICT_MAX_QUEUE_S``
    get 503 with ``Retry-After`` and the error body, the held one is still answered."""
    app = create_app(Settings(home_dir=tmp_path / "home", predict_max_queue_s=0.3))
    try:
        publish(app, "m", digits_model_bytes)
        client = app.test_client()
        assert (
            client.post("/api/v1/models/m/predict", json={"examples": _examples(1)}).status_code
            == 200
        )
        context = app.extensions["cnnswarm"]
        loaded = context.predictor.get(
            context.stores.catalog.get_model("m"), context.stores.artifacts.root
        )
        gate, entered = threading.Event(), threading.Event()
        real_forward = loaded.queue.forward

        def held_forward(inputs: torch.Tensor) -> torch.Tensor:
            entered.set()
            assert gate.wait(timeout=60)
            return real_forward(inputs)

        loaded.queue.forward = held_forward
        answers: dict[int, Any] = {}

        def ask(index: int) -> None:
            body = {"examples": _examples(1 + index, seed=index)}
            answers[index] = app.test_client().post("/api/v1/models/m/predict", json=body)

        threads = [threading.Thread(target=ask, args=(0,))]
        threads[0].start()
        wait_until(entered.is_set, timeout=30, what="the held forward pass")
        threads += [threading.Thread(target=ask, args=(i,)) for i in (1, 2, 3)]
        for thread in threads[1:]:
            thread.start()
        wait_until(lambda: len(answers) == 3, timeout=30, what="the queued requests' answers")
        for index in (1, 2, 3):
            refused = answers[index]
            assert refused.status_code == 503
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.get_json()["exception"] == "Overloaded"
            assert "PREDICT_MAX_QUEUE_S" in refused.get_json()["error"]
        gate.set()
        threads[0].join(timeout=60)
        assert answers[0].status_code == 200
        assert len(answers[0].get_json()["predictions"]) == 1
    finally:
        app.extensions["cnnswarm"].stores.close()
