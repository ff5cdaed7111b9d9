"""The job store's schema and engine: the only state controllers share.

SQLite (the embedded default) and PostgreSQL run the same SQLAlchemy Core code. Every state
change is one transaction whose ``UPDATE ... WHERE`` names the state and attempt it expects
(compare-and-set), so concurrent controllers and stale trainers cannot overwrite each other.

``create_schema`` creates what is missing and brings a database of an earlier version up to
date in place (see ``_upgrade_jobs_numbering``); it is idempotent and safe for several
controllers starting at once.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Identity,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
)

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    # FIFO order of submission. The database numbers jobs (an identity column on PostgreSQL,
    # AUTOINCREMENT on SQLite), so concurrent submits never share a number; never reused.
    Column("seq", Integer, Identity(), primary_key=True),
    Column("id", String(64), nullable=False, unique=True),
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
    # The sweep whose trial this job is (null: an ordinary job); see store.sweeps.
    Column("sweep_id", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
    sqlite_autoincrement=True,
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

# One row per attempt of a job, from its claim to its end: the job's attempt history.
# ``resumed_from`` is the attempt whose checkpoint it was dispatched to resume (the latest
# attempt that stored one), null for a start from scratch.
job_attempts = Table(
    "job_attempts",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("trainer_id", String(128), nullable=True),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("outcome", String(32), nullable=True),
    Column("reason", Text, nullable=True),
    Column("resumed_from", Integer, nullable=True),
    Column("checkpointed", Boolean, nullable=False, default=False),
)

# Data-parallel jobs (cnnswarm.store.gangs): the gang size a job asked for (no row: one
# worker), and each attempt's members, rank 0 being the job's own trainer_id and lease.
gangs = Table(
    "gangs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("workers", Integer, nullable=False),
    Column("min_workers", Integer, nullable=False),
)

gang_members = Table(
    "gang_members",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("rank", Integer, primary_key=True),
    Column("trainer_id", String(128), nullable=False, index=True),
    Column("lease_expires_at", Float, nullable=False),
)

# Hyperparameter sweeps (store.sweeps): the request, and one row per trial the leader asked
# Optuna for. (sweep_id, number) is the primary key and the trial's job is inserted in the same
# transaction, so one trial slot can never be asked for twice.
sweeps = Table(
    "sweeps",
    metadata,
    Column("seq", Integer, Identity(), primary_key=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("state", String(16), nullable=False, index=True),
    Column("request", JSON, nullable=False),
    Column("idempotency_key", String(200), nullable=True, unique=True),
    Column("request_hash", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
    sqlite_autoincrement=True,
)

sweep_trials = Table(
    "sweep_trials",
    metadata,
    Column("sweep_id", String(64), primary_key=True),
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("job_id", String(64), nullable=False, unique=True),
    Column("params", JSON, nullable=False),
    Column("system_attrs", JSON, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("value", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("told_at", Float, nullable=True),
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
    """Create missing tables and upgrade older ones (idempotent; safe for several controllers
    starting at once)."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    try:
        metadata.create_all(engine)
    except (IntegrityError, OperationalError, ProgrammingError):
        # Another controller created them at the same moment; check they are there now.
        metadata.create_all(engine)
    _upgrade_jobs_numbering(engine)
    _add_missing_nullable_columns(engine, jobs)


def _jobs_numbered_by_controller(conn: Connection) -> bool:
    """True for a jobs table of the first version: keyed by ``id``, ``seq`` a plain column."""
    return inspect(conn).get_pk_constraint("jobs")["constrained_columns"] == ["id"]


def _upgrade_jobs_numbering(engine: Engine) -> None:
    """Rebuild a first-version jobs table, whose ``seq`` controllers computed as ``max + 1``
    (two concurrent submits on PostgreSQL could share one), as today's table with ``seq`` the
    database's identity key. Jobs keep their order, renumbered 1..n; one transaction, so a
    crash leaves the old table as it was. A no-op on a current table."""
    with engine.connect() as conn:
        if not _jobs_numbered_by_controller(conn):
            return
    with engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE already excludes other writers
        if conn.dialect.name == "postgresql":
            # Controllers starting together: one rebuilds, the others then find it done.
            conn.exec_driver_sql("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        if not _jobs_numbered_by_controller(conn):
            return
        old = "jobs_v1"
        conn.exec_driver_sql(f"ALTER TABLE jobs RENAME TO {old}")
        # The new table reuses these names (SQLite renames only its unnamed indexes).
        found = inspect(conn)
        for index in found.get_indexes(old):
            if "duplicates_constraint" not in index:
                conn.exec_driver_sql(f"DROP INDEX {index['name']}")
        if conn.dialect.name == "postgresql":
            names = [found.get_pk_constraint(old)["name"]]
            names += [unique["name"] for unique in found.get_unique_constraints(old)]
            for name in names:
                conn.exec_driver_sql(f"ALTER TABLE {old} DROP CONSTRAINT {name}")
        jobs.create(conn)
        columns = ", ".join(column.name for column in jobs.c if column.name != "seq")
        # created_at and id break ties between jobs that shared a number.
        conn.exec_driver_sql(
            f"INSERT INTO jobs (seq, {columns}) SELECT "
            f"row_number() OVER (ORDER BY seq, created_at, id), {columns} FROM {old}"
        )
        if conn.dialect.name == "postgresql":
            # Explicit values do not advance an identity; the next job follows the last copied.
            conn.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('jobs', 'seq'), coalesce(max(seq), 0) + 1,"
                " false) FROM jobs"
            )
        conn.exec_driver_sql(f"DROP TABLE {old}")


def _add_missing_nullable_columns(engine: Engine, table: Table) -> None:
    """Add the nullable columns of ``table`` that a database of an earlier version lacks (such
    as ``jobs.sweep_id``); a no-op on a current table, safe for controllers starting at once."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    with engine.connect() as conn:
        present = {column["name"] for column in inspect(conn).get_columns(table.name)}
    for column in table.c:
        if column.name in present or not column.nullable:
            continue
        kind = column.type.compile(dialect=engine.dialect)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
        except (OperationalError, ProgrammingError):
            # Another controller added it at the same moment; check it is there now.
            with engine.connect() as conn:
                names = {c["name"] for c in inspect(conn).get_columns(table.name)}
            if column.name not in names:
                raise
