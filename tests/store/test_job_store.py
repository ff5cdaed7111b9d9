"""The job store against a real SQLite file and a real PostgreSQL server: lifecycle, leases,
fencing, idempotency and uniqueness under concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, insert, inspect

from cnnswarm.errors import Conflict, NotFound, StaleAttempt, Unprocessable
from cnnswarm.store import Stores, db, open_stores
from cnnswarm.store.jobs import JobSpec, JobState
from store_support import counting_statements, job_row, queue_jobs


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
    reported = stores.jobs.renew(job.id, 1, "t1", 5, progress=0.5, epoch=1, metrics=[{"e": 1}])
    assert reported is None
    got = stores.jobs.get(job.id)
    assert got.progress == 0.5 and got.epoch == 1 and got.metrics == [{"e": 1}]
    assert stores.jobs.renew(job.id, 1, "t1", lease_s=5) is None  # nothing new reported
    assert stores.jobs.get(job.id).metrics == [{"e": 1}]
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
    reason = stores.jobs.renew(job.id, 1, "t1", lease_s=5)
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
    assert stores.jobs.renew(running.id, 1, "t1", 5) == "job is cancelled"
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
    positions = stores.jobs.queue_positions(jobs)
    assert [positions[j.id] for j in jobs] == [0, 1, 2]
    claimed = stores.jobs.claim(jobs[0], "t1", lease_s=5)
    assert claimed is not None
    assert stores.jobs.queue_positions([claimed, jobs[2]]) == {jobs[2].id: 1}
    assert stores.jobs.queue_positions([jobs[2]]) == {jobs[2].id: 1}
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
    assert stores.leader.try_lead("c1", ttl_s=5)
    assert not stores.leader.try_lead("c2", ttl_s=5)
    assert stores.leader.try_lead("c1", ttl_s=5)
    stores.leader.resign("c1")
    assert stores.leader.try_lead("c2", ttl_s=5)
    assert not stores.leader.try_lead("c1", ttl_s=5)  # c2's lease runs
    # c2's last renewal set a lease that has already lapsed (a negative ttl: the lease shortcut
    # the job leases use too), as if c2 had died a lease ago: c1 takes the expired lease over.
    assert stores.leader.try_lead("c2", ttl_s=-1)
    assert stores.leader.try_lead("c1", ttl_s=5)
    assert not stores.leader.try_lead("c2", ttl_s=5)


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


def test_concurrent_submits_get_distinct_increasing_numbers(stores: Stores) -> None:
    # All threads read and insert at once: a max(seq) + 1 read twice would hand out one
    # number twice on PostgreSQL.
    start = threading.Barrier(16)

    def submit(index: int) -> int:
        start.wait()
        return stores.jobs.submit(spec(f"c{index}"))[0].seq

    with ThreadPoolExecutor(max_workers=16) as pool:
        numbers = list(pool.map(submit, range(16)))
    assert len(set(numbers)) == 16
    later = [stores.jobs.submit(spec(f"later{i}"))[0].seq for i in range(3)]
    assert min(later) > max(numbers) and later == sorted(later)


def test_listing_queued_jobs_with_positions_takes_constant_queries(stores: Stores) -> None:
    counts = []
    for total, new in ((10, 10), (1000, 990)):
        queue_jobs(stores.engine, new, first=total - new)
        with counting_statements(stores.engine) as statements:
            jobs = stores.jobs.list_jobs(JobState.QUEUED)
            positions = stores.jobs.queue_positions(jobs)
        assert [positions[job.id] for job in jobs] == list(range(total))
        counts.append(len(statements))
    assert counts[0] == counts[1] <= 6, counts


def _create_first_version_jobs_table(engine: Engine) -> Table:
    """The jobs table as the first version created it: keyed by id, seq a plain column."""
    keep = [column for column in db.jobs.c if column.name not in ("id", "seq")]
    table = Table(
        "jobs",
        MetaData(),
        Column("id", String(64), primary_key=True),
        Column("seq", Integer, nullable=False, index=True),
        *(
            Column(c.name, c.type, nullable=c.nullable, unique=c.unique, index=c.index)
            for c in keep
        ),
    )
    table.create(engine)
    return table


def test_a_first_version_database_is_upgraded_in_place(database_url: str, tmp_path: Path) -> None:
    engine = db.make_engine(database_url)
    first_version_jobs = _create_first_version_jobs_table(engine)
    # Two jobs share number 2, as two racing submits on PostgreSQL could leave them.
    old = [
        ("job-a", 1, 10.0, "queued"),
        ("job-c", 2, 30.0, "running"),
        ("job-b", 2, 20.0, "queued"),
    ]
    rows = [
        job_row(
            job_id,
            seq=seq,
            created_at=created_at,
            model_id=f"m-{job_id}",
            state=state,
            idempotency_key=f"key-{job_id}",
            request_hash=spec(f"m-{job_id}").fingerprint(),
        )
        for job_id, seq, created_at, state in old
    ]
    with engine.begin() as conn:
        conn.execute(insert(first_version_jobs), rows)
    engine.dispose()

    stores = open_stores(database_url, tmp_path / "home")
    try:
        listed = stores.jobs.list_jobs()
        assert [(j.id, j.seq) for j in listed] == [("job-a", 1), ("job-b", 2), ("job-c", 3)]
        assert stores.jobs.get("job-c").state == JobState.RUNNING
        new, _ = stores.jobs.submit(spec("m-new"))
        assert new.seq == 4
        # The idempotency key is still unique, and the upgrade runs once.
        replay, created = stores.jobs.submit(spec("m-job-a"), idempotency_key="key-job-a")
        assert not created and replay.id == "job-a"
        db.create_schema(stores.engine)
        assert inspect(stores.engine).get_pk_constraint("jobs")["constrained_columns"] == ["seq"]
        assert stores.jobs.submit(spec("m-newer"))[0].seq == 5
    finally:
        stores.close()
