"""Two controllers on one real PostgreSQL server (and one shared artifact directory, as replicas
share a volume), two trainers with their own directories: any controller answers any request,
exactly one schedules, and the other takes over when the leader is killed."""

from __future__ import annotations

import time
from typing import Any

import pytest

from cluster import Cluster, ServerProcess
from cnnswarm.client import Client
from support import digits_png, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(240)]

JOB: dict[str, Any] = {
    "dataset": "digits",
    "model_type": "SmallConvNet",
    "example_idxs": [0, 600],
    "train_opts": {"num_epochs": 3, "seed": 0},
}


def _is_leader(controller: ServerProcess) -> bool:
    return bool(controller.get("/status")["leader"])


def test_two_controllers_on_postgres(cluster: Cluster, postgres_url: str) -> None:
    shared_home = cluster.root / "controllers-home"
    # B starts first and takes the leader lease; A, which the trainers talk to, does not
    # schedule, so a job submitted through A runs only if B's scheduling reaches the trainers.
    # Each runs the default two gunicorn workers: /status's "leader" names the instance, so
    # either worker of B answers True and either of A False.
    b = cluster.start_controller("controller-b", home=shared_home, database_url=postgres_url)
    wait_until(lambda: _is_leader(b), 20, what="controller B to lead")
    a = cluster.start_controller("controller-a", home=shared_home, database_url=postgres_url)
    cluster.start_trainers(2, controller=a)
    client_a, client_b = Client(a.url), Client(b.url)
    wait_until(lambda: len(client_b.list_trainers()) == 2, 20, what="trainers seen through B")

    job = client_a.submit_job(**JOB)
    final = client_b.wait_for_job(job["id"], timeout=90)
    assert final["state"] == "succeeded", final["error"]
    assert [m["epoch"] for m in final["metrics"]] == [1, 2, 3]
    assert client_a.get_job(job["id"]) == final
    assert client_b.get_model(final["model_id"])["classes"] == [str(i) for i in range(10)]
    images, labels = zip(*(digits_png(i) for i in range(1700, 1740)), strict=True)
    predictions = client_b.predict_images(final["model_id"], list(images))
    accuracy = sum(p["class_idx"] == y for p, y in zip(predictions, labels, strict=True)) / 40
    assert accuracy >= 0.5, accuracy  # chance is 0.1
    # B still leads: its rounds renew the lease while they wait on a slow dispatch POST.
    assert [_is_leader(a) for _ in range(4)] == [False] * 4  # whichever worker answers
    assert [_is_leader(b) for _ in range(4)] == [True] * 4

    # kill -9 the leader: A takes the lease over when it expires and schedules a new job.
    b.kill()
    killed_at = time.monotonic()
    wait_until(lambda: _is_leader(a), 20, interval=0.05, what="controller A to take over")
    took_over = time.monotonic() - killed_at
    second = client_a.submit_job(**JOB)
    wait_until(
        lambda: client_a.get_job(second["id"])["state"] != "queued", 10, what="dispatch by A"
    )
    print(f"\nleader kill -9 -> the other controller leads: {took_over:.2f} s")
    final = client_a.wait_for_job(second["id"], timeout=90)
    assert final["state"] == "succeeded", final["error"]
    assert final["attempt"] == 1
    assert {m["id"] for m in client_a.list_models()} >= {final["model_id"]}
