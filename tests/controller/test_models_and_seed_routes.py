"""Models, predict, datasets and the seed's routes, in-process against a real trained model."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from flask import Flask
from flask.testing import FlaskClient

from cnnswarm.controller.context import ControllerContext
from cnnswarm.ml.artifact import (
    CIFAR10_CLASSES,
    SEED_PREPROCESSING,
    ModelArtifact,
    artifact_from_bytes,
    artifact_to_bytes,
)
from cnnswarm.ml.models import ModelConfig
from cnnswarm.ml.seed_model import SITE_KEYS, NNConvResNetRGB
from support import digits_png, image_folder_zip, png_bytes


@pytest.fixture
def published(client: FlaskClient, context: ControllerContext, digits_model_bytes: bytes) -> str:
    """A model 'digits-model' published through the trainer protocol."""
    job_id = client.post("/api/v1/jobs", json={"dataset": "digits", "model_id": "digits-model"})
    job_id = job_id.json["id"]
    context.stores.jobs.claim(context.stores.jobs.get(job_id), "t1", lease_s=30)
    response = client.post(f"/internal/v1/jobs/{job_id}/result?attempt=1", data=digits_model_bytes)
    assert response.status_code == 200
    return "digits-model"


def test_model_records_and_aliases(client: FlaskClient, published: str) -> None:
    model = client.get(f"/api/v1/models/{published}").json
    assert model["model_type"] == "SmallConvNet" and model["classes"][:2] == ["0", "1"]
    assert model["dataset"] == "digits" and model["metrics"] and model["train_opts"]
    assert client.put("/api/v1/aliases/prod", json={"model_id": published}).status_code == 200
    assert client.get("/api/v1/models/prod").json["id"] == published
    assert client.put("/api/v1/aliases/prod", json={"model_id": "nope"}).status_code == 404
    assert client.get("/api/v1/models").json["models"][0]["aliases"] == ["prod"]


def test_predict_images_multipart_base64_and_examples(client: FlaskClient, published: str) -> None:
    images = [digits_png(i) for i in range(40)]
    files = [(png, f"{i}.png") for i, (png, _) in enumerate(images)]
    response = client.post(
        f"/api/v1/models/{published}/predict",
        data={"files": [(io.BytesIO(png), name) for png, name in files], "top_k": "3"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.json
    predictions = response.json["predictions"]
    assert len(predictions) == 40 and len(predictions[0]["top_k"]) == 3
    correct = sum(
        p["class_idx"] == label for p, (_, label) in zip(predictions, images, strict=True)
    )
    assert correct >= 30  # far above the 10% of chance
    first = predictions[0]
    assert first["class_tag"] == str(first["class_idx"]) and 0 < first["probability"] <= 1
    assert first["top_k"][0]["class_idx"] == first["class_idx"]

    b64 = base64.b64encode(images[0][0]).decode()
    as_json = client.post(f"/api/v1/models/{published}/predict", json={"instances": [b64]})
    assert as_json.json["predictions"][0]["class_idx"] == first["class_idx"]

    examples = np.zeros((2, 1, 8, 8), dtype=np.float32).tolist()
    by_examples = client.post(f"/api/v1/models/{published}/predict", json={"examples": examples})
    assert len(by_examples.json["predictions"]) == 2


def test_served_model_is_folded_and_agrees_with_the_artefact(
    client: FlaskClient, published: str, context: ControllerContext, digits_model_bytes: bytes
) -> None:
    """Predict serves a copy with batch norms folded into the convolutions, and its answers are
    the stored model's."""
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32))
    response = client.post(
        f"/api/v1/models/{published}/predict", json={"examples": x.tolist(), "top_k": 10}
    )
    assert response.status_code == 200, response.json
    served = torch.zeros(4, 10)
    for row, prediction in enumerate(response.json["predictions"]):
        for entry in prediction["top_k"]:
            served[row, entry["class_idx"]] = entry["probability"]
    with torch.inference_mode():
        expected = torch.softmax(artifact_from_bytes(digits_model_bytes).build_model()(x), dim=1)
    torch.testing.assert_close(served, expected, rtol=1e-4, atol=1e-5)

    loaded = context.predictor.get(
        context.stores.catalog.get_model(published), context.stores.artifacts.root
    )
    # Served as frozen TorchScript (runs without the GIL), its batch norms folded away.
    assert isinstance(loaded.model, torch.jit.ScriptModule)
    ops = {node.kind() for node in loaded.model.graph.nodes()}
    assert "aten::conv2d" in ops or "aten::_convolution" in ops, ops
    assert not {"aten::batch_norm", "aten::_batch_norm_impl_index"} & ops, ops


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"instances": ["###"]}, "instances"),
        ({"instances": [base64.b64encode(b"not an image").decode()]}, None),
        ({"instances": []}, "instances"),
        ({"examples": [[[1.0]]]}, "examples"),
        ({"examples": "x"}, "examples"),
        ({"examples": np.zeros((1, 1, 8, 8)).tolist(), "top_k": 0}, "top_k"),
        ({}, "instances"),
        ({"nothing": 1}, "nothing"),
        ({"instances": [{"b64": "###"}]}, "instances"),
        ({"instances": [{"b64": "AAAA", "name": "x"}]}, "instances"),
        ({"examples": np.zeros((1, 1, 8, 8)).tolist(), "top_k": "3"}, "top_k"),
        ({"examples": np.zeros((1, 1, 8, 8)).tolist(), "top_k": 2.0}, "top_k"),
    ],
)
def test_bad_predict_input_is_400(
    client: FlaskClient, published: str, body: dict[str, Any], field: str | None
) -> None:
    response = client.post(f"/api/v1/models/{published}/predict", json=body)
    assert response.status_code == 400, response.json
    if field:
        assert response.json["field"] == field


def test_predict_unknown_model_is_404(client: FlaskClient) -> None:
    response = client.post("/api/v1/models/ghost/predict", json={"examples": [[[[0.0]]]]})
    assert response.status_code == 404


def test_delete_model_frees_its_id(client: FlaskClient, published: str) -> None:
    assert client.delete(f"/api/v1/models/{published}").status_code == 200
    assert client.get(f"/api/v1/models/{published}").status_code == 404
    again = client.post("/api/v1/jobs", json={"dataset": "digits", "model_id": published})
    assert again.status_code == 202


def test_dataset_upload_list_get_delete(client: FlaskClient) -> None:
    rng = np.random.default_rng(0)
    archive = image_folder_zip(
        {
            "red": [png_bytes(np.full((12, 12, 3), (200, 20, 20), np.uint8)) for _ in range(6)],
            "blue": [png_bytes(rng.integers(0, 60, (12, 12, 3), dtype=np.uint8)) for _ in range(6)],
        }
    )
    response = client.post(
        "/api/v1/datasets",
        data={"file": (__import__("io").BytesIO(archive), "colors.zip"), "name": "colors"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 201, response.json
    record = response.json
    assert record["name"] == "colors" and sorted(record["classes"]) == ["blue", "red"]
    assert record["num_train"] + record["num_test"] == 12 and record["shape"] == [3, 12, 12]
    ids = [d["id"] for d in client.get("/api/v1/datasets").json["datasets"]]
    assert ids[:3] == ["cifar10", "digits", "synthetic"] and record["id"] in ids
    assert client.get(f"/api/v1/datasets/{record['id']}").json["classes"] == record["classes"]
    job = client.post("/api/v1/jobs", json={"dataset": record["id"]})
    assert job.status_code == 202 and job.json["model_type"] == "SmallConvNet"
    assert client.delete(f"/api/v1/datasets/{record['id']}").status_code == 200
    assert client.get(f"/api/v1/datasets/{record['id']}").status_code == 404
    assert client.delete("/api/v1/datasets/digits").status_code == 400


def test_bad_uploads_are_4xx(client: FlaskClient, context: ControllerContext) -> None:
    io = __import__("io")
    no_file = client.post(
        "/api/v1/datasets", data={"name": "x"}, content_type="multipart/form-data"
    )
    assert no_file.status_code == 400 and no_file.json["field"] == "file"
    junk = client.post(
        "/api/v1/datasets",
        data={"file": (io.BytesIO(b"junk" * 10), "a.zip")},
        content_type="multipart/form-data",
    )
    assert junk.status_code == 400
    # the app keeps serving after bad uploads, and nothing half-imported stays listed
    assert len(context.stores.catalog.list_datasets()) == 0
    assert client.get("/api/v1/datasets").status_code == 200


def test_upload_over_the_limit_is_413(tmp_path: Any) -> None:
    from cnnswarm.config import Settings
    from cnnswarm.controller.app import create_app

    app = create_app(Settings(home_dir=tmp_path / "h", max_upload_bytes=1024))
    client = app.test_client()
    io = __import__("io")
    response = client.post(
        "/api/v1/datasets",
        data={"file": (io.BytesIO(b"x" * 4096), "big.zip")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 413


def test_seed_routes(client: FlaskClient, published: str) -> None:
    assert client.get("/type").json == {"type": "controller"}
    assert "running" in client.get("/").get_data(as_text=True)
    assert client.get("/status").json["train_jobs"] == []
    info = client.post("/get_dataset_info", json={"dataset_name": "digits"}).json
    assert info == {"num_train": 1437, "num_test": 360, "ex_shape": [1, 8, 8], "num_classes": 10}
    examples = client.post(
        "/get_examples", json={"example_idxs": [0, 5], "dataset_type": "test", "dataset": "digits"}
    ).json
    assert len(examples["examples"]) == 5 and len(examples["class_idxs"]) == 5
    assert np.asarray(examples["examples"]).shape == (5, 1, 8, 8)
    predicted = client.post(
        "/predict", json={"model_id": published, "examples": examples["examples"]}
    ).json
    assert len(predicted["class_idxs"]) == 5 and predicted["class_tags"][0].isdigit()
    model_info = client.get("/get_model_info").json
    assert model_info[published]["model_type"] == "SmallConvNet"
    assert model_info[published]["filename"] == f"{published}.pth"


def test_seed_train_errors_keep_the_exception_key(client: FlaskClient) -> None:
    missing = client.post("/train", json={"model_type": "NNConvResNetRGB"})
    assert missing.status_code == 400
    assert missing.json["exception"] == "InvalidInputArg" and missing.json["field"] == "model_id"
    assert missing.json["content"] == {"model_type": "NNConvResNetRGB"}
    no_cifar = client.post("/train", json={"model_type": "NNConvResNetRGB", "model_id": "x"})
    assert no_cifar.status_code == 409 and "cifar-10-python.tar.gz" in no_cifar.json["error"]
    ok = client.post(
        "/train",
        json={
            "model_type": "SmallConvNet",
            "model_id": "s1",
            "dataset": "digits",
            "example_idxs": [0, 100],
            "train_opts": {"num_epochs": 1},
        },
    )
    assert ok.status_code == 200 and ok.json["status"] == {"initiated": True}


def test_openapi_documents_every_v1_route(client: FlaskClient) -> None:
    doc = client.get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.")
    for path in (
        "/api/v1/jobs",
        "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/{job_id}/cancel",
        "/api/v1/jobs/{job_id}/events",
        "/api/v1/models",
        "/api/v1/models/{model_id}",
        "/api/v1/models/{model_id}/predict",
        "/api/v1/aliases/{alias}",
        "/api/v1/datasets",
        "/api/v1/datasets/{dataset_id}",
        "/api/v1/trainers",
    ):
        assert path in doc["paths"], path
    assert "requestBody" in doc["paths"]["/api/v1/jobs"]["post"]


def test_a_model_without_per_site_statistics_is_refused_with_what_to_do(
    app: Flask, client: FlaskClient, publish: Callable[[Flask, str, bytes], None]
) -> None:
    """Weights of the seed's network saved without statistics per call site (a model trained
    before they existed) would predict at chance level: refused with 409, never served."""
    model = NNConvResNetRGB()
    state = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[1] not in SITE_KEYS}
    artifact = ModelArtifact(
        model_type="NNConvResNetRGB",
        model_config=ModelConfig("NNConvResNetRGB", 3, 32, 32, 10).to_json(),
        classes=list(CIFAR10_CLASSES),
        preprocessing=dict(SEED_PREPROCESSING),
        state_dict=state,
    )
    publish(app, "old-seed-net", artifact_to_bytes(artifact))
    answer = client.post(
        "/api/v1/models/old-seed-net/predict", json={"examples": [[[[0.0] * 32] * 32] * 3]}
    )
    assert answer.status_code == 409, answer.json
    assert answer.json["field"] == "model_id"
    assert "POST /api/v1/models" in answer.json["error"]
    again = client.post(
        "/api/v1/models/old-seed-net/predict", json={"examples": [[[[0.0] * 32] * 32] * 3]}
    )
    assert again.status_code == 409  # refused every time, never served after a failed load
    assert client.get("/api/v1/models/old-seed-net/torchscript").status_code == 409
    # Its file can still be downloaded, to import it again with its training data.
    downloaded = client.get("/api/v1/models/old-seed-net/file")
    assert downloaded.status_code == 200
    assert set(artifact_from_bytes(downloaded.data).state_dict) == set(state)
