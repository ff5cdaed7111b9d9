"""JobRunner with real child processes training tiny jobs against a real (fake) controller."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cnnswarm.config import Settings
from cnnswarm.errors import Conflict
from cnnswarm.ml.artifact import artifact_from_bytes
from cnnswarm.ml.checkpoint import checkpoint_to_bytes
from cnnswarm.ml.datasets.base import ArrayDataset
from cnnswarm.ml.train import train
from cnnswarm.protocol import Dispatch
from cnnswarm.trainer.controller_api import ControllerClient
from cnnswarm.trainer.runner import JobPhase, JobRunner, StopReason
from support import drive_until

pytestmark = pytest.mark.timeout(120)

QUICK_OPTS = {"num_epochs": 2, "batch_size": 8, "seed": 1}
# Long enough that the test acts while it runs; a checkpoint per batch shows batch granularity.
LONG_OPTS = {"num_epochs": 500, "batch_size": 8, "seed": 1}


def dispatch(job_id: str, *, attempt: int = 1, **changes: Any) -> Dispatch:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "attempt": attempt,
        "model_id": f"model-{job_id}",
        "model_type": "SmallConvNet",
        "dataset": "tiny",
        "example_idxs": None,
        "train_opts": QUICK_OPTS,
    }
    fields.update(changes)
    return Dispatch(**fields)


@pytest.fixture
def runner(
    fake_controller: Any, tiny: ArrayDataset, tmp_path: Path, make_settings: Callable[..., Settings]
) -> Iterator[JobRunner]:
    fake_controller.add_dataset("tiny", tiny, tmp_path)
    settings = make_settings(fake_controller.url)
    job_runner = JobRunner(
        settings, ControllerClient(settings.resolved_controller_url), stop_grace_s=30.0
    )
    try:
        yield job_runner
    finally:
        job_runner.shutdown(timeout=5.0)


def poll_until(runner: JobRunner, condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Drive the runner's watcher by hand until ``condition`` holds (fails at the deadline)."""
    drive_until(runner.poll, condition, timeout, what=lambda: f"it; status {runner.status()}")


def ended(runner: JobRunner, job_id: str) -> Callable[[], bool]:
    def check() -> bool:
        job = runner.job(job_id)
        return job is not None and job.phase.is_final

    return check


def test_success_posts_the_result_and_frees_the_slot(runner: JobRunner, fake_controller: Any):
    runner.start(dispatch("ok", example_idxs=[0, 40]))
    assert runner.free_slots() == 0
    poll_until(runner, ended(runner, "ok"))

    job = runner.job("ok")
    assert job is not None and job.phase is JobPhase.SUCCEEDED, job.error
    attempt, data = fake_controller.results["ok"]
    assert attempt == 1
    artifact = artifact_from_bytes(data)
    assert artifact.classes == ["dark", "bright"]
    assert artifact.dataset["num_train"] == 40  # example_idxs applied
    assert [m["epoch"] for m in artifact.metrics] == [1, 2]
    assert fake_controller.checkpoint_puts == [("ok", 1), ("ok", 1)]  # one per epoch
    assert fake_controller.failures == []
    entry = runner.status()["ok"]
    assert (entry["progress"], entry["complete"], entry["state"]) == (100.0, True, "succeeded")
    assert entry["duration"] > 0
    assert runner.free_slots() == 1


def test_exception_in_child_is_reported_as_failure(runner: JobRunner, fake_controller: Any):
    runner.start(dispatch("bad", train_opts={"no_such_option": 1}))
    poll_until(runner, lambda: bool(fake_controller.failures))
    runner.wait_for_reports(5)

    [failure] = fake_controller.failures
    assert failure["job_id"] == "bad" and failure["attempt"] == 1
    assert failure["error"].startswith("InvalidInput: unknown train_opts key(s): no_such_option")
    assert failure["retryable"] is False
    assert "bad" not in fake_controller.results
    assert runner.status()["bad"]["state"] == "failed"


def test_child_killed_by_a_signal_is_reported_and_the_trainer_lives_on(
    runner: JobRunner, fake_controller: Any
):
    job = runner.start(dispatch("crash", train_opts=LONG_OPTS))
    poll_until(runner, lambda: job.progress > 0)
    assert job.process.pid is not None
    os.kill(job.process.pid, signal.SIGKILL)  # what the OOM killer does
    poll_until(runner, lambda: bool(fake_controller.failures))
    runner.wait_for_reports(5)

    [failure] = fake_controller.failures
    assert failure["job_id"] == "crash"
    assert "SIGKILL" in failure["error"]
    assert job.phase is JobPhase.FAILED
    # The runner takes the next job.
    runner.start(dispatch("after-crash", train_opts={"no_such_option": 1}))
    poll_until(runner, lambda: len(fake_controller.failures) == 2)


def test_cancel_stops_between_batches_without_reporting(runner: JobRunner, fake_controller: Any):
    job = runner.start(dispatch("long", train_opts={**LONG_OPTS, "checkpoint_every_batches": 1}))
    poll_until(runner, lambda: job.progress > 0)
    cancelled_at = time.monotonic()
    assert runner.stop("long", StopReason.CANCELLED)
    poll_until(runner, ended(runner, "long"), timeout=10)

    # The child itself saw the cancel event and ended cleanly (no terminate: grace is 30 s).
    assert job.final_message == {"kind": "cancelled"}
    assert time.monotonic() - cancelled_at < 10
    assert job.phase is JobPhase.CANCELLED
    assert runner.status()["long"]["state"] == "cancelled"
    assert fake_controller.failures == [] and "long" not in fake_controller.results


def test_409_on_checkpoint_stops_the_job(runner: JobRunner, fake_controller: Any):
    fake_controller.owner_attempt["fenced"] = 2  # another attempt owns the job
    job = runner.start(dispatch("fenced", attempt=1))
    poll_until(runner, ended(runner, "fenced"))

    assert job.phase is JobPhase.FENCED
    assert job.final_message is not None and job.final_message["kind"] == "fenced"
    assert job.epoch <= 1  # stopped at the first checkpoint, not at the end of training
    assert fake_controller.checkpoint_puts == []
    assert fake_controller.failures == [] and "fenced" not in fake_controller.results


def test_resume_continues_from_the_stored_checkpoint(
    runner: JobRunner, fake_controller: Any, tiny: ArrayDataset
):
    # Attempt 1 "ran" one epoch of two and checkpointed; its trainer then vanished.
    torch.set_num_threads(1)
    checkpoints: list[dict[str, Any]] = []
    with pytest.raises(RuntimeError, match="stop after epoch 1"):

        def keep_first(checkpoint: dict[str, Any]) -> None:
            checkpoints.append(checkpoint)
            raise RuntimeError("stop after epoch 1")

        train("SmallConvNet", tiny, QUICK_OPTS, on_checkpoint=keep_first, device="cpu", threads=1)
    fake_controller.checkpoints["resumed"] = checkpoint_to_bytes(checkpoints[0])
    fake_controller.owner_attempt["resumed"] = 2

    runner.start(dispatch("resumed", attempt=2))
    poll_until(runner, ended(runner, "resumed"))

    assert fake_controller.checkpoint_gets == ["resumed"]
    attempt, data = fake_controller.results["resumed"]
    assert attempt == 2
    metrics = artifact_from_bytes(data).metrics
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[0] == checkpoints[0]["metrics"][0]  # epoch 1 was not trained again
    assert fake_controller.checkpoint_puts == [("resumed", 2)]  # only epoch 2's checkpoint


def test_no_free_slot_is_a_conflict_and_same_attempt_is_idempotent(
    fake_controller: Any, make_settings: Callable[..., Settings]
):
    fake_controller.unavailable_datasets.add("tiny")  # children wait for the dataset
    settings = make_settings(fake_controller.url)
    runner = JobRunner(settings, ControllerClient(settings.resolved_controller_url))
    try:
        first = runner.start(dispatch("a"))
        assert runner.start(dispatch("a")) is first
        with pytest.raises(Conflict, match="no free slot"):
            runner.start(dispatch("b"))
        assert runner.stop("a", StopReason.DROPPED, attempt=1)
        poll_until(runner, ended(runner, "a"), timeout=30)
        assert first.phase is JobPhase.DROPPED
        assert fake_controller.failures == []
    finally:
        runner.shutdown()


ORPHAN_SCRIPT = """
import sys
from pathlib import Path
from cnnswarm.config import Settings
from cnnswarm.protocol import Dispatch
from cnnswarm.trainer.controller_api import ControllerClient
from cnnswarm.trainer.runner import JobRunner

if __name__ == "__main__":
    settings = Settings(home_dir=Path(sys.argv[2]), controller_url=sys.argv[1], torch_threads=1)
    runner = JobRunner(settings, ControllerClient(sys.argv[1]))
    job = runner.start(
        Dispatch(job_id="j", attempt=1, model_id="m", model_type="SmallConvNet", dataset="waiting")
    )
    print(job.process.pid, flush=True)
    sys.stdin.read()  # until the test kills this process
"""


def test_children_exit_when_the_trainer_process_is_killed(fake_controller: Any, tmp_path: Path):
    import subprocess
    import sys

    fake_controller.unavailable_datasets.add("waiting")
    script = tmp_path / "trainer_parent.py"
    script.write_text(ORPHAN_SCRIPT)
    parent = subprocess.Popen(
        [sys.executable, str(script), fake_controller.url, str(tmp_path / "home")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    child_pid: int | None = None

    def child_gone() -> bool:
        assert child_pid is not None
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return True
        # A zombie (reparented, not yet reaped) counts as gone.
        status = Path(f"/proc/{child_pid}/status")
        return status.exists() and "zombie" in status.read_text()

    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        fake_controller.wait_for(lambda: 503 in fake_controller.dataset_answers, timeout=30)
        parent.kill()  # kill -9 of the trainer: no cleanup code runs in it
        parent.wait(10)
        fake_controller.wait_for(child_gone, timeout=10)
    finally:
        parent.kill()
        parent.wait(10)
        if child_pid is not None and not child_gone():
            os.kill(child_pid, signal.SIGKILL)  # never leave an orphan behind a failed test
