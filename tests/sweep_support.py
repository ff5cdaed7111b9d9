"""Playing the trainer's side for sweep tests: claim a trial's job, report epochs, end it."""

from __future__ import annotations

from typing import Any

from cnnswarm.controller.context import ControllerContext
from cnnswarm.store.jobs import Job, JobState

TRAINER = "trainer-test"


def report_epochs(context: ControllerContext, job_id: str, accuracies: list[float]) -> Job:
    """Claim ``job_id`` if queued and report one epoch per accuracy (its metric curve)."""
    jobs = context.stores.jobs
    job = jobs.get(job_id)
    if job.state == JobState.QUEUED:
        claimed = jobs.claim(job, TRAINER, lease_s=60)
        assert claimed is not None
        job = claimed
    metrics = [
        {"epoch": epoch, "test_accuracy": acc, "test_loss": 1 - acc}
        for epoch, acc in enumerate(accuracies, start=1)
    ]
    reason = jobs.renew(job.id, job.attempt, TRAINER, 60, epoch=len(metrics), metrics=metrics)
    assert reason is None, reason
    return jobs.get(job_id)


def succeed(context: ControllerContext, job_id: str, accuracies: list[float]) -> Job:
    """Report ``accuracies`` then publish the trial's model (a record; no file is read)."""
    job = report_epochs(context, job_id, accuracies)
    metrics = job.metrics
    row: dict[str, Any] = {
        "id": job.model_id,
        "job_id": job.id,
        "model_type": job.model_type,
        "dataset": job.dataset,
        "classes": ["a", "b"],
        "metrics": metrics,
        "train_opts": job.train_opts,
        "example_idxs": None,
        "preprocessing": {},
        "filename": "x.pth",
    }
    return context.stores.jobs.complete(job.id, job.attempt, row)
