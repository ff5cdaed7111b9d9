"""Helpers for tests that reach under the job store: rows written straight into the ``jobs``
table (a thousand queued jobs in one statement, a table of an earlier version) and a count of
the SQL statements a block of code runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event, insert

from cnnswarm.store import db


def job_row(job_id: str, **columns: Any) -> dict[str, Any]:
    """A queued job's row for ``db.jobs`` (the database numbers it); ``columns`` override."""
    ts = time.time()
    row: dict[str, Any] = {
        "id": job_id,
        "model_id": f"model-{job_id}",
        "dataset": "digits",
        "model_type": "SmallConvNet",
        "train_opts": {},
        "state": "queued",
        "attempt": 0,
        "progress": 0.0,
        "epoch": 0,
        "metrics": [],
        "has_checkpoint": False,
        "created_at": ts,
        "updated_at": ts,
    }
    row.update(columns)
    return row


def queue_jobs(engine: Engine, count: int, first: int = 0) -> None:
    """``count`` queued jobs in one statement (submitting a thousand one by one takes long)."""
    rows = [job_row(f"job-bulk{index:06d}") for index in range(first, first + count)]
    with engine.begin() as conn:
        conn.execute(insert(db.jobs), rows)


@contextmanager
def counting_statements(engine: Engine) -> Iterator[list[str]]:
    """Collects the SQL statements ``engine`` sends inside the block (BEGIN included)."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)
