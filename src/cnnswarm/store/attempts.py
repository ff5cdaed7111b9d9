"""A job's attempt history: one ``job_attempts`` row per attempt, from its claim to its end.

Every function takes the connection of the job transition it records (``cnnswarm.store.jobs``),
so an attempt's row changes in the same transaction as the job's state: the history never
disagrees with the job. An attempt whose dispatch was undone (the trainer refused it) leaves no
row: its number is given again.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from cnnswarm.store import db


class AttemptEnd(StrEnum):
    """How an attempt ended."""

    SUCCEEDED = "succeeded"  # it published the job's model
    FAILED = "failed"  # its trainer reported an error that retrying cannot fix: the job failed
    TRAINER_FAILURE = "trainer_failure"  # its process died (killed, OOM): the job was requeued
    LEASE_LOST = "lease_lost"  # its trainer stopped renewing the lease (lost, partitioned)
    CANCELLED = "cancelled"  # a client cancelled the job


def open_attempt(conn: Connection, job_id: str, attempt: int, trainer_id: str, at: float) -> None:
    """Record that ``attempt`` was claimed for ``trainer_id``, resuming from the latest attempt
    that stored a checkpoint (if any)."""
    resumed_from = conn.execute(
        select(func.max(db.job_attempts.c.attempt)).where(
            db.job_attempts.c.job_id == job_id, db.job_attempts.c.checkpointed.is_(True)
        )
    ).scalar()
    conn.execute(
        insert(db.job_attempts).values(
            job_id=job_id,
            attempt=attempt,
            trainer_id=trainer_id,
            started_at=at,
            resumed_from=resumed_from,
            checkpointed=False,
        )
    )


def drop_attempt(conn: Connection, job_id: str, attempt: int) -> None:
    """Forget an attempt whose dispatch was undone."""
    conn.execute(
        delete(db.job_attempts).where(
            db.job_attempts.c.job_id == job_id, db.job_attempts.c.attempt == attempt
        )
    )


def mark_checkpointed(conn: Connection, job_id: str, attempt: int) -> None:
    """Record that ``attempt`` stored a checkpoint (a later attempt resumes from it)."""
    conn.execute(
        update(db.job_attempts)
        .where(db.job_attempts.c.job_id == job_id, db.job_attempts.c.attempt == attempt)
        .values(checkpointed=True)
    )


def close_attempt(
    conn: Connection, job_id: str, attempt: int, outcome: AttemptEnd, reason: str | None, at: float
) -> None:
    """Record how ``attempt`` ended (once: an attempt already closed keeps its end)."""
    conn.execute(
        update(db.job_attempts)
        .where(
            db.job_attempts.c.job_id == job_id,
            db.job_attempts.c.attempt == attempt,
            db.job_attempts.c.ended_at.is_(None),
        )
        .values(
            ended_at=at, outcome=outcome.value, reason=None if reason is None else reason[:1000]
        )
    )


def attempts_of(conn: Connection, job_id: str) -> list[dict[str, Any]]:
    """The job's attempts, oldest first, as the API shows them."""
    rows = conn.execute(
        select(db.job_attempts)
        .where(db.job_attempts.c.job_id == job_id)
        .order_by(db.job_attempts.c.attempt)
    ).all()
    return [
        {
            "attempt": row.attempt,
            "trainer": row.trainer_id,
            "started_at": row.started_at,
            "ended_at": row.ended_at,
            "outcome": row.outcome,
            "reason": row.reason,
            "resumed_from_attempt": row.resumed_from,
            "checkpointed": bool(row.checkpointed),
        }
        for row in rows
    ]
