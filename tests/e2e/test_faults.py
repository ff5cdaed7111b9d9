"""Faults against a real cluster: ``kill -9`` of the trainer running a job (the job resumes on
the other trainer from its checkpoint) and ``kill -9`` plus restart of the controller (the job
carries on, same attempt). Each test prints the figures it measures.

The tests share one cluster (a controller and two trainers): each starts with both trainers alive
and idle (a killed one is replaced)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from cluster import Cluster, ServerProcess
from cnnswarm.client import Client
from cnnswarm.ml.checkpoint import checkpoint_from_bytes
from support import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(240),
    pytest.mark.xdist_group("faults"),  # one worker builds the module's cluster
]

EPOCHS = 8
# ~1.5 s per epoch on one thread here: long enough to kill mid-run, short enough for a test.
JOB: dict[str, Any] = {
    "dataset": "digits",
    "model_type": "SmallConvNet",
    "example_idxs": [0, 1000],
    "train_opts": {"num_epochs": EPOCHS, "seed": 0},
}


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One controller and two trainers for the whole module."""
    with Cluster(tmp_path_factory.mktemp("faults")) as started:
        started.start_controller()
        started.start_trainers(2)
        yield started


@pytest.fixture
def cluster(shared_cluster: Cluster) -> Cluster:
    """The shared cluster with its controller up and two live trainers registered idle."""
    shared_cluster.top_up(2)
    return shared_cluster


def _stored_checkpoint(controller: ServerProcess, job_id: str) -> dict[str, Any] | None:
    """The job's latest checkpoint in the controller's artifact store (None when none yet)."""
    answer = requests.get(f"{controller.url}/internal/v1/jobs/{job_id}/checkpoint", timeout=10)
    if answer.status_code == 404:
        return None
    answer.raise_for_status()
    return checkpoint_from_bytes(answer.content)


def _wait_for_checkpoint(client: Client, controller: ServerProcess, job_id: str) -> dict[str, Any]:
    """Wait until the job reported an epoch and its checkpoint is stored; return the latter."""

    def ready() -> dict[str, Any] | None:
        job = client.get_job(job_id)
        assert job["state"] in ("queued", "running"), job
        if not job["metrics"]:
            return None
        return _stored_checkpoint(controller, job_id)

    found = wait_until(ready, 90, interval=0.1, what="a first epoch and its checkpoint")
    assert found is not None
    return found


def _assert_one_run(final: dict[str, Any], checkpointed: list[dict[str, Any]]) -> None:
    """One metrics entry per epoch, and the checkpointed epochs kept as they were (a redone
    epoch would have another duration and other losses)."""
    assert final["state"] == "succeeded", final["error"]
    assert [m["epoch"] for m in final["metrics"]] == list(range(1, EPOCHS + 1))
    assert checkpointed, "the checkpoint held no finished epoch"
    assert final["metrics"][: len(checkpointed)] == checkpointed


def test_kill_9_of_the_busy_trainer_resumes_the_job_on_the_other(cluster: Cluster) -> None:
    client = cluster.client()
    job_id = client.submit_job(**JOB)["id"]
    checkpoint = _wait_for_checkpoint(client, cluster.controller, job_id)
    victim = cluster.trainer_running(job_id)
    survivor = next(t for t in cluster.live_trainers() if t is not victim)

    victim.kill()  # kill -9 of its whole process group: master, worker and the job's child
    killed_at = time.monotonic()
    seen: dict[str, float] = {}
    checkpoint_percent = 100 * len(checkpoint["metrics"]) / EPOCHS

    def resumed() -> bool:
        job = client.get_job(job_id)
        now = time.monotonic() - killed_at
        assert job["state"] in ("running", "queued"), job
        if job["state"] == "queued" or job["attempt"] >= 2:
            seen.setdefault("requeued", now)
        if job["state"] == "running" and job["attempt"] == 2:
            seen.setdefault("dispatched", now)
            # The controller keeps attempt 1's last progress until attempt 2 reports: ask the
            # survivor itself whether it trains, past the checkpoint it resumed from.
            entry = survivor.get("/status")["jobs"].get(job_id)
            if entry and entry["attempt"] == 2 and entry["progress"] > checkpoint_percent:
                seen.setdefault("training", now)
        return "training" in seen

    wait_until(resumed, 60, interval=0.05, what="the job to resume on the other trainer")
    print(
        f"\nkill -9 -> lease expiry noticed: {seen['requeued']:.2f} s, -> dispatched again: "
        f"{seen['dispatched']:.2f} s, -> survivor training past the checkpoint (epoch "
        f"{len(checkpoint['metrics'])}): {seen['training']:.2f} s"
    )
    final = client.wait_for_job(job_id, timeout=120)
    _assert_one_run(final, checkpoint["metrics"])
    assert final["attempt"] == 2
    assert final["trainer"] == survivor.name
    trainers = {t["id"]: t for t in client.list_trainers()}
    assert trainers[victim.name]["state"] == "lost"
    # The trainer marks the job done when its child exits, just after the upload.
    wait_until(
        lambda: survivor.get("/status")["jobs"][job_id]["state"] == "succeeded", 10, what="done"
    )
    assert survivor.get("/status")["jobs"][job_id]["attempt"] == 2
    prediction = client.predict_examples(final["model_id"], [[[[0.0] * 8] * 8]])
    assert len(prediction) == 1


def test_controller_restart_mid_job_loses_nothing(cluster: Cluster) -> None:
    client = cluster.client()
    controller = cluster.controller
    job_id = client.submit_job(**JOB)["id"]
    checkpoint = _wait_for_checkpoint(client, controller, job_id)
    before = client.get_job(job_id)
    trainer = cluster.trainer_running(job_id)

    controller.kill()
    killed_at = time.monotonic()
    cluster.restart(controller)  # same port, same HOME_DIR (and its SQLite database)
    ready_after = time.monotonic() - killed_at

    def progressed() -> bool:
        job = client.get_job(job_id)
        assert job["attempt"] == 1, job
        return bool(job["state"] == "succeeded" or job["progress"] > before["progress"])

    wait_until(progressed, 60, interval=0.05, what="progress reported to the new controller")
    continued_after = time.monotonic() - killed_at
    print(
        f"\ncontroller kill -9 -> restarted and ready: {ready_after:.2f} s, "
        f"-> job progress seen again: {continued_after:.2f} s"
    )
    final = client.wait_for_job(job_id, timeout=120)
    _assert_one_run(final, checkpoint["metrics"])
    assert final["metrics"][: len(before["metrics"])] == before["metrics"]
    assert final["attempt"] == 1
    assert final["trainer"] == trainer.name
    assert trainer.get("/status")["jobs"][job_id]["attempt"] == 1
    assert client.get_model(final["model_id"])["metrics"] == final["metrics"]
