"""Hyperparameter sweeps in the database: the request, and one row per trial.

Lifecycle of a sweep::

    running --every trial told--> succeeded   (at least one trial succeeded; else failed)
       \\--cancel--------------> cancelled    (its live trials' jobs are cancelled too)

and of a trial (a row of ``sweep_trials``, whose job is an ordinary job)::

    running --its job ends--> succeeded | pruned | failed | cancelled   ("told")

Guarantees, each enforced by the database rather than by a check-then-write:

- **A trial slot is asked for once.** ``(sweep_id, number)`` is the primary key and the
  trial's job is inserted in the same transaction (``add_trial``): a second asker of the same
  slot (a stale leader) inserts nothing, neither row nor job.
- **A result is told once.** ``tell`` is a compare-and-set ``running -> outcome``; only the
  caller whose update matched a row acts on it (moves the best-model alias).
- An accepted sweep survives any crash (committed before 202); one ``Idempotency-Key`` makes
  one sweep.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, exists, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from cnnswarm.errors import Conflict, NotFound, Unprocessable
from cnnswarm.store import db
from cnnswarm.store.job_records import Job, JobSpec, new_job_id
from cnnswarm.store.jobs import insert_job


class SweepState(StrEnum):
    """A sweep's state (the lifecycle above)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TrialState(StrEnum):
    """A trial's state: running until its job ends, then what the job's end means."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PRUNED = "pruned"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The reason a pruned trial's job is cancelled with (job.error), so its end reads as pruned.
PRUNED_REASON = "pruned"


@dataclass(frozen=True)
class Sweep:
    """One row of ``sweeps``; ``request`` is the validated request (seed and defaults filled)."""

    id: str
    state: SweepState
    request: dict[str, Any]
    created_at: float
    finished_at: float | None
    updated_at: float

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Sweep:
        return cls(
            id=row["id"],
            state=SweepState(row["state"]),
            request=row["request"],
            created_at=row["created_at"],
            finished_at=row["finished_at"],
            updated_at=row["updated_at"],
        )

    @property
    def metric(self) -> str:
        return str(self.request["metric"])

    @property
    def maximize(self) -> bool:
        return bool(self.request["direction"] == "maximize")


@dataclass(frozen=True)
class Trial:
    """One row of ``sweep_trials`` with its job."""

    sweep_id: str
    number: int
    params: dict[str, Any]
    system_attrs: dict[str, Any]
    state: TrialState
    value: float | None
    created_at: float
    told_at: float | None
    job: Job

    def curve(self, metric: str) -> list[float]:
        """The trial's ``metric`` at each epoch its job reported, in order."""
        return [float(m[metric]) for m in self.job.metrics if m.get(metric) is not None]


def new_sweep_id() -> str:
    """A fresh, URL-safe sweep id."""
    return "sweep-" + uuid.uuid4().hex[:16]


def best_model_alias(sweep_id: str) -> str:
    """The alias that follows the best succeeded trial's model."""
    return f"{sweep_id}-best"


def trial_model_id(sweep_id: str, number: int) -> str:
    """The model id a trial's job publishes under."""
    return f"{sweep_id}-t{number}"


def fingerprint(request: Mapping[str, Any]) -> str:
    """A hash of a request, to tell an idempotent retry from a different request."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


class SweepStore:
    """Sweeps and their trials. Every method is one transaction and safe across controllers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- submission and reads -------------------------------------------------------------

    def submit(
        self,
        request: Mapping[str, Any],
        *,
        request_hash: str,
        idempotency_key: str | None = None,
    ) -> tuple[Sweep, bool]:
        """Insert a running sweep; return ``(sweep, created)``. The same key with the same
        ``request_hash`` returns the first sweep; with another, ``Unprocessable``."""
        if idempotency_key is not None:
            existing = self._replay(idempotency_key, request_hash)
            if existing is not None:
                return existing, False
        sweep_id = new_sweep_id()
        ts = db.now()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(db.sweeps).values(
                        id=sweep_id,
                        state=SweepState.RUNNING.value,
                        request=dict(request),
                        idempotency_key=idempotency_key,
                        request_hash=request_hash,
                        created_at=ts,
                        updated_at=ts,
                    )
                )
        except IntegrityError:
            existing = self._replay(idempotency_key, request_hash) if idempotency_key else None
            if existing is None:
                raise
            return existing, False
        return self.get(sweep_id), True

    def _replay(self, key: str, request_hash: str) -> Sweep | None:
        with self.engine.begin() as conn:
            row = conn.execute(select(db.sweeps).where(db.sweeps.c.idempotency_key == key)).first()
        if row is None:
            return None
        if row.request_hash != request_hash:
            raise Unprocessable(
                f"Idempotency-Key {key!r} was already used with a different request body",
                field="Idempotency-Key",
            )
        return Sweep.from_row(dict(row._mapping))

    def get(self, sweep_id: str) -> Sweep:
        """The sweep, or ``NotFound``."""
        with self.engine.begin() as conn:
            row = conn.execute(select(db.sweeps).where(db.sweeps.c.id == sweep_id)).first()
        if row is None:
            raise NotFound(f"no sweep with id {sweep_id!r}", field="sweep_id")
        return Sweep.from_row(dict(row._mapping))

    def list_sweeps(self, limit: int = 1000) -> list[Sweep]:
        """The newest ``limit`` sweeps, oldest first."""
        query = select(db.sweeps).order_by(db.sweeps.c.seq.desc()).limit(limit)
        with self.engine.begin() as conn:
            sweeps = [Sweep.from_row(dict(r._mapping)) for r in conn.execute(query)]
        return sweeps[::-1]

    def open_sweeps(self) -> list[Sweep]:
        """Sweeps the leader still has work on: running ones, and any with a trial not told."""
        untold = exists().where(
            db.sweep_trials.c.sweep_id == db.sweeps.c.id,
            db.sweep_trials.c.state == TrialState.RUNNING.value,
        )
        query = (
            select(db.sweeps)
            .where(or_(db.sweeps.c.state == SweepState.RUNNING.value, untold))
            .order_by(db.sweeps.c.seq)
        )
        with self.engine.begin() as conn:
            return [Sweep.from_row(dict(r._mapping)) for r in conn.execute(query)]

    def trials(self, sweep_ids: Sequence[str]) -> dict[str, list[Trial]]:
        """The trials of each sweep, by number, each with its job (one query)."""
        trials: dict[str, list[Trial]] = {sweep_id: [] for sweep_id in sweep_ids}
        if not trials:
            return trials
        t = db.sweep_trials
        query = (
            select(t, db.jobs)
            .join(db.jobs, db.jobs.c.id == t.c.job_id)
            .where(t.c.sweep_id.in_(list(trials)))
            .order_by(t.c.sweep_id, t.c.number)
        )
        with self.engine.begin() as conn:
            rows = conn.execute(query).all()
        for row in rows:
            mapping = row._mapping
            job = Job.from_row({c.name: mapping[db.jobs.c[c.name]] for c in db.jobs.c})
            trials[mapping[t.c.sweep_id]].append(
                Trial(
                    sweep_id=mapping[t.c.sweep_id],
                    number=mapping[t.c.number],
                    params=mapping[t.c.params],
                    system_attrs=mapping[t.c.system_attrs] or {},
                    state=TrialState(mapping[t.c.state]),
                    value=mapping[t.c.value],
                    created_at=mapping[t.c.created_at],
                    told_at=mapping[t.c.told_at],
                    job=job,
                )
            )
        return trials

    # -- the leader's writes --------------------------------------------------------------

    def add_trial(
        self,
        sweep_id: str,
        number: int,
        params: Mapping[str, Any],
        system_attrs: Mapping[str, Any],
        spec: JobSpec,
    ) -> str | None:
        """Insert trial ``number`` and its queued job in one transaction while the sweep runs;
        the job's id, or None when the slot was taken (asked already) or the sweep stopped."""
        job_id = new_job_id()
        try:
            with self.engine.begin() as conn:
                running = conn.execute(
                    select(db.sweeps.c.id).where(
                        db.sweeps.c.id == sweep_id,
                        db.sweeps.c.state == SweepState.RUNNING.value,
                    )
                ).first()
                if running is None:
                    return None
                conn.execute(
                    insert(db.sweep_trials).values(
                        sweep_id=sweep_id,
                        number=number,
                        job_id=job_id,
                        params=dict(params),
                        system_attrs=dict(system_attrs),
                        state=TrialState.RUNNING.value,
                        created_at=db.now(),
                    )
                )
                insert_job(conn, job_id, spec, sweep_id=sweep_id)
        except IntegrityError:
            return None
        return job_id

    def tell(self, sweep_id: str, number: int, outcome: TrialState, value: float | None) -> bool:
        """running -> ``outcome`` with its final ``value``; False if it was told already."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(db.sweep_trials)
                .where(
                    db.sweep_trials.c.sweep_id == sweep_id,
                    db.sweep_trials.c.number == number,
                    db.sweep_trials.c.state == TrialState.RUNNING.value,
                )
                .values(state=outcome.value, value=value, told_at=db.now())
            )
        return result.rowcount == 1

    def save_system_attrs(self, sweep_id: str, number: int, attrs: Mapping[str, Any]) -> None:
        """Keep what a pruner recorded on a trial (Hyperband's rung results)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(db.sweep_trials)
                .where(db.sweep_trials.c.sweep_id == sweep_id, db.sweep_trials.c.number == number)
                .values(system_attrs=dict(attrs))
            )

    def finish(self, sweep_id: str, state: SweepState) -> bool:
        """running -> ``state`` (succeeded or failed); False if it was no longer running."""
        return self._leave_running(sweep_id, state)

    def cancel(self, sweep_id: str) -> Sweep:
        """running -> cancelled (a no-op when cancelled already; ``Conflict`` when finished).
        The caller cancels the live trials' jobs."""
        sweep = self.get(sweep_id)
        if sweep.state == SweepState.RUNNING and not self._leave_running(
            sweep_id, SweepState.CANCELLED
        ):
            return self.cancel(sweep_id)  # it finished meanwhile: decide again
        if sweep.state in (SweepState.SUCCEEDED, SweepState.FAILED):
            raise Conflict(f"sweep {sweep_id} already {sweep.state.value}; it cannot be cancelled")
        return self.get(sweep_id)

    def _leave_running(self, sweep_id: str, state: SweepState) -> bool:
        ts = db.now()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(db.sweeps)
                .where(db.sweeps.c.id == sweep_id, db.sweeps.c.state == SweepState.RUNNING.value)
                .values(state=state.value, finished_at=ts, updated_at=ts)
            )
        return result.rowcount == 1


def best_trial(sweep: Sweep, trials: Sequence[Trial]) -> Trial | None:
    """The succeeded trial with the best value (the earliest among equals), or None."""
    done = [t for t in trials if t.state == TrialState.SUCCEEDED and t.value is not None]
    if not done:
        return None
    sign = -1.0 if sweep.maximize else 1.0
    return min(done, key=lambda t: (sign * float(t.value or 0.0), t.number))


def trial_to_json(sweep: Sweep, trial: Trial) -> dict[str, Any]:
    """The API's view of a trial."""
    return {
        "number": trial.number,
        "params": trial.params,
        "state": trial.state.value,
        "job_id": trial.job.id,
        "job_state": trial.job.state.value,
        "attempt": trial.job.attempt,
        "model_id": trial.job.model_id,
        "curve": trial.curve(sweep.metric),
        "value": trial.value,
        "error": trial.job.error,
    }


def sweep_to_json(
    sweep: Sweep, trials: Sequence[Trial], *, with_trials: bool = True
) -> dict[str, Any]:
    """The API's view of a sweep (the one place a sweep becomes JSON)."""
    counts = {state.value: 0 for state in TrialState}
    counts["queued"] = 0
    for trial in trials:
        live_and_queued = trial.state == TrialState.RUNNING and trial.job.state.value == "queued"
        counts["queued" if live_and_queued else trial.state.value] += 1
    best = best_trial(sweep, trials)
    body: dict[str, Any] = {
        "id": sweep.id,
        "state": sweep.state.value,
        **sweep.request,
        "counts": counts,
        "best_trial": None if best is None else trial_to_json(sweep, best),
        "best_model": None if best is None else best_model_alias(sweep.id),
        "created_at": sweep.created_at,
        "finished_at": sweep.finished_at,
        "updated_at": sweep.updated_at,
    }
    if with_trials:
        body["trials"] = [trial_to_json(sweep, trial) for trial in trials]
    return body
