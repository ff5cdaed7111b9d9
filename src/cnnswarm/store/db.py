"""The job store's schema and engine: the only state controllers share.

SQLite (the embedded default) and PostgreSQL run the same SQLAlchemy Core code. Every state
change is one transaction whose ``UPDATE ... WHERE`` names the state and attempt it expects
(compare-and-set), so concurrent controllers and stale trainers cannot overwrite each other.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
)

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("seq", Integer, nullable=False, index=True),  # FIFO order of submission
    Column("model_id", String(128), nullable=False),
    Column("dataset", String(128), nullable=False),
    Column("model_type", String(64), nullable=False),
    Column("example_idxs", JSON, nullable=True),
    Column("train_opts", JSON, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("attempt", Integer, nullable=False, default=0),
    Column("trainer_id", String(128), nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("progress", Float, nullable=False, default=0.0),
    Column("epoch", Integer, nullable=False, default=0),
    Column("metrics", JSON, nullable=False),
    Column("error", Text, nullable=True),
    Column("has_checkpoint", Boolean, nullable=False, default=False),
    Column("idempotency_key", String(200), nullable=True, unique=True),
    Column("request_hash", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
)

# One row per model id in use (by a live job or a published model): the database, not a
# check-then-write, enforces that two jobs never publish under the same id.
model_ids = Table(
    "model_ids",
    metadata,
    Column("model_id", String(128), primary_key=True),
    Column("job_id", String(64), nullable=True),
)

models = Table(
    "models",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("job_id", String(64), nullable=True),
    Column("model_type", String(64), nullable=False),
    Column("dataset", String(128), nullable=False),
    Column("classes", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("train_opts", JSON, nullable=False),
    Column("example_idxs", JSON, nullable=True),
    Column("preprocessing", JSON, nullable=False),
    Column("filename", String(300), nullable=False),
    Column("created_at", Float, nullable=False),
)

aliases = Table(
    "aliases",
    metadata,
    Column("alias", String(128), primary_key=True),
    Column("model_id", String(128), nullable=False),
    Column("updated_at", Float, nullable=False),
)

datasets = Table(
    "datasets",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("classes", JSON, nullable=False),
    Column("num_train", Integer, nullable=False),
    Column("num_test", Integer, nullable=False),
    Column("shape", JSON, nullable=False),
    Column("filename", String(300), nullable=False),
    Column("created_at", Float, nullable=False),
)

trainers = Table(
    "trainers",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("url", String(300), nullable=False),
    Column("slots", Integer, nullable=False),
    Column("running", JSON, nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_heartbeat", Float, nullable=False),
)

# The scheduler's leader lease: exactly one controller schedules at a time.
leader = Table(
    "leader",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", Float, nullable=False),
)


def now() -> float:
    """Wall-clock seconds; every timestamp in the store uses it."""
    return time.time()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and immediate transactions."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, issue BEGIN, so we can make it IMMEDIATE: a read
            # followed by a write in one transaction then never fails to upgrade its lock.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def create_schema(engine: Engine) -> None:
    """Create missing tables (idempotent; safe for several controllers starting at once)."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    try:
        metadata.create_all(engine)
    except (IntegrityError, OperationalError, ProgrammingError):
        # Another controller created them at the same moment; check they are there now.
        metadata.create_all(engine)
