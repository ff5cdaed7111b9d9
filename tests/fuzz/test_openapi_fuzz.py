"""Fuzz every /api/v1 operation from the controller's own OpenAPI document (schemathesis).

The app runs in-process (WSGI) with a published model, an alias, an uploaded dataset and a
finished job, and path parameters are drawn half of the time from those real ids, so the
GET, predict and delete paths are exercised past their 404s. Every response must not be a
5xx and must match the schema the document declares for its status.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
import torch
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from cnnswarm.config import Settings
from cnnswarm.controller.app import create_app
from cnnswarm.ml.artifact import artifact_to_bytes
from cnnswarm.ml.datasets.registry import load_builtin
from cnnswarm.ml.train import train
from cnnswarm.ml.train_options import TrainOptions
from support import image_folder_zip, png_bytes

MODEL_ID = "digits-model"
MAX_EXAMPLES = 25
NEGATIVE_EXAMPLES = 15


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A SmallConvNet trained one epoch on a slice of digits (only its shape matters here)."""
    torch.set_num_threads(1)
    dataset = load_builtin("digits", tmp_path_factory.mktemp("digits")).subset([0, 300])
    opts = TrainOptions.from_dict({"num_epochs": 1, "seed": 0}, model_type="SmallConvNet")
    data = artifact_to_bytes(train("SmallConvNet", dataset, opts).artifact)
    torch.set_num_threads(1)
    return data


def populate(app: Flask, model_bytes: bytes) -> dict[str, list[str]]:
    """Publish a model (+ alias), upload a dataset; the real ids per path parameter name."""
    client = app.test_client()
    context = app.extensions["cnnswarm"]
    job_id = client.post("/api/v1/jobs", json={"dataset": "digits", "model_id": MODEL_ID}).json[
        "id"
    ]
    context.stores.jobs.claim(context.stores.jobs.get(job_id), "t1", lease_s=60)
    published = client.post(f"/internal/v1/jobs/{job_id}/result?attempt=1", data=model_bytes)
    assert published.status_code == 200, published.json
    assert client.put("/api/v1/aliases/prod", json={"model_id": MODEL_ID}).status_code == 200
    rng = np.random.default_rng(0)
    archive = image_folder_zip(
        {
            "a": [png_bytes(rng.integers(0, 255, (8, 8), dtype=np.uint8)) for _ in range(4)],
            "b": [png_bytes(rng.integers(0, 255, (8, 8), dtype=np.uint8)) for _ in range(4)],
        }
    )
    uploaded = client.post(
        "/api/v1/datasets",
        data={"file": (io.BytesIO(archive), "ab.zip"), "name": "ab"},
        content_type="multipart/form-data",
    )
    assert uploaded.status_code == 201, uploaded.json
    # Only a finished job: the events stream of a live one would never end.
    return {
        "job_id": [job_id],
        "model_id": [MODEL_ID, "prod"],
        "alias": ["prod"],
        "dataset_id": ["digits", uploaded.json["id"]],
    }


@pytest.fixture
def app(tmp_path: Path, model_bytes: bytes) -> Iterator[Flask]:
    application = create_app(Settings(home_dir=tmp_path / "home", lease_timeout_s=60.0))
    application.config["KNOWN_IDS"] = populate(application, model_bytes)
    yield application
    application.extensions["cnnswarm"].stores.close()


def known_ids_hook(schema: Any, known: dict[str, list[str]]) -> None:
    """Half of the time, swap a generated path parameter for a real id."""

    @schema.hook
    def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
        if not path_parameters:
            return st.just(path_parameters)
        return st.fixed_dictionaries(
            {
                name: st.sampled_from([value, *known.get(name, [])])
                for name, value in path_parameters.items()
            }
        )


def fuzz_operation(operation: Any, mode: GenerationMode, max_examples: int) -> int:
    """Run ``max_examples`` generated cases of ``operation``; returns how many ran."""
    ran = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        nonlocal ran
        ran += 1
        case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])

    run()
    return ran


def test_api_never_5xx_and_answers_match_the_document(app: Flask) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    known_ids_hook(schema, app.config["KNOWN_IDS"])
    failures: list[str] = []
    counts: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        for mode, examples in (
            (GenerationMode.POSITIVE, MAX_EXAMPLES),
            (GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES),
        ):
            try:
                counts[f"{label} {mode.value}"] = fuzz_operation(operation, mode, examples)
            except Unsatisfiable:
                # Nothing to break: plain string path parameters and no body or query.
                assert mode is GenerationMode.NEGATIVE, label
            except Exception as exc:  # collect every operation's failure, then report them all
                failures.append(f"{label} ({mode.value}): {exc}")
    print("\n".join(f"{k}: {v} examples" for k, v in counts.items()))
    assert not failures, "\n\n".join(failures)
    positive = [k for k in counts if k.endswith("positive")]
    assert len(positive) >= 15 and len(counts) > len(positive), sorted(counts)
