"""100 concurrent submissions with one ``Idempotency-Key`` against real controllers over HTTP:
exactly one job is created (one 202, every other answer a 200 naming the same job); the same key
with another body answers 422. Once on one controller (SQLite), once split between two
controllers on one PostgreSQL database."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from cluster import Cluster, ServerProcess
from cnnswarm.client import Client

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(180)]

CLIENTS = 100
BODY = {
    "dataset": "digits",
    "model_type": "SmallConvNet",
    "example_idxs": [0, 100],
    "train_opts": {"num_epochs": 1},
}


def _storm(controllers: list[ServerProcess], key: str) -> list[tuple[int, dict[str, Any]]]:
    """``CLIENTS`` POSTs at once (a barrier releases them together), round-robin over
    ``controllers``; each answer's status and JSON."""
    import threading

    barrier = threading.Barrier(CLIENTS)

    def submit(i: int) -> tuple[int, dict[str, Any]]:
        url = controllers[i % len(controllers)].url
        barrier.wait(timeout=60)
        answer = requests.post(
            f"{url}/api/v1/jobs", json=BODY, headers={"Idempotency-Key": key}, timeout=60
        )
        return answer.status_code, answer.json()

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(submit, range(CLIENTS)))


def _check(controllers: list[ServerProcess]) -> None:
    key = f"chaos-{uuid.uuid4().hex}"
    answers = _storm(controllers, key)
    statuses = sorted(status for status, _ in answers)
    print(
        f"\n{CLIENTS} submissions, one key, {len(controllers)} controller(s): "
        f"{statuses.count(202)} x 202, {statuses.count(200)} x 200, "
        f"others {[s for s in statuses if s not in (200, 202)]}"
    )
    assert statuses.count(202) == 1, statuses
    assert statuses.count(200) == CLIENTS - 1, statuses
    assert len({body["id"] for _, body in answers}) == 1
    for controller in controllers:
        jobs = Client(controller.url).list_jobs()
        assert len(jobs) == 1, jobs
    changed = {**BODY, "train_opts": {"num_epochs": 2}}
    for controller in controllers:
        other = requests.post(
            f"{controller.url}/api/v1/jobs",
            json=changed,
            headers={"Idempotency-Key": key},
            timeout=30,
        )
        assert other.status_code == 422, other.text
        assert other.json()["field"] == "Idempotency-Key"
    assert len(Client(controllers[0].url).list_jobs()) == 1


def test_one_key_one_job(tmp_path: Any) -> None:
    with Cluster(tmp_path / "cluster") as cluster:
        _check([cluster.start_controller()])


@pytest.mark.postgres
def test_one_key_one_job_on_two_controllers(tmp_path: Any, postgres_url: str) -> None:
    with Cluster(tmp_path / "cluster", database_url=postgres_url) as cluster:
        home = cluster.root / "shared-home"
        first = cluster.start_controller("controller-a", home=home)
        second = cluster.start_controller("controller-b", home=home)
        _check([first, second])
