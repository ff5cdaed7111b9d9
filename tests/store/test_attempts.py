"""A job's attempt history against a real SQLite file and a real PostgreSQL server: each
attempt's trainer, how and why it ended, and the checkpoint it resumed from, written with the
job's own transitions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cnnswarm.store import Stores, open_stores
from cnnswarm.store.jobs import Job, JobSpec, JobState


@pytest.fixture
def stores(database_url: str, tmp_path: Path) -> Iterator[Stores]:
    opened = open_stores(database_url, tmp_path / "home")
    yield opened
    opened.close()


def submit(stores: Stores, model_id: str) -> Job:
    spec = JobSpec(model_id, "digits", "SmallConvNet", None, {"num_epochs": 1})
    return stores.jobs.submit(spec)[0]


def claim(stores: Stores, job_id: str, trainer: str, lease_s: float = 30) -> Job:
    claimed = stores.jobs.claim(stores.jobs.get(job_id), trainer, lease_s=lease_s)
    assert claimed is not None
    return claimed


def summary(stores: Stores, job_id: str) -> list[tuple[Any, ...]]:
    return [
        (a["attempt"], a["trainer"], a["outcome"], a["resumed_from_attempt"], a["checkpointed"])
        for a in stores.jobs.attempts(job_id)
    ]


def test_history_of_a_job_that_lost_a_trainer_died_once_and_succeeded(stores: Stores) -> None:
    job = submit(stores, "m1")
    assert stores.jobs.attempts(job.id) == []

    claim(stores, job.id, "t1", lease_s=-1.0)  # its lease is already over
    stores.jobs.mark_checkpoint(job.id, 1)
    assert [j.state for j in stores.jobs.expire_leases(max_attempts=3)] == [JobState.QUEUED]

    claim(stores, job.id, "t2")
    stores.jobs.fail(job.id, 2, "killed by signal 9", retry_within=3)

    third = claim(stores, job.id, "t3")
    assert stores.jobs.unclaim(third)  # the trainer refused it: no attempt is left behind
    claim(stores, job.id, "t1")
    stores.jobs.complete(job.id, 3, {"id": "m1", "job_id": job.id, "model_type": "SmallConvNet",
                                     "dataset": "digits", "classes": ["a"], "metrics": [],
                                     "train_opts": {}, "example_idxs": None,
                                     "preprocessing": {}, "filename": "m1.pth"})  # fmt: skip

    assert summary(stores, job.id) == [
        (1, "t1", "lease_lost", None, True),
        (2, "t2", "trainer_failure", 1, False),
        (3, "t1", "succeeded", 1, False),
    ]
    first, second, last = stores.jobs.attempts(job.id)
    assert "stopped renewing the lease" in first["reason"]
    assert second["reason"] == "killed by signal 9"
    assert last["reason"] is None and last["ended_at"] >= last["started_at"]


def test_a_cancelled_running_attempt_ends_cancelled_and_a_failure_ends_failed(
    stores: Stores,
) -> None:
    running = submit(stores, "m1")
    claim(stores, running.id, "t1")
    assert stores.jobs.attempts(running.id)[0]["ended_at"] is None  # still running
    stores.jobs.cancel(running.id)
    assert summary(stores, running.id) == [(1, "t1", "cancelled", None, False)]

    failing = submit(stores, "m2")
    claim(stores, failing.id, "t1")
    stores.jobs.fail(failing.id, 1, "ValueError: bad data")
    assert summary(stores, failing.id) == [(1, "t1", "failed", None, False)]

    queued = submit(stores, "m3")
    stores.jobs.cancel(queued.id)  # never dispatched: no attempt
    assert stores.jobs.attempts(queued.id) == []
