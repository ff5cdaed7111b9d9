"""Data-parallel jobs in the database: the gang a job asks for and each attempt's members.

A job with ``workers > 1`` has a ``gangs`` row (no row: one worker). Each attempt of it runs on
a gang: rank 0 is the job row's own ``trainer_id`` and lease (``JobStore``: it reports
progress, checkpoints and publishes); ranks 1.. are ``gang_members`` rows, each with its own
lease that its trainer's heartbeats renew. Guarantees:

- a member row belongs to one ``(job, attempt)``: once the attempt has ended (requeued, failed,
  cancelled, succeeded) its members own nothing, renewals are refused and they are told to stop;
- a member's lease is renewed only while its attempt is the job's running attempt, so a
  member that stops renewing (killed, partitioned) shows up in ``lost_members`` and the
  scheduler ends the attempt for the whole gang (``JobStore.end_lost_attempt``);
- ``grant_grace`` renews every running member, as ``JobStore.grant_grace`` does for rank 0, so
  a controller restart never splits a gang: its members re-attach together or the attempt ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, select, union_all, update

from cnnswarm.store import db
from cnnswarm.store.job_records import Job, JobState


@dataclass(frozen=True)
class GangSize:
    """How many trainers a job runs on: ``workers`` for its first attempt; a resumed attempt
    may take fewer, down to ``min_workers``."""

    workers: int
    min_workers: int

    @classmethod
    def of(cls, job: Job) -> GangSize | None:
        """The gang ``job`` asks for; None for a one-worker job."""
        if job.workers <= 1:
            return None
        return cls(job.workers, job.min_workers or job.workers)

    def needed(self, *, resumed: bool) -> int:
        """The fewest trainers the next attempt starts on."""
        return self.min_workers if resumed else self.workers

    def world_size(self, free_trainers: int, *, resumed: bool) -> int | None:
        """The gang to start now with ``free_trainers`` free, or None: wait."""
        size = min(self.workers, free_trainers)
        return size if size >= self.needed(resumed=resumed) else None


@dataclass(frozen=True)
class GangMember:
    """One rank of an attempt (rank 0 is the job's own trainer)."""

    job_id: str
    attempt: int
    rank: int
    trainer_id: str


def add_gang(conn: Any, job_id: str, workers: int, min_workers: int) -> None:
    """Record (inside the caller's submit transaction) that ``job_id`` asks for a gang."""
    conn.execute(insert(db.gangs).values(job_id=job_id, workers=workers, min_workers=min_workers))


def _running_attempt() -> Any:
    """Members whose attempt is their job's running attempt."""
    return and_(
        db.jobs.c.id == db.gang_members.c.job_id,
        db.jobs.c.attempt == db.gang_members.c.attempt,
        db.jobs.c.state == JobState.RUNNING.value,
    )


class GangStore:
    """Gang sizes and members. Every method is one transaction and safe across controllers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add_members(
        self, job_id: str, attempt: int, trainer_ids: Sequence[str], lease_s: float
    ) -> None:
        """Record ranks 1.. of a claimed attempt (``trainer_ids[0]`` is rank 0, the job's
        own trainer; it gets a row too, so a listing shows the whole gang)."""
        expires = db.now() + lease_s
        with self.engine.begin() as conn:
            conn.execute(
                insert(db.gang_members),
                [
                    {
                        "job_id": job_id,
                        "attempt": attempt,
                        "rank": rank,
                        "trainer_id": trainer_id,
                        "lease_expires_at": expires,
                    }
                    for rank, trainer_id in enumerate(trainer_ids)
                ],
            )

    def remove_members(self, job_id: str, attempt: int) -> None:
        """Forget an attempt's members (its claim was undone: nobody runs it)."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(db.gang_members).where(
                    db.gang_members.c.job_id == job_id, db.gang_members.c.attempt == attempt
                )
            )

    def members(self, job_id: str, attempt: int) -> list[GangMember]:
        """Every rank of one attempt (running or not), in rank order; [] for a one-worker job."""
        query = (
            select(db.gang_members)
            .where(db.gang_members.c.job_id == job_id, db.gang_members.c.attempt == attempt)
            .order_by(db.gang_members.c.rank)
        )
        with self.engine.begin() as conn:
            rows = conn.execute(query).all()
        return [GangMember(row.job_id, row.attempt, row.rank, row.trainer_id) for row in rows]

    def renew_member(self, job_id: str, attempt: int, trainer_id: str, lease_s: float) -> bool:
        """Renew the lease of a rank > 0 that ``trainer_id`` reports; False when it is not a
        member of the job's running attempt (it must stop)."""
        member = and_(
            db.gang_members.c.job_id == job_id,
            db.gang_members.c.attempt == attempt,
            db.gang_members.c.trainer_id == trainer_id,
            db.gang_members.c.rank > 0,
        )
        running = (
            select(db.jobs.c.id)
            .where(
                db.jobs.c.id == job_id,
                db.jobs.c.attempt == attempt,
                db.jobs.c.state == JobState.RUNNING.value,
            )
            .exists()
        )
        with self.engine.begin() as conn:
            result = conn.execute(
                update(db.gang_members)
                .where(member, running)
                .values(lease_expires_at=db.now() + lease_s)
            )
        return result.rowcount == 1

    def slots_taken_per_trainer(self) -> dict[str, int]:
        """Slots taken now, per trainer: running jobs (rank 0 of a gang included) plus the
        ranks > 0 of running gangs (one query; what the scheduler balances on)."""
        rank0 = select(db.jobs.c.trainer_id.label("trainer_id")).where(
            db.jobs.c.state == JobState.RUNNING.value, db.jobs.c.trainer_id.is_not(None)
        )
        others = (
            select(db.gang_members.c.trainer_id.label("trainer_id"))
            .select_from(db.gang_members.join(db.jobs, _running_attempt()))
            .where(db.gang_members.c.rank > 0)
        )
        taken = union_all(rank0, others).subquery()
        query = select(taken.c.trainer_id, func.count()).group_by(taken.c.trainer_id)
        with self.engine.begin() as conn:
            rows = conn.execute(query).all()
        return {str(trainer): int(count) for trainer, count in rows}

    def running_gangs(self) -> dict[str, list[GangMember]]:
        """Every rank (0 included) of every running attempt, by job id, in rank order."""
        query = (
            select(db.gang_members)
            .select_from(db.gang_members.join(db.jobs, _running_attempt()))
            .order_by(db.gang_members.c.job_id, db.gang_members.c.rank)
        )
        with self.engine.begin() as conn:
            rows = conn.execute(query).all()
        gangs: dict[str, list[GangMember]] = {}
        for row in rows:
            gangs.setdefault(row.job_id, []).append(
                GangMember(row.job_id, row.attempt, row.rank, row.trainer_id)
            )
        return gangs

    def lost_members(self) -> list[GangMember]:
        """Ranks > 0 of running attempts whose lease has expired."""
        query = (
            select(db.gang_members)
            .select_from(db.gang_members.join(db.jobs, _running_attempt()))
            .where(db.gang_members.c.rank > 0, db.gang_members.c.lease_expires_at < db.now())
        )
        with self.engine.begin() as conn:
            rows = conn.execute(query).all()
        return [GangMember(row.job_id, row.attempt, row.rank, row.trainer_id) for row in rows]

    def grant_grace(self, lease_s: float) -> int:
        """A fresh lease for every member of a running attempt (a new leader does this with
        ``JobStore.grant_grace``). Returns how many."""
        running = (
            select(db.jobs.c.id)
            .where(
                db.jobs.c.id == db.gang_members.c.job_id,
                db.jobs.c.attempt == db.gang_members.c.attempt,
                db.jobs.c.state == JobState.RUNNING.value,
            )
            .exists()
        )
        with self.engine.begin() as conn:
            result = conn.execute(
                update(db.gang_members).where(running).values(lease_expires_at=db.now() + lease_s)
            )
        return int(result.rowcount)
