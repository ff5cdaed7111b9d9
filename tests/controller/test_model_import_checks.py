"""What an import records is checked: the model type and dataset a file states, the form's
fields (one rule each, shared with the rest of the API), and the one publish helper's cleanup."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from cnnswarm.controller.context import ControllerContext
from cnnswarm.controller.model_import import ImportRequest
from cnnswarm.controller.model_publish import publish_model
from cnnswarm.errors import InvalidInput
from cnnswarm.ml.artifact import artifact_from_bytes, artifact_to_bytes
from cnnswarm.ml.datasets.base import check_example_idxs
from cnnswarm.ml.datasets.uploads import validate_class_names
from cnnswarm.store.artifacts import SAFE_ID, ArtifactStore


def post_model(client: FlaskClient, data: bytes, **fields: str) -> Any:
    return client.post(
        "/api/v1/models",
        data={"file": (io.BytesIO(data), "model.pth"), **fields},
        content_type="multipart/form-data",
    )


def model_files(context: ControllerContext) -> list[Path]:
    return [p for p in (context.stores.artifacts.root / "torch_models").rglob("*") if p.is_file()]


def restated(data: bytes, **changes: Any) -> bytes:
    """The model file ``data`` with its metadata changed."""
    return artifact_to_bytes(replace(artifact_from_bytes(data), **changes))


# -- what the file states about itself -----------------------------------------------------------


@pytest.mark.parametrize("stated", ["NNConvResNetRGB", "T" * 100])
def test_a_file_stating_another_model_type_than_its_config_is_400(
    client: FlaskClient, context: ControllerContext, digits_model_bytes: bytes, stated: str
) -> None:
    response = post_model(client, restated(digits_model_bytes, model_type=stated), id="liar")
    assert response.status_code == 400, response.json
    assert response.json["field"] == "file"
    assert "SmallConvNet" in response.json["error"] and len(response.json["error"]) < 300
    assert not context.stores.catalog.list_models() and not model_files(context)


@pytest.mark.parametrize("label", ["d" * 129, "my photos", "../etc"])
def test_a_dataset_label_that_is_no_dataset_id_is_400_until_the_dataset_is_named(
    client: FlaskClient, context: ControllerContext, digits_model_bytes: bytes, label: str
) -> None:
    data = restated(digits_model_bytes, dataset={"name": label})
    refused = post_model(client, data, id="m")
    assert refused.status_code == 400, refused.json
    assert refused.json["field"] == "dataset" and "'dataset'" in refused.json["error"]
    assert not context.stores.catalog.list_models() and not model_files(context)

    named = post_model(client, data, id="m", dataset="digits")
    assert named.status_code == 201, named.json
    assert named.json["dataset"] == "digits" and named.json["model_type"] == "SmallConvNet"


def test_a_dataset_id_stated_by_the_file_is_recorded(
    client: FlaskClient, digits_model_bytes: bytes
) -> None:
    data = restated(digits_model_bytes, dataset={"id": "ds-0123abcd", "name": "my photos"})
    created = post_model(client, data, id="m")
    assert created.status_code == 201, created.json
    assert created.json["dataset"] == "ds-0123abcd"


# -- the form: one declaration, one rule per field ----------------------------------------------


@pytest.mark.parametrize(
    "classes", ["a/b,c", "<script>,x", ",".join(["c"] * 2), "only-one", "x" * 150 + ",y"]
)
def test_class_names_follow_the_dataset_uploads_rule(classes: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        ImportRequest.from_form({"id": "m", "classes": classes})
    assert refused.value.field == "classes"
    with pytest.raises(InvalidInput) as by_the_rule:
        validate_class_names(classes.split(","))
    assert refused.value.message == by_the_rule.value.message


def test_class_names_the_rule_accepts_are_taken_in_either_form() -> None:
    for form in ("cat, dog,T shirt", '["cat", "dog", "T shirt"]'):
        request = ImportRequest.from_form({"id": "m", "classes": form})
        assert request.classes == ["cat", "dog", "T shirt"]


@pytest.mark.parametrize("raw", ["5", "9,3", "-1,4", "x,3", "[0, true]", "[0, 2.5]", "1,2,3"])
def test_example_idxs_follow_the_one_example_idxs_rule(raw: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        ImportRequest.from_form({"id": "m", "example_idxs": raw})
    assert refused.value.field == "example_idxs"
    assert refused.value.message.startswith(
        ("example_idxs must be null or [start, end]", "example_idxs must satisfy 0 <= start")
    )
    assert ImportRequest.from_form({"id": "m", "example_idxs": " 2, 7 "}).example_idxs == [2, 7]
    with pytest.raises(InvalidInput, match=r"<= 5 \(training set size\)"):
        check_example_idxs([2, 7], train_size=5)


def test_unknown_form_fields_are_refused_by_name(
    client: FlaskClient, digits_model_bytes: bytes
) -> None:
    response = post_model(client, digits_model_bytes, id="m", clases="a,b")
    assert response.status_code == 400 and response.json["field"] == "clases"
    assert "known: classes, dataset, example_idxs, id" in response.json["error"]


def test_the_documented_form_is_the_declared_one(client: FlaskClient) -> None:
    post = client.get("/api/v1/openapi.json").json["paths"]["/api/v1/models"]["post"]
    ref = post["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    form = client.get("/api/v1/openapi.json").json["components"]["schemas"][ref.split("/")[-1]]
    assert set(form["required"]) == {"file", "id"} and form["additionalProperties"] is False
    assert set(form["properties"]) == {"file", "id", "classes", "dataset", "example_idxs"}
    assert form["properties"]["id"]["pattern"] == SAFE_ID.pattern
    assert all(form["properties"][name]["type"] == "string" for name in form["properties"])


# -- the one publish helper ------------------------------------------------------------------


def _publish(store: ArtifactStore, data: bytes, insert: Any) -> Any:
    return publish_model(
        store,
        store.imported_model_path("m"),
        data,
        artifact_from_bytes(data),
        model_id="m",
        job_id=None,
        model_type="SmallConvNet",
        dataset="digits",
        train_opts={},
        example_idxs=[0, 10],
        insert=insert,
    )


def test_publish_writes_the_file_before_the_row_and_removes_it_when_the_insert_fails(
    tmp_path: Path, digits_model_bytes: bytes
) -> None:
    store = ArtifactStore(tmp_path / "home")
    rows: list[dict[str, Any]] = []

    def insert(row: dict[str, Any]) -> str:
        path = store.model_file(row["filename"])
        assert path.read_bytes() == digits_model_bytes  # complete before any row names it
        rows.append(row)
        return "inserted"

    assert _publish(store, digits_model_bytes, insert) == "inserted"
    (row,) = rows
    assert row["classes"] == [str(d) for d in range(10)] and row["example_idxs"] == [0, 10]
    assert row["model_type"] == "SmallConvNet" and row["job_id"] is None
    kept = store.model_file(row["filename"])

    def refuse(row: dict[str, Any]) -> str:
        raise InvalidInput("taken meanwhile")

    with pytest.raises(InvalidInput, match="taken meanwhile"):
        _publish(store, digits_model_bytes, refuse)
    assert [p for p in (store.root / "torch_models").rglob("*") if p.is_file()] == [kept]

    kept.unlink()
    with pytest.raises(InvalidInput):
        _publish(store, digits_model_bytes, refuse)
    assert not (store.root / "torch_models" / "m").exists()  # an emptied folder goes too
