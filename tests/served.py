"""What a running controller serves, measured over real HTTP: the accuracy of a model on a
dataset's whole test split, sent in each input form a client uses.

- ``files``: multipart PNG uploads to ``/api/v1/models/<id>/predict``;
- ``instances``: base64 PNG ``instances`` to the same route;
- ``seed``: the seed's flow, ``/get_examples`` of the test split then ``/predict``.

Shared by the e2e tier (served accuracy equals the job's recorded ``test_accuracy``) and
``bench/served_accuracy.py`` (the README's table).
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np
import requests

from cnnswarm.ml.datasets.base import ArrayDataset
from real_images import png_bytes

FORMS = ("files", "instances", "seed")
V1_CHUNK = 256  # the v1 predict route's per-request limit
SEED_CHUNK = 1000  # the seed routes' per-request limit


def _v1(url: str, model_id: str, **body: object) -> list[int]:
    answer = requests.post(f"{url}/api/v1/models/{model_id}/predict", timeout=120, **body)  # type: ignore[arg-type]
    assert answer.status_code == 200, answer.text
    return [int(p["class_idx"]) for p in answer.json()["predictions"]]


def _predict_files(url: str, model_id: str, images: np.ndarray) -> list[int]:
    files = [
        ("files", (f"{i}.png", png_bytes(image), "image/png")) for i, image in enumerate(images)
    ]
    return _v1(url, model_id, files=files)


def _predict_instances(url: str, model_id: str, images: np.ndarray) -> list[int]:
    instances = [base64.b64encode(png_bytes(image)).decode("ascii") for image in images]
    return _v1(url, model_id, json={"instances": instances})


def _predict_seed(url: str, model_id: str, start: int, stop: int) -> tuple[list[int], list[int]]:
    examples = requests.post(
        f"{url}/get_examples",
        json={"example_idxs": [start, stop], "dataset_type": "test"},
        timeout=120,
    )
    assert examples.status_code == 200, examples.text
    body = examples.json()
    predicted = requests.post(
        f"{url}/predict", json={"model_id": model_id, "examples": body["examples"]}, timeout=120
    )
    assert predicted.status_code == 200, predicted.text
    return [int(i) for i in predicted.json()["class_idxs"]], [int(i) for i in body["class_idxs"]]


def served_accuracy(url: str, model_id: str, dataset: ArrayDataset, form: str) -> float:
    """Accuracy of ``model_id`` as served at ``url`` on ``dataset``'s test split, every image
    sent in ``form`` (one of ``FORMS``). For ``seed``, the controller's own test split is used
    (``/get_examples``), and its labels must be ``dataset``'s."""
    x, y = dataset.x_test, dataset.y_test
    predicted: list[int] = []
    if form == "seed":
        for start in range(0, len(x), SEED_CHUNK):
            stop = min(start + SEED_CHUNK, len(x))
            chunk, labels = _predict_seed(url, model_id, start, stop)
            assert labels == y[start:stop].tolist(), "the controller's test split differs"
            predicted += chunk
    else:
        send: Callable[[str, str, np.ndarray], list[int]] = {
            "files": _predict_files,
            "instances": _predict_instances,
        }[form]
        for start in range(0, len(x), V1_CHUNK):
            predicted += send(url, model_id, x[start : start + V1_CHUNK])
    assert len(predicted) == len(y)
    return float(np.mean(np.asarray(predicted) == y))
