"""``kill -9`` of the controller while jobs run, with 0 s and 10 s of downtime, and with an outage
that lasts until every running job has given up delivering a checkpoint (the job's retry budget,
``CHECKPOINT_POLICY``, 10 s) and trained on past it: the trainers' side of a long outage (the
60 s figure is ``bench/chaos.py``'s). After each restart the job list and every attempt count are
the same, the trainers re-attach (their heartbeats renew the running jobs' leases, which the new
leader extended), and every job completes on its first attempt."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from chaos_support import controller_outage
from cluster import Cluster
from cnnswarm.client import Client
from cnnswarm.trainer.child import CHECKPOINT_POLICY
from support import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(400)]


def _job(num_epochs: int) -> dict[str, Any]:
    return {
        "dataset": "digits",
        "model_type": "SmallConvNet",
        "example_idxs": [0, 300],
        "train_opts": {"num_epochs": num_epochs, "seed": 0},
    }


# The job that waits in the queue through the outages needs no long run of its own.
QUEUED_JOB_EPOCHS = 2


def _finish(client: Client, epochs_by_job: dict[str, int]) -> None:
    for job_id, num_epochs in epochs_by_job.items():
        final = client.wait_for_job(job_id, timeout=240)
        assert final["state"] == "succeeded", final["error"]
        assert final["attempt"] == 1, final
        assert [m["epoch"] for m in final["metrics"]] == list(range(1, num_epochs + 1))
    models = [m for m in client.list_models() if m["job_id"] in epochs_by_job]
    assert sorted(m["job_id"] for m in models) == sorted(epochs_by_job)


def _run(
    cluster: Cluster,
    downtimes: list[float],
    num_epochs: int,
    until: Callable[[], bool] | None = None,
) -> list[dict[str, float]]:
    """Three jobs on two trainers through one outage per entry of ``downtimes`` (each lasting
    also until ``until()`` holds, when given): two of ``num_epochs`` run through the outages,
    a short one waits in the queue behind them; each outage's figures."""
    cluster.start_controller()
    cluster.start_trainers(2)
    client = cluster.client()
    wait_until(lambda: len(client.list_trainers()) == 2, 20, what="two trainers")
    # Two run, one waits in the queue (FIFO: the last submitted): all three must survive every
    # outage.
    epochs = [num_epochs, num_epochs, QUEUED_JOB_EPOCHS]
    epochs_by_job = {client.submit_job(**_job(n))["id"]: n for n in epochs}
    figures = [controller_outage(cluster, client, downtime, until=until) for downtime in downtimes]
    _finish(client, epochs_by_job)
    return figures


def test_controller_kill_with_0s_and_10s_downtime(chaos_cluster: Cluster) -> None:
    for figures in _run(chaos_cluster, [0.0, 10.0], num_epochs=40):
        print(f"\ncontroller outage: {figures}")


GIVE_UPS = 2


def _checkpoints_given_up_and_training_on(cluster: Cluster) -> Callable[[], bool]:
    """A condition on the live trainers, for an outage: every job one of them trains has
    logged ``GIVE_UPS`` checkpoints it could not deliver (each retried for the whole checkpoint
    budget) and has made progress since it was first seen to have (keyed by job alone: with
    short epochs, progress moves right after each give-up, so a snapshot per give-up count
    could always be taken just after the move)."""
    progress_when_given_up: dict[str, float] = {}

    def holds() -> bool:
        training = 0
        for trainer in cluster.live_trainers():
            log = trainer.log_path.read_text(errors="replace")
            for job_id, entry in trainer.get("/status")["jobs"].items():
                if entry["state"] != "running":
                    continue
                training += 1
                given_up = log.count(f"job {job_id}: WARNING checkpoint not delivered")
                if given_up < GIVE_UPS:
                    return False
                seen = progress_when_given_up.setdefault(job_id, entry["progress"])
                if entry["progress"] <= seen:
                    return False
        return training > 0

    return holds


@pytest.mark.slow
def test_controller_kill_outlasting_checkpoint_retry_budgets(chaos_cluster: Cluster) -> None:
    # What 60 s of downtime did, without waiting 60 s: the outage outlasts the lease (3 s) and,
    # for every running job, the retry budget of several checkpoints in a row (each given up,
    # training going on in between). It ends as soon as that has happened.
    # 12 epochs: each epoch of the outage waits out a checkpoint's retry budget, so a job that
    # is training when the controller dies is still training when the outage ends.
    until = _checkpoints_given_up_and_training_on(chaos_cluster)
    (figures,) = _run(chaos_cluster, [0.0], num_epochs=12, until=until)
    print(
        f"\ncontroller outage: {figures}; checkpoint budget {CHECKPOINT_POLICY.deadline_s} s, "
        f"{GIVE_UPS} given up per running job"
    )
