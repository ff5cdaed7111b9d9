"""A trainer cut off from the controller for longer than its lease.

The cut is ``SIGSTOP`` of the trainer's whole process group (gunicorn master, worker, the
job's child) and ``SIGCONT`` after the job moved on: for the controller that is exactly a
partition (no heartbeat, no write), for the trainer time just jumps, as after a network cut
heals. (A real network cut needs network namespaces, i.e. root; this needs nothing.)

Checked: the job moves to the other trainer as attempt 2 within lease + 5 s; when the cut heals
the stale trainer's writes are refused with 409 (the controller's access log shows them, and a
write of attempt 1 answers 409), the heartbeat's drop stops its child, its ``/status`` no longer
lists the job running, and the job ends with exactly one model, from attempt 2.
"""

from __future__ import annotations

import re
import signal
import time

import pytest
import requests

from cluster import Cluster
from support import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(240)]

LEASE_S = 3.0
NUM_EPOCHS = 12
JOB = {
    "dataset": "digits",
    "model_type": "SmallConvNet",
    "example_idxs": [0, 300],
    # A checkpoint after every batch: the healed trainer writes at once, and is refused.
    "train_opts": {"num_epochs": NUM_EPOCHS, "seed": 0, "checkpoint_every_batches": 1},
}


def test_partitioned_trainer_is_fenced_and_drops_its_job(chaos_cluster: Cluster) -> None:
    controller = chaos_cluster.start_controller()
    chaos_cluster.start_trainers(2)
    client = chaos_cluster.client()
    wait_until(lambda: len(client.list_trainers()) == 2, 20, what="two trainers")
    job_id = client.submit_job(**JOB)["id"]

    def training() -> bool:
        job = client.get_job(job_id)
        return job["state"] == "running" and job["progress"] > 0

    wait_until(training, 90, interval=0.1, what="the job to train")
    victim = chaos_cluster.trainer_running(job_id)
    survivor = next(t for t in chaos_cluster.trainers if t is not victim)

    victim.kill(signal.SIGSTOP)
    cut_at = time.monotonic()
    try:

        def moved() -> bool:
            job = client.get_job(job_id)
            return job["state"] == "running" and job["attempt"] == 2

        wait_until(moved, LEASE_S + 5, interval=0.05, what="the job to move on within lease + 5 s")
        moved_s = time.monotonic() - cut_at
        assert client.get_job(job_id)["trainer"] == survivor.name
        # What any write of the cut-off attempt gets from now on:
        stale = requests.put(
            f"{controller.url}/internal/v1/jobs/{job_id}/checkpoint",
            params={"attempt": 1},
            data=b"not even read",
            timeout=10,
        )
        assert stale.status_code == 409, stale.text
        assert stale.json()["exception"] == "StaleAttempt"
    finally:
        victim.kill(signal.SIGCONT)
    healed_at = time.monotonic()

    def dropped() -> bool:
        entry = victim.get("/status")["jobs"].get(job_id)
        assert entry is not None and entry["attempt"] == 1
        return entry["state"] != "running" and entry["complete"]

    wait_until(dropped, 20, interval=0.05, what="the healed trainer to drop the orphaned job")
    dropped_s = time.monotonic() - healed_at
    final = client.wait_for_job(job_id, timeout=180)
    assert final["state"] == "succeeded", final["error"]
    assert final["attempt"] == 2
    assert [m["epoch"] for m in final["metrics"]] == list(range(1, NUM_EPOCHS + 1))
    assert [m["id"] for m in client.list_models()] == [final["model_id"]]
    files = sorted(p.name for p in (controller.home / "torch_models" / final["model_id"]).iterdir())
    assert files == ["attempt-2.pth"]
    # The healed child's own writes, refused (409) in the controller's access log.
    log = controller.log_path.read_text(errors="replace")
    fenced = re.findall(rf"/internal/v1/jobs/{job_id}/\w+\?attempt=1 HTTP/1.1\" 409", log)
    print(
        f"\npartition: cut -> job moved on (attempt 2): {moved_s:.2f} s; healed -> orphan "
        f"dropped: {dropped_s:.2f} s; writes of the cut-off attempt refused with 409: "
        f"{len(fenced)} (+1 by the test); final state {victim.get('/status')['jobs'][job_id]}"
    )
    assert fenced, "the healed trainer's writes never reached the controller's fence"
