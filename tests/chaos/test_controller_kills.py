"""``kill -9`` of the controller while jobs run, with 0 s and 10 s of downtime (60 s in the
``slow`` variant and in ``bench/chaos.py``): after the restart the job list and every attempt
count are the same, the trainers re-attach (their heartbeats renew the running jobs' leases,
which the new leader extended), and every job completes on its first attempt."""

from __future__ import annotations

from typing import Any

import pytest

from chaos_support import controller_outage
from cluster import Cluster
from cnnswarm.client import Client
from support import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(400)]


def _job(num_epochs: int) -> dict[str, Any]:
    return {
        "dataset": "digits",
        "model_type": "SmallConvNet",
        "example_idxs": [0, 300],
        "train_opts": {"num_epochs": num_epochs, "seed": 0},
    }


def _finish(client: Client, job_ids: list[str], num_epochs: int) -> None:
    for job_id in job_ids:
        final = client.wait_for_job(job_id, timeout=240)
        assert final["state"] == "succeeded", final["error"]
        assert final["attempt"] == 1, final
        assert [m["epoch"] for m in final["metrics"]] == list(range(1, num_epochs + 1))
    models = [m for m in client.list_models() if m["job_id"] in job_ids]
    assert sorted(m["job_id"] for m in models) == sorted(job_ids)


def _run(cluster: Cluster, downtimes: list[float], num_epochs: int) -> list[dict[str, float]]:
    """Three jobs on two trainers through one outage per entry of ``downtimes``; each
    outage's figures."""
    cluster.start_controller()
    cluster.start_trainers(2)
    client = cluster.client()
    wait_until(lambda: len(client.list_trainers()) == 2, 20, what="two trainers")
    # Two run, one waits in the queue: all three must survive every outage.
    job_ids = [client.submit_job(**_job(num_epochs))["id"] for _ in range(3)]
    figures = [controller_outage(cluster, client, downtime) for downtime in downtimes]
    _finish(client, job_ids, num_epochs)
    return figures


def test_controller_kill_with_0s_and_10s_downtime(chaos_cluster: Cluster) -> None:
    for figures in _run(chaos_cluster, [0.0, 10.0], num_epochs=40):
        print(f"\ncontroller outage: {figures}")


@pytest.mark.slow
def test_controller_kill_with_60s_downtime(chaos_cluster: Cluster) -> None:
    for figures in _run(chaos_cluster, [60.0], num_epochs=40):
        print(f"\ncontroller outage: {figures}")
