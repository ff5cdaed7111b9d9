"""Models in and out: POST /api/v1/models, GET /models/<id>/file and /models/<id>/torchscript.

The seed-trained file is produced by the seed's own network definition (``seed_network``),
trained in train mode as the seed trains, and imported through the route; what predict then
serves is held to what that network achieves with batch statistics.
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flask import Flask
from flask.testing import FlaskClient

import fixtures_cifar
from cnnswarm.config import Settings
from cnnswarm.controller.app import create_app
from cnnswarm.controller.context import ControllerContext
from cnnswarm.ml.artifact import CIFAR10_CLASSES, artifact_from_bytes, artifact_to_bytes
from cnnswarm.ml.datasets.base import ArrayDataset
from cnnswarm.ml.models import needs_calibration
from real_images import CLASSES as DIGIT_CLASSES
from real_images import digits_rgb32
from seed_network import (
    SeedNNConvResNetRGB,
    seed_normalize,
    train_like_the_seed,
    train_mode_accuracy,
)
from support import MarkerPayload

torch.set_num_threads(1)

# One worker runs the module: its seed network is trained once (seed_trained), not per worker.
pytestmark = pytest.mark.xdist_group("model-import")

SEED_TRAIN_ROWS = 1408  # a proper slice of the 1,437 training images, so example_idxs counts


@pytest.fixture(scope="session")
def digits32() -> ArrayDataset:
    return digits_rgb32()


@pytest.fixture(scope="session")
def seed_trained(digits32: ArrayDataset) -> tuple[bytes, float]:
    """A seed ``.pth`` (state dict of the seed's network trained briefly in train mode on the
    first rows of digits32) and the accuracy that network reaches in train mode on the held-out
    split."""
    rows = slice(0, SEED_TRAIN_ROWS)
    model = train_like_the_seed(digits32.x_train[rows], digits32.y_train[rows], epochs=2)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue(), train_mode_accuracy(model, digits32.x_test, digits32.y_test)


def seed_file(state_dict: dict[str, torch.Tensor] | None = None) -> bytes:
    """A seed ``.pth``: by default a freshly initialised seed network's state dict."""
    buffer = io.BytesIO()
    torch.save(SeedNNConvResNetRGB().state_dict() if state_dict is None else state_dict, buffer)
    return buffer.getvalue()


def upload_digits32(client: FlaskClient, digits32: ArrayDataset) -> str:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x_train=digits32.x_train,
        y_train=digits32.y_train,
        x_test=digits32.x_test,
        y_test=digits32.y_test,
        classes=np.array(digits32.classes),
    )
    response = client.post(
        "/api/v1/datasets",
        data={"file": (io.BytesIO(buffer.getvalue()), "digits32.npz"), "name": "digits32"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 201, response.json
    return str(response.json["id"])


def post_model(client: FlaskClient, data: bytes, **fields: str) -> Any:
    return client.post(
        "/api/v1/models",
        data={"file": (io.BytesIO(data), "model.pth"), **fields},
        content_type="multipart/form-data",
    )


def served_probabilities(client: FlaskClient, model_id: str, inputs: torch.Tensor) -> np.ndarray:
    """Every class's probability for each input, as the HTTP predict route answers."""
    rows = []
    for start in range(0, len(inputs), 256):
        response = client.post(
            f"/api/v1/models/{model_id}/predict",
            json={"examples": inputs[start : start + 256].tolist(), "top_k": 10_000},
        )
        assert response.status_code == 200, response.json
        for prediction in response.json["predictions"]:
            row = np.zeros(len(prediction["top_k"]))
            for entry in prediction["top_k"]:
                row[entry["class_idx"]] = entry["probability"]
            rows.append(row)
    return np.stack(rows)


def nothing_stored(context: ControllerContext) -> bool:
    """No model row, no id reserved, no model file."""
    files = [p for p in (context.stores.artifacts.root / "torch_models").rglob("*") if p.is_file()]
    return not context.stores.catalog.list_models() and not files


# -- a seed-trained file -------------------------------------------------------------------------


def test_seed_file_recalibrated_on_its_training_rows_serves_what_it_learned(
    client: FlaskClient,
    context: ControllerContext,
    digits32: ArrayDataset,
    seed_trained: tuple[bytes, float],
) -> None:
    data, seed_accuracy = seed_trained
    dataset_id = upload_digits32(client, digits32)
    response = post_model(
        client,
        data,
        id="from-seed",
        classes=",".join(DIGIT_CLASSES),
        dataset=dataset_id,
        example_idxs=f"0,{SEED_TRAIN_ROWS}",
    )
    assert response.status_code == 201, response.json
    record = response.json
    assert record["id"] == "from-seed" and record["model_type"] == "NNConvResNetRGB"
    assert record["classes"] == DIGIT_CLASSES and record["dataset"] == dataset_id
    assert record["example_idxs"] == [0, SEED_TRAIN_ROWS] and record["job_id"] is None
    assert record["recalibration"] == {
        "dataset": dataset_id,
        "example_idxs": [0, SEED_TRAIN_ROWS],
        "images": SEED_TRAIN_ROWS,
    }

    probabilities = served_probabilities(client, "from-seed", seed_normalize(digits32.x_test))
    served_accuracy = float((probabilities.argmax(1) == digits32.y_test).mean())
    assert seed_accuracy > 0.8  # the seed's network learned (in train mode)
    assert served_accuracy > 0.8  # far above the 10 % of chance
    assert abs(served_accuracy - seed_accuracy) <= 0.04, (served_accuracy, seed_accuracy)

    # What is stored is a cnn-swarm model file with the statistics in it.
    stored = artifact_from_bytes(client.get("/api/v1/models/from-seed/file").data)
    assert not stored.from_seed and stored.classes == DIGIT_CLASSES
    assert stored.dataset["recalibration"]["dataset"] == dataset_id
    assert not needs_calibration(stored.build_model())


def test_seed_file_defaults_to_cifar10_and_its_class_names(
    client: FlaskClient, context: ControllerContext
) -> None:
    archive = context.stores.artifacts.torch_data / "cifar-10-python.tar.gz"
    fixtures_cifar.write_cifar10_archive(archive, n_per_batch=20, n_test=10)
    response = post_model(client, seed_file(), id="seed-cifar")
    assert response.status_code == 201, response.json
    assert response.json["classes"] == CIFAR10_CLASSES
    assert response.json["recalibration"] == {
        "dataset": "cifar10",
        "example_idxs": None,
        "images": 100,
    }
    assert response.json["dataset"] == "cifar10"


def test_seed_file_without_its_dataset_is_400_saying_what_to_do(
    client: FlaskClient, context: ControllerContext
) -> None:
    response = post_model(client, seed_file(), id="seed-cifar")
    assert response.status_code == 400
    assert response.json["field"] == "dataset"
    message = response.json["error"]
    assert "dataset 'cifar10' is not available" in message
    assert "cifar-10-python.tar.gz" in message and "POST /api/v1/datasets" in message
    assert nothing_stored(context)

    unknown = post_model(client, seed_file(), id="seed-x", dataset="ds-000000000000")
    assert (
        unknown.status_code == 400 and "'ds-000000000000' is not available" in unknown.json["error"]
    )
    assert nothing_stored(context)


def test_recalibration_dataset_must_fit_the_model(
    client: FlaskClient, context: ControllerContext, digits32: ArrayDataset
) -> None:
    wrong_shape = post_model(client, seed_file(), id="m", dataset="digits")
    assert wrong_shape.status_code == 400
    assert "1x8x8 images; the model takes 3x32x32" in wrong_shape.json["error"]
    dataset_id = upload_digits32(client, digits32)
    past_the_end = post_model(
        client, seed_file(), id="m", dataset=dataset_id, example_idxs="0,100000"
    )
    assert past_the_end.status_code == 400 and past_the_end.json["field"] == "example_idxs"
    assert nothing_stored(context)


def test_a_cnn_swarm_file_without_site_statistics_needs_its_dataset_named(
    client: FlaskClient, context: ControllerContext
) -> None:
    """A cnn-swarm file of the seed's network written before per-site statistics existed has
    no default dataset to recalibrate on: the 400 asks for one."""
    old_format = artifact_to_bytes(artifact_from_bytes(seed_file()))
    response = post_model(client, old_format, id="old")
    assert response.status_code == 400 and response.json["field"] == "dataset"
    assert "name that dataset in 'dataset'" in response.json["error"]
    assert nothing_stored(context)


# -- cnn-swarm files, downloads and the TorchScript export --------------------------------------


@pytest.fixture
def imported_seed(
    client: FlaskClient, digits32: ArrayDataset, seed_trained: tuple[bytes, float]
) -> str:
    dataset_id = upload_digits32(client, digits32)
    response = post_model(
        client, seed_trained[0], id="seed", classes=",".join(DIGIT_CLASSES), dataset=dataset_id
    )
    assert response.status_code == 201, response.json
    return "seed"


def test_a_downloaded_file_imports_again_without_recalibration(
    client: FlaskClient, digits32: ArrayDataset, imported_seed: str
) -> None:
    downloaded = client.get(f"/api/v1/models/{imported_seed}/file")
    assert downloaded.status_code == 200
    assert downloaded.headers["Content-Disposition"] == "attachment; filename=seed.pth"
    again = post_model(client, downloaded.data, id="copy")
    assert again.status_code == 201, again.json
    assert again.json["recalibration"] is None and again.json["classes"] == DIGIT_CLASSES
    inputs = seed_normalize(digits32.x_test[:20])
    np.testing.assert_allclose(
        served_probabilities(client, "copy", inputs),
        served_probabilities(client, imported_seed, inputs),
        atol=1e-6,
    )


def test_a_trained_cnn_swarm_file_imports_as_it_is(
    client: FlaskClient, context: ControllerContext, digits_model_bytes: bytes
) -> None:
    response = post_model(client, digits_model_bytes, id="digits-copy")
    assert response.status_code == 201, response.json
    original = artifact_from_bytes(digits_model_bytes)
    assert response.json["model_type"] == "SmallConvNet" and response.json["recalibration"] is None
    assert response.json["metrics"] == original.metrics and response.json["dataset"] == "digits"
    stored = artifact_from_bytes(client.get("/api/v1/models/digits-copy/file").data)
    assert stored.state_dict.keys() == original.state_dict.keys()
    for key, tensor in original.state_dict.items():
        assert torch.equal(stored.state_dict[key], tensor), key
    renamed = post_model(client, digits_model_bytes, id="other", classes="a,b,c,d,e,f,g,h,i,j")
    assert renamed.status_code == 400 and renamed.json["field"] == "classes"


@pytest.mark.parametrize("which", ["seed", "digits"])
def test_torchscript_export_serves_the_same_probabilities(
    client: FlaskClient,
    context: ControllerContext,
    digits32: ArrayDataset,
    digits_model_bytes: bytes,
    seed_trained: tuple[bytes, float],
    which: str,
) -> None:
    if which == "seed":
        dataset_id = upload_digits32(client, digits32)
        fields = {"classes": ",".join(DIGIT_CLASSES), "dataset": dataset_id}
        created = post_model(client, seed_trained[0], id="m", **fields)
        inputs = seed_normalize(digits32.x_test[:64])
    else:
        created = post_model(client, digits_model_bytes, id="m")
        inputs = torch.from_numpy(np.random.default_rng(0).normal(size=(64, 1, 8, 8))).float()
    assert created.status_code == 201, created.json
    response = client.get("/api/v1/models/m/torchscript")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == "attachment; filename=m.torchscript.pt"
    extra: dict[str, Any] = {"cnn-swarm.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit, as a deployer uses it
        exported = torch.jit.load(io.BytesIO(response.data), _extra_files=extra)
    with torch.no_grad():
        probabilities = torch.softmax(exported(inputs), dim=1).numpy()
    np.testing.assert_allclose(probabilities, served_probabilities(client, "m", inputs), atol=1e-5)
    metadata = json.loads(extra["cnn-swarm.json"])
    assert metadata["classes"] == client.get("/api/v1/models/m").json["classes"]
    assert metadata["preprocessing"]["height"] == inputs.shape[2]
    assert not list(exported.parameters())  # frozen: weights are constants, not parameters


def test_downloads_of_unknown_models_are_404(client: FlaskClient) -> None:
    assert client.get("/api/v1/models/nope/file").status_code == 404
    assert client.get("/api/v1/models/nope/torchscript").status_code == 404


# -- bad files ------------------------------------------------------------------------------------


def _seed_state(**changes: torch.Tensor | None) -> dict[str, torch.Tensor]:
    state = dict(SeedNNConvResNetRGB().state_dict())
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


BAD_FILES: dict[str, tuple[Any, str]] = {
    "random bytes": (
        lambda: np.random.default_rng(1).bytes(4096),
        "not a readable weights-only torch file",
    ),
    "a torch file of plain data": (
        lambda: _torch_bytes({"weights": [1, 2, 3]}),
        "not a cnn-swarm model file nor a seed state dict",
    ),
    "missing key": (
        lambda: seed_file(_seed_state(fc_gap__bias=None)),
        "missing key(s) 'fc_gap.bias'",
    ),
    "unexpected key": (
        lambda: seed_file({**_seed_state(), "head.weight": torch.zeros(3)}),
        "unexpected key(s) 'head.weight'",
    ),
    "shape mismatch": (
        lambda: seed_file(_seed_state(conv2b__weight=torch.zeros(32, 32, 5, 5))),
        "shape mismatch at key 'conv2b.weight': the file has [32, 32, 5, 5], "
        "NNConvResNetRGB needs [32, 32, 3, 3]",
    ),
    "NaN weights": (
        lambda: seed_file(_seed_state(conv1a__bias=torch.full((16,), float("nan")))),
        "key 'conv1a.bias' holds NaN",
    ),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_files_are_400_naming_the_problem_and_leave_nothing(
    client: FlaskClient, context: ControllerContext, name: str
) -> None:
    make, expected = BAD_FILES[name]
    response = post_model(client, make(), id="bad", classes=",".join(DIGIT_CLASSES))
    assert response.status_code == 400, response.json
    assert expected in response.json["error"]
    assert nothing_stored(context)


@pytest.mark.parametrize("pickler", ["torch.save", "pickle.dumps"])
def test_a_pickle_with_code_never_runs(
    client: FlaskClient, context: ControllerContext, tmp_path: Path, pickler: str
) -> None:
    marker = tmp_path / "marker"
    payload = {"conv1a.weight": MarkerPayload(marker)}
    data = _torch_bytes(payload) if pickler == "torch.save" else pickle.dumps(payload)
    response = post_model(client, data, id="hostile")
    assert response.status_code == 400
    assert "not a readable weights-only torch file" in response.json["error"]
    assert "weights_only=False" not in response.json["error"]  # never advise the unsafe load
    assert not marker.exists()
    assert nothing_stored(context)


def test_wrong_class_count_and_malformed_fields(
    client: FlaskClient, context: ControllerContext
) -> None:
    three = post_model(client, seed_file(), id="m", classes="a,b,c", dataset="cifar10")
    assert three.status_code == 400 and three.json["field"] == "classes"
    assert "wrong class count" in three.json["error"] and "10 outputs" in three.json["error"]
    twelve = seed_file(
        _seed_state(fc_gap__weight=torch.zeros(12, 64), fc_gap__bias=torch.zeros(12))
    )
    unnamed = post_model(client, twelve, id="m")
    assert unnamed.status_code == 400 and "classifies 12 classes" in unnamed.json["error"]
    for fields, field in [
        ({"id": "../etc"}, "id"),
        ({"id": "m", "classes": "a,a,b,c,d,e,f,g,h,i"}, "classes"),
        ({"id": "m", "example_idxs": "5"}, "example_idxs"),
        ({"id": "m", "example_idxs": "9,3"}, "example_idxs"),
        ({}, "id"),
    ]:
        response = post_model(client, seed_file(), **fields)
        assert response.status_code == 400 and response.json["field"] == field, fields
    missing_file = client.post(
        "/api/v1/models", data={"id": "m"}, content_type="multipart/form-data"
    )
    assert missing_file.status_code == 400 and missing_file.json["field"] == "file"
    empty = post_model(client, b"", id="m")
    assert empty.status_code == 400 and "empty" in empty.json["error"]
    assert nothing_stored(context)


def test_a_taken_id_is_409_and_the_existing_model_is_untouched(
    client: FlaskClient, context: ControllerContext, digits_model_bytes: bytes
) -> None:
    assert post_model(client, digits_model_bytes, id="taken").status_code == 201
    files = {p: p.read_bytes() for p in context.stores.artifacts.root.rglob("*.pth")}
    again = post_model(client, digits_model_bytes, id="taken")
    assert again.status_code == 409 and again.json["field"] == "model_id"
    assert {p: p.read_bytes() for p in context.stores.artifacts.root.rglob("*.pth")} == files

    queued = client.post("/api/v1/jobs", json={"dataset": "digits", "model_id": "queued"})
    assert queued.status_code == 202, queued.json
    assert post_model(client, digits_model_bytes, id="queued").status_code == 409
    assert client.put("/api/v1/aliases/prod", json={"model_id": "taken"}).status_code == 200
    assert post_model(client, digits_model_bytes, id="prod").status_code == 409
    # And an imported id is taken for jobs too.
    job = client.post("/api/v1/jobs", json={"dataset": "digits", "model_id": "taken"})
    assert job.status_code == 409
    # Deleting the import frees the id.
    assert client.delete("/api/v1/models/taken").status_code == 200
    assert post_model(client, digits_model_bytes, id="taken").status_code == 201


# -- limits and the token ----------------------------------------------------------------------


@pytest.fixture
def guarded_app(tmp_path: Path) -> Iterator[Flask]:
    settings = Settings(
        home_dir=tmp_path / "guarded", api_token="s3cret", max_upload_bytes=1024 * 1024
    )
    application = create_app(settings)
    yield application
    application.extensions["cnnswarm"].stores.close()


def test_the_token_and_the_size_limit_hold(guarded_app: Flask, digits_model_bytes: bytes) -> None:
    client = guarded_app.test_client()
    context: ControllerContext = guarded_app.extensions["cnnswarm"]
    assert len(digits_model_bytes) < 1024 * 1024 < len(seed_file())
    assert post_model(client, digits_model_bytes, id="m").status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    too_big = client.post(
        "/api/v1/models",
        data={"file": (io.BytesIO(seed_file()), "big.pth"), "id": "big"},
        content_type="multipart/form-data",
        headers=auth,
    )
    assert too_big.status_code == 413
    assert nothing_stored(context)
    ok = client.post(
        "/api/v1/models",
        data={"file": (io.BytesIO(digits_model_bytes), "m.pth"), "id": "m"},
        content_type="multipart/form-data",
        headers=auth,
    )
    assert ok.status_code == 201, ok.json


def test_the_routes_are_in_the_openapi_document(client: FlaskClient) -> None:
    paths = client.get("/api/v1/openapi.json").json["paths"]
    upload = paths["/api/v1/models"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"201", "400", "409", "413"} <= set(upload["responses"])
    assert "get" in paths["/api/v1/models/{model_id}/file"]
    assert "get" in paths["/api/v1/models/{model_id}/torchscript"]
