"""The main flows against a real controller and two real trainers (gunicorn, ephemeral ports,
no shared filesystem): the seed client's flow on a CIFAR-format archive, the v1 flow on an
uploaded image-folder zip, and cancelling a running job."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

import fixtures_cifar
from cluster import Cluster, living_group_members
from cnnswarm.client import Client
from support import image_folder_zip, png_bytes, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(240),
    pytest.mark.xdist_group("flows"),  # one worker builds the module's cluster
]

CIFAR_TAGS = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One controller with a small CIFAR-10 archive in its HOME_DIR, and two trainers."""
    with Cluster(tmp_path_factory.mktemp("flows")) as started:
        controller = started.start_controller()
        fixtures_cifar.write_cifar10_archive(
            controller.home / "torch_data" / "cifar-10-python.tar.gz", n_per_batch=50, n_test=20
        )
        started.start_trainers(2)
        client = started.client()
        wait_until(lambda: len(client.list_trainers()) == 2, 20, what="two trainers registered")
        yield started


def test_seed_client_flow(cluster: Cluster) -> None:
    url = cluster.controller.url
    seed_body = {
        "model_type": "NNConvResNetRGB",
        "model_id": "m1",
        "example_idxs": [0, 200],
        "train_opts": {"num_epochs": 1},
    }
    answer = requests.post(f"{url}/train", json=seed_body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == {"initiated": True}
    job_id = answer.json()["job_id"]

    # As a seed client does: poll /status until the job is complete.
    seen_on: set[str] = set()

    def job_complete() -> bool:
        status = requests.get(f"{url}/status", timeout=10).json()
        for trainer in status["train_jobs"]:
            assert trainer["url"].startswith("http://127.0.0.1:") and trainer["url"].endswith("/")
            entry = trainer["jobs"].get(job_id)
            if entry is not None:
                assert set(entry) >= {"duration", "progress", "complete"}
                assert 0 <= entry["progress"] <= 100
                seen_on.add(trainer["url"])
                if entry["complete"]:
                    return True
        return False

    wait_until(job_complete, 90, interval=0.2, what="the seed job to complete in /status")
    assert len(seen_on) == 1
    assert requests.get(f"{url}/api/v1/jobs/{job_id}", timeout=10).json()["state"] == "succeeded"

    model_info = requests.get(f"{url}/get_model_info", timeout=10).json()
    assert model_info["m1"]["model_type"] == "NNConvResNetRGB"
    assert model_info["m1"]["example_idxs"] == [0, 200]
    assert model_info["m1"]["filename"] == "m1.pth"

    info = requests.post(
        f"{url}/get_dataset_info", json={"dataset_name": "CIFAR10"}, timeout=10
    ).json()
    assert info == {"num_train": 250, "num_test": 20, "ex_shape": [3, 32, 32], "num_classes": 10}

    examples = requests.post(
        f"{url}/get_examples", json={"example_idxs": [0, 4], "dataset_type": "test"}, timeout=10
    ).json()
    array = np.asarray(examples["examples"])
    assert array.shape == (4, 3, 32, 32)
    assert array.min() >= -1.0 and array.max() <= 1.0
    assert examples["class_idxs"] == [0, 1, 2, 3]  # the fixture labels image i as i % 10
    assert examples["class_tags"] == CIFAR_TAGS[:4]

    predicted = requests.post(
        f"{url}/predict", json={"model_id": "m1", "examples": examples["examples"]}, timeout=30
    )
    assert predicted.status_code == 200, predicted.text
    body = predicted.json()
    assert len(body["class_idxs"]) == len(body["class_tags"]) == 4
    assert all(0 <= i < 10 for i in body["class_idxs"])
    assert body["class_tags"] == [CIFAR_TAGS[i] for i in body["class_idxs"]]


def _pattern_image(kind: str, rng: np.random.Generator) -> bytes:
    """A noisy 16x16 RGB image of one of three easily told apart kinds."""
    image = rng.integers(0, 60, size=(16, 16, 3)).astype(np.int16)
    if kind == "red":
        image[..., 0] += 180
    elif kind == "green":
        image[..., 1] += 180
    else:  # white horizontal stripes on the noise
        image[::2] += 180
    return png_bytes(np.clip(image, 0, 255).astype(np.uint8))


KINDS = ["green", "red", "stripes"]


def _images(per_class: int, seed: int) -> dict[str, list[bytes]]:
    rng = np.random.default_rng(seed)
    return {kind: [_pattern_image(kind, rng) for _ in range(per_class)] for kind in KINDS}


def test_v1_upload_train_and_predict_images(cluster: Cluster, tmp_path: Path) -> None:
    client = cluster.client()
    archive = tmp_path / "patterns.zip"
    archive.write_bytes(image_folder_zip(_images(40, seed=1)))
    dataset = client.upload_dataset(archive, name="patterns")
    assert sorted(dataset["classes"]) == KINDS
    assert dataset["num_train"] + dataset["num_test"] == 120
    assert dataset["shape"] == [3, 16, 16]

    job = client.submit_job(
        dataset["id"], model_type="SmallConvNet", train_opts={"num_epochs": 4, "seed": 0}
    )
    events = list(client.iter_job_events(job["id"], read_timeout=90))
    assert events[-1].event == "end"
    final = events[-1].job
    assert final["state"] == "succeeded", final["error"]
    assert [m["epoch"] for m in final["metrics"]] == [1, 2, 3, 4]
    assert any(e.event == "progress" and e.job["state"] == "running" for e in events)

    fresh = _images(10, seed=99)  # images the model never saw
    images = [image for kind in KINDS for image in fresh[kind]]
    truth = [kind for kind in KINDS for _ in fresh[kind]]
    as_files = client.predict_images(final["model_id"], images, top_k=2)
    as_base64 = client.predict_instances(final["model_id"], images)
    for predictions in (as_files, as_base64):
        assert len(predictions) == len(images)
        accuracy = np.mean([p["class_tag"] == t for p, t in zip(predictions, truth, strict=True)])
        assert accuracy >= 0.9, accuracy  # chance is 1/3
    assert [p["class_idx"] for p in as_files] == [p["class_idx"] for p in as_base64]
    assert len(as_files[0]["top_k"]) == 2
    # The same through the raw HTTP API, base64 JSON as a non-Python client would send it.
    raw = requests.post(
        f"{cluster.controller.url}/api/v1/models/{final['model_id']}/predict",
        json={"instances": [base64.b64encode(images[0]).decode()]},
        timeout=30,
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["predictions"][0]["class_tag"] == truth[0]


def _trainer_status(cluster: Cluster, trainer_url: str) -> dict[str, Any]:
    return dict(cluster.trainer_by_url(trainer_url).get("/status"))


def test_cancel_running_job_frees_its_slot(cluster: Cluster) -> None:
    client = cluster.client()
    long_job = client.submit_job(
        "digits",
        model_type="SmallConvNet",
        train_opts={"num_epochs": 200, "seed": 0},
    )
    job_id = long_job["id"]
    running = wait_until(
        lambda: (j := client.get_job(job_id))["state"] == "running" and j["progress"] > 0 and j,
        60,
        interval=0.1,
        what="the long job to make progress",
    )
    trainer = cluster.trainer_running(job_id)
    assert _trainer_status(cluster, trainer.url)["free_slots"] == 0

    started = time.monotonic()
    client.cancel_job(job_id)
    wait_until(lambda: client.get_job(job_id)["state"] == "cancelled", 5, what="cancelled")

    def stopped_on_trainer() -> bool:
        status = _trainer_status(cluster, trainer.url)
        entry = status["jobs"][job_id]
        return bool(entry["complete"] and entry["state"] == "cancelled" and status["free_slots"])

    wait_until(stopped_on_trainer, 15, interval=0.1, what="the trainer to stop the job")
    print(f"\ncancel -> stopped on the trainer: {time.monotonic() - started:.2f} s")
    after = client.get_job(job_id)
    assert after["state"] == "cancelled"
    assert after["progress"] < 1.0 and len(after["metrics"]) < 200
    assert running["trainer"] == after["trainer"]

    # Both slots are free again: two new jobs run at the same time, one on each trainer.
    jobs = [
        client.submit_job(
            "digits",
            model_type="SmallConvNet",
            example_idxs=[0, 600],
            train_opts={"num_epochs": 3, "seed": 0},
        )
        for _ in range(2)
    ]
    finals = [client.wait_for_job(j["id"], timeout=90) for j in jobs]
    assert [f["state"] for f in finals] == ["succeeded", "succeeded"]
    assert {f["trainer"] for f in finals} == {t.name for t in cluster.trainers}


def test_no_process_outlives_a_cluster(tmp_path: Path) -> None:
    """The harness itself: after the block, no process of any group it started is left."""
    with Cluster(tmp_path / "c") as small:
        controller = small.start_controller()
        assert Client(controller.url).ready()
        groups = [controller.pid]
    assert [living_group_members(group) for group in groups] == [[]]
