"""The job store against a real SQLite file and a real PostgreSQL server: lifecycle, leases,
fencing, idempotency and uniqueness under concurrency."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cnnswarm.errors import Conflict, NotFound, StaleAttempt, Unprocessable
from cnnswarm.store import Stores, open_stores
from cnnswarm.store.jobs import JobSpec, JobState


@pytest.fixture
def stores(database_url: str, tmp_path: Path) -> Stores:
    s = open_stores(database_url, tmp_path / "home")
    yield s  # type: ignore[misc]
    s.close()


def spec(model_id: str = "m1", **kw: Any) -> JobSpec:
    base: dict[str, Any] = {
        "model_id": model_id,
        "dataset": "digits",
        "model_type": "SmallConvNet",
        "example_idxs": None,
        "train_opts": {"num_epochs": 1},
    }
    base.update(kw)
    return JobSpec(**base)


def model_row(job_id: str, model_id: str) -> dict[str, Any]:
    return {
        "id": model_id,
        "job_id": job_id,
        "model_type": "SmallConvNet",
        "dataset": "digits",
        "classes": ["a", "b"],
        "metrics": [{"epoch": 1}],
        "train_opts": {},
        "example_idxs": None,
        "preprocessing": {},
        "filename": "x.pth",
    }


def test_lifecycle_claim_renew_complete(stores: Stores) -> None:
    job, created = stores.jobs.submit(spec())
    assert created and job.state == JobState.QUEUED and job.attempt == 0
    running = stores.jobs.claim(job, "t1", lease_s=5)
    assert running is not None and running.state == JobState.RUNNING and running.attempt == 1
    assert stores.jobs.claim(job, "t2", lease_s=5) is None  # already moved on
    report = {"job_id": job.id, "attempt": 1, "progress": 0.5, "epoch": 1, "metrics": [{"e": 1}]}
    assert stores.jobs.renew(report, "t1", lease_s=5) is None
    got = stores.jobs.get(job.id)
    assert got.progress == 0.5 and got.metrics == [{"e": 1}]
    done = stores.jobs.complete(job.id, 1, model_row(job.id, "m1"))
    assert done.state == JobState.SUCCEEDED and done.progress == 1.0
    assert stores.catalog.get_model("m1")["job_id"] == job.id


def test_expired_lease_requeues_then_fails_at_retry_limit(stores: Stores) -> None:
    job, _ = stores.jobs.submit(spec())
    for attempt in (1, 2):
        claimed = stores.jobs.claim(stores.jobs.get(job.id), f"t{attempt}", lease_s=-1)
        assert claimed is not None and claimed.attempt == attempt
        (requeued,) = stores.jobs.expire_leases(max_attempts=3)
        assert requeued.state == JobState.QUEUED and "requeued" in (requeued.error or "")
    claimed = stores.jobs.claim(stores.jobs.get(job.id), "t3", lease_s=-1)
    assert claimed is not None and claimed.attempt == 3
    (failed,) = stores.jobs.expire_leases(max_attempts=3)
    assert failed.state == JobState.FAILED and "retry limit of 3" in (failed.error or "")
    # the model id is free again once the job failed
    again, created = stores.jobs.submit(spec())
    assert created and again.id != job.id


def test_stale_attempt_writes_are_rejected(stores: Stores) -> None:
    job, _ = stores.jobs.submit(spec())
    first = stores.jobs.claim(job, "t1", lease_s=-1)
    assert first is not None
    stores.jobs.expire_leases(max_attempts=3)
    second = stores.jobs.claim(stores.jobs.get(job.id), "t2", lease_s=30)
    assert second is not None and second.attempt == 2
    with pytest.raises(StaleAttempt):
        stores.jobs.mark_checkpoint(job.id, 1)
    with pytest.raises(StaleAttempt):
        stores.jobs.complete(job.id, 1, model_row(job.id, "m1"))
    with pytest.raises(StaleAttempt):
        stores.jobs.fail(job.id, 1, "boom")
    reason = stores.jobs.renew({"job_id": job.id, "attempt": 1}, "t1", lease_s=5)
    assert reason is not None and "stale" in reason
    stores.jobs.complete(job.id, 2, model_row(job.id, "m1"))
    assert stores.jobs.get(job.id).state == JobState.SUCCEEDED
    assert len(stores.catalog.list_models()) == 1


def test_unclaim_restores_the_queued_job(stores: Stores) -> None:
    job, _ = stores.jobs.submit(spec())
    claimed = stores.jobs.claim(job, "t1", lease_s=5)
    assert claimed is not None and stores.jobs.unclaim(claimed)
    back = stores.jobs.get(job.id)
    assert back.state == JobState.QUEUED and back.attempt == 0 and back.trainer_id is None


def test_cancel_queued_and_running(stores: Stores) -> None:
    queued, _ = stores.jobs.submit(spec("a"))
    cancelled, trainer = stores.jobs.cancel(queued.id)
    assert cancelled.state == JobState.CANCELLED and trainer is None
    assert stores.jobs.cancel(queued.id)[0].state == JobState.CANCELLED  # idempotent
    running, _ = stores.jobs.submit(spec("b"))
    claimed = stores.jobs.claim(running, "t1", lease_s=5)
    assert claimed is not None
    job, trainer = stores.jobs.cancel(running.id)
    assert job.state == JobState.CANCELLED and trainer == "t1"
    assert stores.jobs.renew({"job_id": running.id, "attempt": 1}, "t1", 5) == "job is cancelled"
    with pytest.raises(StaleAttempt):
        stores.jobs.complete(running.id, 1, model_row(running.id, "b"))


def test_cancel_of_finished_job_conflicts(stores: Stores) -> None:
    job, _ = stores.jobs.submit(spec())
    stores.jobs.claim(job, "t1", lease_s=5)
    stores.jobs.fail(job.id, 1, "bad data")
    with pytest.raises(Conflict):
        stores.jobs.cancel(job.id)


def test_queue_position_and_unknown_job(stores: Stores) -> None:
    jobs = [stores.jobs.submit(spec(f"m{i}"))[0] for i in range(3)]
    assert [stores.jobs.queued_ahead(j) for j in jobs] == [0, 1, 2]
    with pytest.raises(NotFound):
        stores.jobs.get("job-nope")


def test_idempotency_key_under_100_concurrent_submissions(stores: Stores) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            results.append(stores.jobs.submit(spec("same"), idempotency_key="k1")[0].id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 100 and len(set(results)) == 1
    assert len(stores.jobs.list_jobs()) == 1
    with pytest.raises(Unprocessable):
        stores.jobs.submit(spec("other"), idempotency_key="k1")


def test_model_id_uniqueness_is_enforced_by_the_database(stores: Stores) -> None:
    outcomes: list[str] = []

    def submit() -> None:
        try:
            stores.jobs.submit(spec("dup"))
            outcomes.append("ok")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1 and outcomes.count("conflict") == 19


def test_leader_lease_has_one_holder(stores: Stores) -> None:
    assert stores.trainers.try_lead("c1", ttl_s=5)
    assert not stores.trainers.try_lead("c2", ttl_s=5)
    assert stores.trainers.try_lead("c1", ttl_s=5)
    stores.trainers.resign("c1")
    assert stores.trainers.try_lead("c2", ttl_s=0.2)
    time.sleep(0.3)  # let the lease lapse: the point of the test is an expired lease
    assert stores.trainers.try_lead("c1", ttl_s=5)


def test_trainer_heartbeats_and_aliases(stores: Stores) -> None:
    stores.trainers.heartbeat("t1", "http://127.0.0.1:1", 2, [])
    stores.trainers.heartbeat("t1", "http://127.0.0.1:2", 2, ["job-x"])
    (trainer,) = stores.trainers.alive(timeout_s=5)
    assert trainer.url.endswith(":2") and trainer.running == ["job-x"]
    job, _ = stores.jobs.submit(spec("m1"))
    stores.jobs.claim(job, "t1", lease_s=5)
    stores.jobs.complete(job.id, 1, model_row(job.id, "m1"))
    stores.catalog.set_alias("prod", "m1")
    assert stores.catalog.get_model("prod")["id"] == "m1"
    with pytest.raises(Conflict):
        stores.catalog.set_alias("m1", "m1")
    stores.catalog.delete_model("prod")
    with pytest.raises(NotFound):
        stores.catalog.get_model("m1")
    # the id is free again after the model is deleted
    assert stores.jobs.submit(spec("m1"))[1]


def test_retryable_failure_requeues_until_the_retry_limit(stores: Stores) -> None:
    job, _ = stores.jobs.submit(spec())
    for attempt in (1, 2):
        claimed = stores.jobs.claim(stores.jobs.get(job.id), "t1", lease_s=30)
        assert claimed is not None and claimed.attempt == attempt
        requeued = stores.jobs.fail(job.id, attempt, "killed by SIGKILL", retry_within=3)
        assert requeued.state == JobState.QUEUED and "requeued" in (requeued.error or "")
    stores.jobs.claim(stores.jobs.get(job.id), "t1", lease_s=30)
    failed = stores.jobs.fail(job.id, 3, "killed by SIGKILL", retry_within=3)
    assert failed.state == JobState.FAILED and failed.error == "killed by SIGKILL"


def test_listing_newest_or_oldest_and_counts(stores: Stores) -> None:
    jobs = [stores.jobs.submit(spec(f"m{i}"))[0] for i in range(5)]
    assert [j.id for j in stores.jobs.list_jobs(limit=2)] == [jobs[3].id, jobs[4].id]
    front = stores.jobs.list_jobs(JobState.QUEUED, limit=2, oldest=True)
    assert [j.id for j in front] == [jobs[0].id, jobs[1].id]
    stores.jobs.cancel(jobs[0].id)
    counts = stores.jobs.count_by_state()
    assert counts["queued"] == 4 and counts["cancelled"] == 1 and counts["succeeded"] == 0
