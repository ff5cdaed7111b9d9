"""What a job is: its states, the request it carries, its row, and its JSON view.

``JobState`` is the lifecycle documented in ``cnnswarm.store.jobs``; ``job_to_json`` is the one
place a job becomes JSON.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    """A job's state; ``cnnswarm.store.jobs`` documents the transitions."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for succeeded, failed and cancelled."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobSpec:
    """What a client asked for; validated by the caller before it reaches the store."""

    model_id: str
    dataset: str
    model_type: str
    example_idxs: list[int] | None
    train_opts: dict[str, Any]
    workers: int = 1  # > 1: a data-parallel job (cnnswarm.store.gangs)
    min_workers: int | None = None  # None: workers; the smallest gang a resumed attempt takes

    def fingerprint(self) -> str:
        """A hash of the request, to tell an idempotent retry from a different request."""
        request: dict[str, Any] = {
            "model_id": self.model_id,
            "dataset": self.dataset,
            "model_type": self.model_type,
            "example_idxs": self.example_idxs,
            "train_opts": self.train_opts,
        }
        if self.workers != 1:  # one-worker jobs keep the hashes they always had
            request.update(workers=self.workers, min_workers=self.min_workers)
        payload = json.dumps(request, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Job:
    """One row of the jobs table."""

    id: str
    seq: int
    model_id: str
    dataset: str
    model_type: str
    example_idxs: list[int] | None
    train_opts: dict[str, Any]
    state: JobState
    attempt: int
    trainer_id: str | None
    lease_expires_at: float | None
    progress: float
    epoch: int
    metrics: list[dict[str, Any]]
    error: str | None
    has_checkpoint: bool
    sweep_id: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    workers: int = 1  # > 1: a data-parallel job (cnnswarm.store.gangs)
    min_workers: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        """Build from a ``jobs`` row mapping."""
        return cls(
            id=row["id"],
            seq=row["seq"],
            model_id=row["model_id"],
            dataset=row["dataset"],
            model_type=row["model_type"],
            example_idxs=row["example_idxs"],
            train_opts=row["train_opts"] or {},
            state=JobState(row["state"]),
            attempt=row["attempt"],
            trainer_id=row["trainer_id"],
            lease_expires_at=row["lease_expires_at"],
            progress=row["progress"],
            epoch=row["epoch"],
            metrics=row["metrics"] or [],
            error=row["error"],
            has_checkpoint=bool(row["has_checkpoint"]),
            sweep_id=row.get("sweep_id"),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            updated_at=row["updated_at"],
            workers=row.get("workers") or 1,
            min_workers=row.get("min_workers"),
        )


def new_job_id() -> str:
    """A fresh, URL-safe job id."""
    return "job-" + uuid.uuid4().hex[:16]


def job_to_json(job: Job, queue_position: int | None = None) -> dict[str, Any]:
    """The API's view of a job (the one place a job becomes JSON)."""
    body: dict[str, Any] = {
        "id": job.id,
        "model_id": job.model_id,
        "dataset": job.dataset,
        "model_type": job.model_type,
        "example_idxs": job.example_idxs,
        "train_opts": job.train_opts,
        "state": job.state.value,
        "progress": round(job.progress, 4),
        "epoch": job.epoch,
        "metrics": job.metrics,
        "trainer": job.trainer_id,
        "attempt": job.attempt,
        "error": job.error,
        "sweep": job.sweep_id,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "updated_at": job.updated_at,
        "workers": job.workers,
    }
    if job.workers > 1:
        body["min_workers"] = job.min_workers
    if job.state == JobState.QUEUED:
        body["queue_position"] = queue_position
    return body
