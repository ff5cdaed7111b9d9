"""Sweeps against real processes: ``kill -9`` of the trainer running a trial (the same trial
resumes as its job's next attempt; nothing is asked again), and of the scheduling leader with
two controllers on one database (the other controller carries the sweep on: every grid point
once, every trial told once, the best-model alias serves)."""

from __future__ import annotations

from typing import Any

import pytest

from cluster import Cluster, ServerProcess
from cnnswarm.client import Client
from support import digits_png, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(400)]

GRID = [0.003, 0.01, 0.02, 0.03]


def _sweep(client: Client, lrs: list[float], num_epochs: int, parallel: int) -> dict[str, Any]:
    return client.submit_sweep(
        "digits",
        {"lr": {"choice": lrs}},
        model_type="SmallConvNet",
        train_opts={"num_epochs": num_epochs, "seed": 0},
        example_idxs=[0, 300],
        sampler="grid",
        max_parallel=parallel,
        seed=1,
    )


def _training(client: Client, sweep_id: str, min_epoch: int) -> dict[str, Any] | None:
    """A trial whose job runs and has finished ``min_epoch`` epochs, if any."""
    for trial in client.get_sweep(sweep_id)["trials"]:
        job = client.get_job(trial["job_id"])
        if job["state"] == "running" and job["epoch"] >= min_epoch:
            return job
    return None


def _check_done(client: Client, sweep: dict[str, Any], lrs: list[float], epochs: int) -> None:
    """Every grid point tried once, every trial succeeded with all its epochs, no other job."""
    assert sweep["state"] == "succeeded", sweep
    trials = sweep["trials"]
    assert [t["number"] for t in trials] == list(range(len(lrs)))
    assert sorted(t["params"]["lr"] for t in trials) == sorted(lrs)
    assert sweep["counts"]["succeeded"] == len(lrs), sweep["counts"]
    for trial in trials:
        job = client.get_job(trial["job_id"])
        assert [m["epoch"] for m in job["metrics"]] == list(range(1, epochs + 1))
        assert trial["value"] == job["metrics"][-1]["test_accuracy"]
    assert sum(job["sweep"] == sweep["id"] for job in client.list_jobs()) == len(lrs)


def test_trainer_killed_mid_trial_resumes_the_same_trial(chaos_cluster: Cluster) -> None:
    chaos_cluster.start_controller()
    chaos_cluster.start_trainer()
    client = chaos_cluster.client()
    lrs, epochs = GRID[:2], 6
    sweep = _sweep(client, lrs, epochs, parallel=1)
    job = wait_until(lambda: _training(client, sweep["id"], 1), 120, 0.25, what="a trial's epoch 1")
    assert job is not None
    chaos_cluster.trainer_running(job["id"]).kill()
    chaos_cluster.start_trainer()
    done = client.wait_for_sweep(sweep["id"], timeout=300)
    _check_done(client, done, lrs, epochs)
    resumed = client.get_job(job["id"])
    # The same trial's job, on a later attempt (a dispatch to the dead trainer before its
    # heartbeats were missed may cost one more); the sweep asked for nothing in its place.
    assert resumed["attempt"] >= 2, resumed
    (trial,) = [t for t in done["trials"] if t["job_id"] == job["id"]]
    assert trial["state"] == "succeeded" and trial["attempt"] == resumed["attempt"]


def _is_leader(controller: ServerProcess) -> bool:
    return bool(controller.get("/readyz")["leader"])


def test_leader_killed_mid_sweep_another_controller_carries_on(chaos_cluster: Cluster) -> None:
    # Both controllers share one HOME_DIR, so one SQLite database and one artifact store.
    home = chaos_cluster.root / "controllers-home"
    leader = chaos_cluster.start_controller("controller-b", home=home)
    wait_until(lambda: _is_leader(leader), 20, what="controller B to lead")
    other = chaos_cluster.start_controller("controller-a", home=home)
    chaos_cluster.start_trainers(2, controller=other)
    client = Client(other.url)
    wait_until(lambda: len(client.list_trainers()) == 2, 30, what="two trainers")
    epochs = 4
    sweep = _sweep(client, GRID, epochs, parallel=2)
    wait_until(lambda: _training(client, sweep["id"], 1), 120, 0.25, what="a trial's epoch 1")
    leader.kill()
    wait_until(lambda: _is_leader(other), 30, what="controller A to take over")
    done = client.wait_for_sweep(sweep["id"], timeout=300)
    _check_done(client, done, GRID, epochs)
    best = done["best_trial"]
    assert client.get_model(f"{sweep['id']}-best")["id"] == best["model_id"]
    images, _ = zip(*(digits_png(i) for i in range(1700, 1705)), strict=True)
    answer = client.predict_images(f"{sweep['id']}-best", list(images))
    assert len(answer) == 5
