"""Data-parallel jobs on a real cluster (``workers: 2``): gloo over loopback between trainer
processes that share no filesystem. A 2-worker job succeeds with one model; ``kill -9`` of rank
1's or rank 0's trainer mid-run ends the attempt for the gang and the job resumes from rank 0's
checkpoint on a new gang; a gang waits for a trainer it lacks and starts when one registers;
cancel stops every member; a controller restart does not split a running gang.

The tests share one cluster (a controller and three trainers, one spare for a new gang): each
starts with every trainer alive and idle (a killed one is replaced) and ends with no job left
running (the ``cluster`` fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cluster import Cluster, ServerProcess
from cnnswarm.client import Client
from support import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.xdist_group("data-parallel"),  # one worker builds the module's cluster
]

EPOCHS = 6
TRAINERS = 3  # a gang of two and a spare for the new gang after a kill
JOB: dict[str, Any] = {
    "dataset": "digits",
    "model_type": "SmallConvNet",
    "example_idxs": [0, 600],
    "train_opts": {"num_epochs": EPOCHS, "seed": 0, "batch_size": 32},
    "workers": 2,
}


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One controller and ``TRAINERS`` trainers for the whole module."""
    with Cluster(tmp_path_factory.mktemp("data-parallel")) as started:
        started.start_controller()
        started.start_trainers(TRAINERS)
        yield started


@pytest.fixture
def cluster(shared_cluster: Cluster) -> Iterator[Cluster]:
    """The shared cluster with its controller up and ``TRAINERS`` live, idle trainers
    registered; afterwards every unfinished job is cancelled and every trainer is idle again."""
    shared_cluster.top_up(TRAINERS)
    yield shared_cluster
    client = shared_cluster.client()
    for job in client.list_jobs():
        if job["state"] in ("queued", "running"):
            client.cancel_job(job["id"])
    shared_cluster.wait_trainers_idle()


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
    client = cluster.client()
    job_id = _submit(client)
    rank0, rank1 = _gang(cluster, client, job_id)
    assert rank0 is not rank1
    # Each trainer shows the job it runs a rank of (its /status, the controller's trainers).
    for member in (rank0, rank1):  # rank 1 is dispatched once rank 0 answered its port
        wait_until(lambda m=member: job_id in m.get("/status")["jobs"], 30, what="the job")
        assert member.get("/status")["jobs"][job_id]["attempt"] == 1

    def listed_on_both() -> bool:
        gang = {member.url.rstrip("/") for member in (rank0, rank1)}
        listing = [t for t in client.list_trainers() if t["url"].rstrip("/") in gang]
        return len(listing) == 2 and all(job_id in t["running_jobs"] for t in listing)

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
    client = cluster.client()
    job_id = _submit(client)
    gang = _gang(cluster, client, job_id)
    checkpointed = _wait_for_epochs(client, job_id, 1)

    gang[victim_rank].kill()  # kill -9 of its whole process group, mid-epoch

    new_gang = _gang(cluster, client, job_id, attempt=2)  # the spare and the survivor
    assert gang[victim_rank] not in new_gang
    final = client.wait_for_job(job_id, timeout=240)
    assert final["attempt"] == 2
    _assert_one_run(final, checkpointed)


def test_a_gang_waits_for_a_trainer_it_lacks_and_starts_when_one_registers(
    cluster: Cluster,
) -> None:
    client = cluster.client()
    free = len(list(cluster.live_trainers()))
    job_id = str(client.submit_job(**{**JOB, "workers": free + 1})["id"])
    waiting = wait_until(
        lambda: client.get_job(job_id).get("waiting_reason"), 10, what="a waiting reason"
    )
    assert waiting == f"needs {free + 1} free trainers, {free} free"
    cluster.start_trainer()
    assert len(_gang(cluster, client, job_id)) == free + 1


def test_cancel_stops_every_member(cluster: Cluster) -> None:
    client = cluster.client()
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
    client = cluster.client()
    controller = cluster.controller
    job_id = _submit(client)
    _gang(cluster, client, job_id)
    _wait_for_epochs(client, job_id, 1)

    controller.kill()
    cluster.restart(controller)

    final = client.wait_for_job(job_id, timeout=240)
    assert final["state"] == "succeeded", final["error"]
    assert final["attempt"] == 1  # the same gang carried on
