"""Jobs: their lifecycle, leases and fencing, in the database.

Lifecycle::

    queued --claim--> running --complete--> succeeded
      ^                 |  \\--fail-------> failed
      |                 |   \\-cancel-----> cancelled   (queued jobs can be cancelled too)
      +--lease expired--+   (attempt < max_attempts; otherwise -> failed with the reason)
      +--retryable fail-+   (the job's process was killed; same rule)

``attempt`` counts dispatches: the first run is attempt 1. Every write a trainer makes names
its attempt; a write whose attempt no longer owns the job raises ``StaleAttempt`` (fencing), so
one job never publishes two models. Guarantees: an accepted job survives any process crash
(it is committed before 202 is answered); submissions with one ``Idempotency-Key`` create one
job; the database numbers jobs (``seq``, the queue's order), so concurrent submits never share
a number. Each attempt's claim and end are recorded with the transition that makes them
(``cnnswarm.store.attempts``): ``attempts(job_id)`` is the job's history.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from cnnswarm.errors import Conflict, NotFound, StaleAttempt, Unprocessable
from cnnswarm.store import db
from cnnswarm.store.attempts import (
    AttemptEnd,
    attempts_of,
    close_attempt,
    drop_attempt,
    mark_checkpointed,
    open_attempt,
)
from cnnswarm.store.catalog import insert_model, model_id_taken
from cnnswarm.store.gangs import add_gang
from cnnswarm.store.job_records import Job, JobSpec, JobState, job_to_json, new_job_id

__all__ = ["Job", "JobSpec", "JobState", "JobStore", "insert_job", "job_to_json"]


def insert_job(
    conn: Any,
    job_id: str,
    spec: JobSpec,
    *,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    sweep_id: str | None = None,
) -> None:
    """Insert a queued job and reserve its model id, inside the caller's transaction
    (``IntegrityError`` when the model id or the key is taken)."""
    ts = db.now()
    conn.execute(insert(db.model_ids).values(model_id=spec.model_id, job_id=job_id))
    conn.execute(
        insert(db.jobs).values(
            id=job_id,
            model_id=spec.model_id,
            dataset=spec.dataset,
            model_type=spec.model_type,
            example_idxs=spec.example_idxs,
            train_opts=spec.train_opts,
            state=JobState.QUEUED.value,
            attempt=0,
            progress=0.0,
            epoch=0,
            metrics=[],
            has_checkpoint=False,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            sweep_id=sweep_id,
            created_at=ts,
            updated_at=ts,
        )
    )


def _with_gang() -> Any:
    """Job rows with the gang size they asked for (``workers`` null: one worker)."""
    return select(db.jobs, db.gangs.c.workers, db.gangs.c.min_workers).select_from(
        db.jobs.outerjoin(db.gangs, db.gangs.c.job_id == db.jobs.c.id)
    )


class JobStore:
    """Jobs in the database. Every method is one transaction and safe across controllers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- submission and reads -------------------------------------------------------------

    def submit(self, spec: JobSpec, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Insert a queued job; return ``(job, created)``.

        The same ``idempotency_key`` with the same request returns the first job
        (``created=False``); with a different request it raises ``Unprocessable``. A
        ``model_id`` in use by another job or model raises ``Conflict``.
        """
        fingerprint = spec.fingerprint()
        if idempotency_key is not None:
            existing = self._by_idempotency_key(idempotency_key)
            if existing is not None:
                return self._check_replay(existing, idempotency_key, fingerprint), False
        job_id = new_job_id()
        try:
            with self.engine.begin() as conn:
                insert_job(
                    conn, job_id, spec, idempotency_key=idempotency_key, request_hash=fingerprint
                )
                if spec.workers > 1:
                    add_gang(conn, job_id, spec.workers, spec.min_workers or spec.workers)
        except IntegrityError:
            # Either the key raced with an identical submission, or the model id is taken.
            if idempotency_key is not None:
                existing = self._by_idempotency_key(idempotency_key)
                if existing is not None:
                    return self._check_replay(existing, idempotency_key, fingerprint), False
            raise model_id_taken(spec.model_id) from None
        return self.get(job_id), True

    def _by_idempotency_key(self, key: str) -> Mapping[str, Any] | None:
        with self.engine.begin() as conn:
            row = conn.execute(_with_gang().where(db.jobs.c.idempotency_key == key)).first()
        return None if row is None else dict(row._mapping)

    def _check_replay(self, row: Mapping[str, Any], key: str, fingerprint: str) -> Job:
        if row["request_hash"] != fingerprint:
            raise Unprocessable(
                f"Idempotency-Key {key!r} was already used with a different request body",
                field="Idempotency-Key",
            )
        return Job.from_row(row)

    def get(self, job_id: str) -> Job:
        """The job, or ``NotFound``."""
        with self.engine.begin() as conn:
            row = conn.execute(_with_gang().where(db.jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"no job with id {job_id!r}", field="job_id")
        return Job.from_row(dict(row._mapping))

    def list_jobs(
        self, state: JobState | None = None, limit: int = 1000, *, oldest: bool = False
    ) -> list[Job]:
        """Jobs in submission order, optionally of one state: the newest ``limit`` of them,
        or with ``oldest`` the oldest ``limit`` (the front of the queue)."""
        order = db.jobs.c.seq if oldest else db.jobs.c.seq.desc()
        query = _with_gang().order_by(order).limit(limit)
        if state is not None:
            query = query.where(db.jobs.c.state == state.value)
        with self.engine.begin() as conn:
            jobs = [Job.from_row(dict(r._mapping)) for r in conn.execute(query)]
        return jobs if oldest else jobs[::-1]

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        """The job's attempts, oldest first: trainer, start, end, how and why it ended, and the
        attempt whose checkpoint it resumed from (``cnnswarm.store.attempts``)."""
        with self.engine.begin() as conn:
            return attempts_of(conn, job_id)

    def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (every state listed)."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(db.jobs.c.state, func.count()).group_by(db.jobs.c.state)
            ).all()
        counts = {state.value: 0 for state in JobState}
        counts.update({str(state): int(count) for state, count in rows})
        return counts

    def queue_positions(self, jobs: Sequence[Job]) -> dict[str, int]:
        """For each queued job of ``jobs``, how many queued jobs will be dispatched before it.

        Two queries however many jobs; a listing, whose jobs are adjacent in submission
        order, reads no more rows than it lists.
        """
        seqs = sorted(job.seq for job in jobs if job.state == JobState.QUEUED)
        if not seqs:
            return {}
        queued = db.jobs.c.state == JobState.QUEUED.value
        with self.engine.begin() as conn:
            before = conn.execute(
                select(func.count()).select_from(db.jobs).where(queued, db.jobs.c.seq < seqs[0])
            ).scalar_one()
            among = conn.execute(
                select(db.jobs.c.seq)
                .where(queued, db.jobs.c.seq.between(seqs[0], seqs[-1]))
                .order_by(db.jobs.c.seq)
            ).scalars()
            queued_seqs = list(among)
        return {
            job.id: int(before) + bisect_left(queued_seqs, job.seq)
            for job in jobs
            if job.state == JobState.QUEUED
        }

    def running_per_trainer(self) -> dict[str, int]:
        """Running jobs now, per trainer id (what the scheduler balances on)."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(db.jobs.c.trainer_id, func.count())
                .where(db.jobs.c.state == JobState.RUNNING.value)
                .group_by(db.jobs.c.trainer_id)
            ).all()
        return {str(trainer): int(count) for trainer, count in rows if trainer is not None}

    # -- scheduling -----------------------------------------------------------------------

    def claim(self, job: Job, trainer_id: str, lease_s: float) -> Job | None:
        """queued -> running on ``trainer_id`` with ``attempt + 1``; None if the job moved."""
        ts = db.now()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(db.jobs)
                .where(
                    db.jobs.c.id == job.id,
                    db.jobs.c.state == JobState.QUEUED.value,
                    db.jobs.c.attempt == job.attempt,
                )
                .values(
                    state=JobState.RUNNING.value,
                    attempt=job.attempt + 1,
                    trainer_id=trainer_id,
                    lease_expires_at=ts + lease_s,
                    started_at=func.coalesce(db.jobs.c.started_at, ts),
                    error=None,
                    updated_at=ts,
                )
            )
            if result.rowcount == 1:
                open_attempt(conn, job.id, job.attempt + 1, trainer_id, ts)
        return self.get(job.id) if result.rowcount == 1 else None

    def unclaim(self, job: Job) -> bool:
        """Undo a ``claim`` whose dispatch failed (the trainer never got the job)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(db.jobs)
                .where(
                    db.jobs.c.id == job.id,
                    db.jobs.c.state == JobState.RUNNING.value,
                    db.jobs.c.attempt == job.attempt,
                    db.jobs.c.trainer_id == job.trainer_id,
                )
                .values(
                    state=JobState.QUEUED.value,
                    attempt=job.attempt - 1,
                    trainer_id=None,
                    lease_expires_at=None,
                    updated_at=db.now(),
                )
            )
            if result.rowcount == 1:
                drop_attempt(conn, job.id, job.attempt)
        return result.rowcount == 1

    def renew(
        self,
        job_id: str,
        attempt: int,
        trainer_id: str,
        lease_s: float,
        *,
        progress: float | None = None,
        epoch: int | None = None,
        metrics: list[dict[str, Any]] | None = None,
    ) -> str | None:
        """Renew the lease of a job a trainer reports, recording the progress it reports
        (None: not reported, left as it is).

        Returns None when the trainer still owns the job, else the reason it must drop it.
        """
        ts = db.now()
        reported = {"progress": progress, "epoch": epoch, "metrics": metrics}
        values: dict[str, Any] = {"lease_expires_at": ts + lease_s, "updated_at": ts}
        values.update({name: value for name, value in reported.items() if value is not None})
        with self.engine.begin() as conn:
            result = conn.execute(
                update(db.jobs)
                .where(
                    db.jobs.c.id == job_id,
                    db.jobs.c.state == JobState.RUNNING.value,
                    db.jobs.c.attempt == attempt,
                    db.jobs.c.trainer_id == trainer_id,
                )
                .values(**values)
            )
            if result.rowcount == 1:
                return None
            row = conn.execute(
                select(db.jobs.c.state, db.jobs.c.attempt).where(db.jobs.c.id == job_id)
            ).first()
        if row is None:
            return "unknown job"
        if row.state != JobState.RUNNING.value:
            return f"job is {row.state}"
        return f"attempt {attempt} is stale (the job is on attempt {row.attempt})"

    def expire_leases(self, max_attempts: int) -> list[Job]:
        """Requeue (or fail, past ``max_attempts``) running jobs whose lease has expired."""
        ts = db.now()
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(db.jobs).where(
                    db.jobs.c.state == JobState.RUNNING.value, db.jobs.c.lease_expires_at < ts
                )
            ).all()
        changed: list[Job] = []
        for row in rows:
            job = Job.from_row(dict(row._mapping))
            reason = f"trainer {job.trainer_id} stopped renewing the lease of attempt {job.attempt}"
            ended = self.end_lost_attempt(job, reason, max_attempts)
            if ended is not None:
                changed.append(ended)
        return changed

    def end_lost_attempt(self, job: Job, reason: str, max_attempts: int) -> Job | None:
        """End ``job``'s running attempt, lost for ``reason``: requeue it, or fail it past
        ``max_attempts``. None if the attempt had already moved on."""
        ts = db.now()
        if job.attempt >= max_attempts:
            values: dict[str, Any] = {
                "state": JobState.FAILED.value,
                "error": f"{reason}; retry limit of {max_attempts} attempts reached",
                "finished_at": ts,
            }
        else:
            values = {"state": JobState.QUEUED.value, "error": f"{reason}; requeued"}
        with self.engine.begin() as conn:
            result = conn.execute(
                update(db.jobs)
                .where(
                    db.jobs.c.id == job.id,
                    db.jobs.c.state == JobState.RUNNING.value,
                    db.jobs.c.attempt == job.attempt,
                )
                .values(trainer_id=None, lease_expires_at=None, updated_at=ts, **values)
            )
            if result.rowcount == 1:
                close_attempt(conn, job.id, job.attempt, AttemptEnd.LEASE_LOST, reason, ts)
            if result.rowcount == 1 and values["state"] == JobState.FAILED.value:
                self._release_model_id(conn, job)
        return self.get(job.id) if result.rowcount == 1 else None

    def grant_grace(self, lease_s: float) -> int:
        """Give every running job a fresh lease (a new leader after downtime does this, so
        trainers can re-attach before anything is requeued). Returns how many."""
        ts = db.now()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(db.jobs)
                .where(db.jobs.c.state == JobState.RUNNING.value)
                .values(lease_expires_at=ts + lease_s)
            )
        return int(result.rowcount)

    # -- trainer writes (fenced by attempt) -----------------------------------------------

    def check_owner(self, job_id: str, attempt: int) -> Job:
        """The job if ``attempt`` owns it and it is running, else ``StaleAttempt``."""
        job = self.get(job_id)
        if job.state != JobState.RUNNING or job.attempt != attempt:
            raise StaleAttempt(
                f"attempt {attempt} of job {job_id} no longer owns it "
                f"(state {job.state.value}, attempt {job.attempt})",
                field="attempt",
            )
        return job

    def mark_checkpoint(self, job_id: str, attempt: int) -> None:
        """Record that ``attempt`` stored a checkpoint; ``StaleAttempt`` if it is fenced off."""
        with self.engine.begin() as conn:
            result = conn.execute(
                self._fenced(job_id, attempt).values(updated_at=db.now(), has_checkpoint=True)
            )
            if result.rowcount == 1:
                mark_checkpointed(conn, job_id, attempt)
        if result.rowcount != 1:
            raise self._stale(job_id, attempt)

    def complete(self, job_id: str, attempt: int, model_row: Mapping[str, Any]) -> Job:
        """running -> succeeded and publish ``model_row`` in one transaction (fenced)."""
        ts = db.now()
        with self.engine.begin() as conn:
            result = conn.execute(
                self._fenced(job_id, attempt).values(
                    state=JobState.SUCCEEDED.value,
                    progress=1.0,
                    finished_at=ts,
                    lease_expires_at=None,
                    updated_at=ts,
                    error=None,
                    metrics=model_row.get("metrics", []),
                )
            )
            owned = result.rowcount == 1
            if owned:
                insert_model(conn, model_row, ts)
                close_attempt(conn, job_id, attempt, AttemptEnd.SUCCEEDED, None, ts)
        if not owned:
            raise self._stale(job_id, attempt)
        return self.get(job_id)

    def fail(
        self, job_id: str, attempt: int, error: str, *, retry_within: int | None = None
    ) -> Job:
        """running -> failed with ``error`` (fenced); the model id is freed for reuse.

        With ``retry_within`` (a retryable failure such as a job process killed by a signal),
        the job is requeued instead while ``attempt < retry_within``.
        """
        ts = db.now()
        job = self.get(job_id)
        requeue = retry_within is not None and attempt < retry_within
        values: dict[str, Any] = (
            {
                "state": JobState.QUEUED.value,
                "error": f"{error[:3900]}; requeued",
                "trainer_id": None,
            }
            if requeue
            else {"state": JobState.FAILED.value, "error": error[:4000], "finished_at": ts}
        )
        with self.engine.begin() as conn:
            result = conn.execute(
                self._fenced(job_id, attempt).values(lease_expires_at=None, updated_at=ts, **values)
            )
            owned = result.rowcount == 1
            if owned:
                end = AttemptEnd.TRAINER_FAILURE if requeue else AttemptEnd.FAILED
                close_attempt(conn, job_id, attempt, end, error, ts)
            if owned and not requeue:
                self._release_model_id(conn, job)
        if not owned:
            raise self._stale(job_id, attempt)
        return self.get(job_id)

    def cancel(self, job_id: str, reason: str | None = None) -> tuple[Job, str | None]:
        """queued|running -> cancelled, recording ``reason`` as its error (a sweep's pruned
        trial: ``pruned``); returns the job and the trainer that ran it.

        Cancelling an already cancelled job is a no-op; a finished one raises ``Conflict``.
        """
        job = self.get(job_id)
        if job.state == JobState.CANCELLED:
            return job, None
        if job.state.is_final:
            raise Conflict(f"job {job_id} already {job.state.value}; it cannot be cancelled")
        ts = db.now()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(db.jobs)
                .where(
                    db.jobs.c.id == job_id,
                    db.jobs.c.state == job.state.value,
                    db.jobs.c.attempt == job.attempt,
                )
                .values(
                    state=JobState.CANCELLED.value,
                    error=db.jobs.c.error if reason is None else reason,
                    finished_at=ts,
                    lease_expires_at=None,
                    updated_at=ts,
                )
            )
            if result.rowcount == 1:
                self._release_model_id(conn, job)
            if result.rowcount == 1 and job.state == JobState.RUNNING:
                why = reason or "cancelled by a client"
                close_attempt(conn, job_id, job.attempt, AttemptEnd.CANCELLED, why, ts)
        if result.rowcount != 1:
            return self.cancel(job_id, reason)  # it moved meanwhile: decide again on its new state
        return self.get(job_id), job.trainer_id

    # -- helpers --------------------------------------------------------------------------

    def _fenced(self, job_id: str, attempt: int) -> Any:
        return update(db.jobs).where(
            db.jobs.c.id == job_id,
            db.jobs.c.state == JobState.RUNNING.value,
            db.jobs.c.attempt == attempt,
        )

    def _stale(self, job_id: str, attempt: int) -> StaleAttempt | NotFound:
        try:
            job = self.get(job_id)
        except NotFound as exc:
            return exc
        return StaleAttempt(
            f"attempt {attempt} of job {job_id} no longer owns it "
            f"(state {job.state.value}, attempt {job.attempt})",
            field="attempt",
        )

    @staticmethod
    def _release_model_id(conn: Any, job: Job) -> None:
        from sqlalchemy import delete

        conn.execute(
            delete(db.model_ids).where(
                db.model_ids.c.model_id == job.model_id, db.model_ids.c.job_id == job.id
            )
        )
