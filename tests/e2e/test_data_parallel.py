"""Data-parallel jobs on a real cluster (``workers: 2``): gloo over loopback between two trainer
processes that share no filesystem. A 2-worker job succeeds with one model; ``kill -9`` of rank
1's or rank 0's trainer mid-run ends the attempt for the gang and the job resumes from rank 0's
checkpoint on a new gang; a gang waits for a second trainer and starts when one registers;
cancel stops every member; a controller restart does not split a running gang."""

from __future__ import annotations

from typing import Any

import pytest

from cluster import Cluster, ServerProcess
from cnnswarm.client import Client
from support import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EPOCHS = 6
JOB: dict[str, Any] = {
    "dataset": "digits",
    "model_type": "SmallConvNet",
    "example_idxs": [0, 600],
    "train_opts": {"num_epochs": EPOCHS, "seed": 0, "batch_size": 32},
    "workers": 2,
}


def _start(cluster: Cluster, trainers: int) -> Client:
    cluster.start_controller()
    cluster.start_trainers(trainers)
    client = cluster.client()
    wait_until(lambda: len(client.list_trainers()) == trainers, 30, what="trainers registered")
    return client


def _submit(client: Client) -> str:
    return str(client.submit_job(**JOB)["id"])


def _gang(cluster: Cluster, client: Client, job_id: str, attempt: int = 1) -> list[ServerProcess]:
    """The trainer processes of the job's running gang, by rank, once it runs ``attempt``."""

    def running() -> list[str] | None:
        job = client.get_job(job_id)
        assert job["state"] in ("queued", "running"), job
        if job["state"] == "running" and job["attempt"] == attempt and job.get("gang"):
            return list(job["gang"])
        return None

    ids = wait_until(running, 60, interval=0.1, what=f"attempt {attempt} running on a gang")
    urls = {t["id"]: t["url"] for t in client.list_trainers()}
    return [cluster.trainer_by_url(urls[trainer_id]) for trainer_id in ids]


def _wait_for_epochs(client: Client, job_id: str, epochs: int) -> list[dict[str, Any]]:
    """Wait until rank 0 has reported ``epochs`` epochs; their metrics."""

    def reported() -> list[dict[str, Any]] | None:
        job = client.get_job(job_id)
        assert job["state"] == "running", job
        return list(job["metrics"]) if len(job["metrics"]) >= epochs else None

    return wait_until(reported, 120, interval=0.1, what=f"{epochs} epoch(s) reported")


def _assert_one_run(final: dict[str, Any], checkpointed: list[dict[str, Any]]) -> None:
    assert final["state"] == "succeeded", final["error"]
    assert [m["epoch"] for m in final["metrics"]] == list(range(1, EPOCHS + 1))
    assert final["metrics"][: len(checkpointed)] == checkpointed


def test_a_two_worker_job_trains_on_both_trainers_and_publishes_one_model(
    cluster: Cluster,
) -> None:
    client = _start(cluster, 2)
    job_id = _submit(client)
    rank0, rank1 = _gang(cluster, client, job_id)
    assert rank0 is not rank1
    # Each trainer shows the job it runs a rank of (its /status, the controller's trainers).
    for member in (rank0, rank1):  # rank 1 is dispatched once rank 0 answered its port
        wait_until(lambda m=member: job_id in m.get("/status")["jobs"], 30, what="the job")
        assert member.get("/status")["jobs"][job_id]["attempt"] == 1

    def listed_on_both() -> bool:
        return all(job_id in trainer["running_jobs"] for trainer in client.list_trainers())

    wait_until(listed_on_both, 20, what="both trainers listing the job")
    final = client.wait_for_job(job_id, timeout=240)
    assert final["state"] == "succeeded", final["error"]
    assert final["attempt"] == 1 and final["workers"] == 2
    assert [m["epoch"] for m in final["metrics"]] == list(range(1, EPOCHS + 1))
    assert final["metrics"][-1]["test_accuracy"] > 0.5
    models = [m for m in client.list_models() if m["id"] == final["model_id"]]
    assert len(models) == 1


@pytest.mark.parametrize("victim_rank", [1, 0])
def test_kill_9_of_a_member_resumes_the_job_on_a_new_gang(
    cluster: Cluster, victim_rank: int
) -> None:
    client = _start(cluster, 3)  # a spare trainer for the new gang
    job_id = _submit(client)
    gang = _gang(cluster, client, job_id)
    checkpointed = _wait_for_epochs(client, job_id, 1)

    gang[victim_rank].kill()  # kill -9 of its whole process group, mid-epoch

    new_gang = _gang(cluster, client, job_id, attempt=2)
    assert gang[victim_rank] not in new_gang
    final = client.wait_for_job(job_id, timeout=240)
    assert final["attempt"] == 2
    _assert_one_run(final, checkpointed)


def test_a_gang_waits_for_a_second_trainer_and_starts_when_one_registers(
    cluster: Cluster,
) -> None:
    client = _start(cluster, 1)
    job_id = _submit(client)
    waiting = wait_until(
        lambda: client.get_job(job_id).get("waiting_reason"), 10, what="a waiting reason"
    )
    assert waiting == "needs 2 free trainers, 1 free"
    cluster.start_trainer()
    assert len(_gang(cluster, client, job_id)) == 2


def test_cancel_stops_every_member(cluster: Cluster) -> None:
    client = _start(cluster, 2)
    job_id = _submit(client)
    gang = _gang(cluster, client, job_id)
    _wait_for_epochs(client, job_id, 1)

    assert client.cancel_job(job_id)["state"] == "cancelled"

    def stopped(member: ServerProcess) -> bool:
        status = member.get("/status")
        return bool(status["free_slots"] == status["slots"])

    for member in gang:
        wait_until(lambda member=member: stopped(member), 30, what="every member stopped")
        assert member.get("/status")["jobs"][job_id]["state"] != "succeeded"


def test_a_controller_restart_does_not_split_the_gang(cluster: Cluster) -> None:
    client = _start(cluster, 2)
    controller = cluster.controller
    job_id = _submit(client)
    _gang(cluster, client, job_id)
    _wait_for_epochs(client, job_id, 1)

    controller.kill()
    cluster.restart(controller)

    final = client.wait_for_job(job_id, timeout=240)
    assert final["state"] == "succeeded", final["error"]
    assert final["attempt"] == 1  # the same gang carried on
