"""The trainer's job runner: one child process per job, at most ``slots`` at a time.

Guarantees:
- Each job runs in its own child process (started by a fork server): a crash (exception,
  segfault, OOM kill) ends only that job; the runner reports it as failed and keeps serving.
- A job that ends with an exception is reported failed with ``"<ExcType>: message"``; a child
  that dies without a final message is reported failed with its exit code. A job stopped on
  purpose (cancel, dropped by the controller, self-fenced) is never reported as failed. The
  whole decision is ``outcome.decide_outcome``, a pure function of (final message, stop
  reason, exit code); children speak the vocabulary of ``messages``.
- Stopping sets the child's cancel event (checked between batches and while waiting for the
  controller); a child still alive ``stop_grace_s`` later is terminated, then killed.
- The runner holds no state worth keeping: the controller owns jobs; after a trainer restart the
  controller's leases expire and the jobs resume elsewhere from their checkpoints.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from cnnswarm.config import Settings
from cnnswarm.errors import Conflict, StaleAttempt
from cnnswarm.protocol import Dispatch, JobReport, seed_status_entry
from cnnswarm.trainer.child import ChildConfig, child_main
from cnnswarm.trainer.controller_api import ControllerClient, ControllerUnavailable
from cnnswarm.trainer.messages import ChildMessage, FinalMessage, MessageKind, ProgressMessage
from cnnswarm.trainer.metrics import TrainerMetrics, metrics_off
from cnnswarm.trainer.outcome import JobPhase, StopReason, decide_outcome
from cnnswarm.trainer.rendezvous import with_rendezvous_port

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

log = logging.getLogger(__name__)

# Finished jobs kept for GET /status (the seed shows completed jobs there).
FINISHED_JOBS_KEPT = 200
# Imported once by the fork server that starts job processes. torch's optimizers import
# ``torch._dynamo`` when the first one is built: 1.6 s of CPU in every job without it here.
FORKSERVER_PRELOAD = ("torch", "torch._dynamo", "cnnswarm.ml.train", "cnnswarm.trainer.child")
DEFAULT_STOP_GRACE_S = 5.0

ChildTarget = Callable[[Dispatch, ChildConfig, "Queue[ChildMessage]", "Event"], None]


def child_torch_threads(settings: Settings) -> int:
    """Torch threads for one job: ``settings.torch_threads``, else 0: the job's share of the
    host among the jobs running there, whichever trainer runs them (``cnnswarm.cpu.JobShare``)."""
    return settings.torch_threads


@dataclass
class TrackedJob:
    """One attempt of one job on this trainer, with its child process."""

    dispatch: Dispatch
    process: BaseProcess
    messages: Queue[ChildMessage]
    cancel: Event
    started_at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None
    phase: JobPhase = JobPhase.RUNNING
    progress: float = 0.0
    epoch: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    stop_reason: StopReason | None = None
    stop_requested_at: float | None = None
    final_message: FinalMessage | None = None
    # The last epoch this attempt finished (epochs before its first report belong to the
    # attempts it resumed from); None before its first report.
    last_epoch_finished: int | None = None

    def count_new_epochs(self, message: ProgressMessage) -> int:
        """How many epochs this progress ``message`` reports finished since the last one."""
        if self.last_epoch_finished is None:
            self.last_epoch_finished = message["epoch"] - 1  # the epoch in progress is 1-based
        finished = [
            int(entry.get("epoch", 0))
            for entry in message["metrics"]
            if int(entry.get("epoch", 0)) > self.last_epoch_finished
        ]
        if finished:
            self.last_epoch_finished = max(finished)
        return len(finished)

    def status(self) -> dict[str, Any]:
        """The seed's per-job status entry plus this trainer's extras (epoch, error)."""
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        return seed_status_entry(
            duration_s=end - self.started_at,
            progress=1.0 if self.phase is JobPhase.SUCCEEDED else self.progress,
            complete=self.phase.is_final,
            state=self.phase.value,
            attempt=self.dispatch.attempt,
            model_id=self.dispatch.model_id,
            epoch=self.epoch,
            error=self.error,
        )

    def report(self) -> JobReport:
        """This job as the heartbeat reports it."""
        return JobReport(
            job_id=self.dispatch.job_id,
            attempt=self.dispatch.attempt,
            progress=min(max(self.progress, 0.0), 1.0),
            epoch=self.epoch,
            metrics=list(self.metrics),
        )


class JobRunner:
    """Starts, watches, stops and reaps job child processes (thread-safe).

    ``poll()`` does one round of the watching (drain progress, reap exits, enforce stop
    deadlines); the service calls it from a background thread, tests call it directly.
    """

    def __init__(
        self,
        settings: Settings,
        client: ControllerClient,
        *,
        child_target: ChildTarget = child_main,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
        metrics: TrainerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or metrics_off()
        self.client = client
        self.slots = settings.trainer_slots
        self.child_target = child_target
        self.stop_grace_s = stop_grace_s
        self.child_config = ChildConfig(
            controller_url=settings.resolved_controller_url,
            api_token=settings.api_token,
            cache_dir=settings.home_dir / "trainer-cache",
            torch_threads=child_torch_threads(settings),
            force_cpu=settings.force_cpu,
            cpu_coordination_dir=settings.cpu_coordination_dir,
            gang_init_timeout_s=settings.gang_init_timeout_s,
            gang_collective_timeout_s=settings.gang_collective_timeout_s,
        )
        # A fork server that has already imported torch and the engine starts each job in
        # milliseconds instead of seconds (a resumed job is back training sooner); the jobs
        # still get fresh processes, never a fork of this threaded server.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(FORKSERVER_PRELOAD))
        self._lock = threading.RLock()
        # Keyed by (job_id, attempt): a replaced attempt is still watched until its child ends.
        self._jobs: OrderedDict[tuple[str, int], TrackedJob] = OrderedDict()
        self._reporters: list[threading.Thread] = []

    def warm_up(self) -> None:
        """Start the fork server now (it imports torch once), so no job waits for that."""
        from multiprocessing import forkserver

        forkserver.ensure_running()

    # -- queries -------------------------------------------------------------------------------

    def _active(self) -> list[TrackedJob]:
        return [job for job in self._jobs.values() if not job.phase.is_final]

    def free_slots(self) -> int:
        """Slots not taken by a live child (a stopping child still holds its slot)."""
        with self._lock:
            return max(0, self.slots - len(self._active()))

    def job(self, job_id: str) -> TrackedJob | None:
        """The latest tracked attempt of this job (running or recently finished), if any."""
        with self._lock:
            attempts = [job for (jid, _), job in self._jobs.items() if jid == job_id]
            return max(attempts, key=lambda job: job.dispatch.attempt) if attempts else None

    def status(self) -> dict[str, dict[str, Any]]:
        """``{job_id: status entry}`` (its latest attempt) for running and recent jobs."""
        with self._lock:
            latest: dict[str, TrackedJob] = {}
            for (job_id, _), job in self._jobs.items():
                if job_id not in latest or job.dispatch.attempt > latest[job_id].dispatch.attempt:
                    latest[job_id] = job
            return {job_id: job.status() for job_id, job in latest.items()}

    def active_phases(self) -> dict[str, int]:
        """How many jobs are running and stopping here now."""
        with self._lock:
            active = self._active()
        counts = {JobPhase.RUNNING.value: 0, JobPhase.STOPPING.value: 0}
        for job in active:
            counts[job.phase.value] += 1
        return counts

    def training_images_per_s(self) -> float:
        """The last epoch's training images/s of each running job, summed (0 when none ran an
        epoch yet)."""
        with self._lock:
            running = [job for job in self._active() if job.phase is JobPhase.RUNNING]
        rates = [job.metrics[-1].get("images_per_s") for job in running if job.metrics]
        return float(sum(rate for rate in rates if isinstance(rate, int | float)))

    def heartbeat_jobs(self) -> list[JobReport]:
        """The jobs this trainer runs, as the heartbeat reports them.

        A job being stopped is left out: this trainer no longer claims it (a controller that
        comes back must not re-attach a job the trainer has given up).
        """
        with self._lock:
            return [job.report() for job in self._active() if job.phase is JobPhase.RUNNING]

    # -- commands ------------------------------------------------------------------------------

    def start(self, dispatch: Dispatch) -> TrackedJob:
        """Start ``dispatch`` in a new child; ``Conflict`` when no slot is free.

        The same job and attempt dispatched twice is accepted once (idempotent); a newer attempt
        of a job still running here replaces the older one (which has lost its lease). Rank 0
        of a gang gets its rendezvous port here (``tracked.dispatch.master_port``).
        """
        with self._lock:
            for current in self._active():
                if current.dispatch.job_id != dispatch.job_id:
                    continue
                if current.dispatch.attempt == dispatch.attempt:
                    return current
                if current.dispatch.attempt > dispatch.attempt:
                    raise Conflict(
                        f"job {dispatch.job_id} already runs a newer attempt "
                        f"({current.dispatch.attempt}) here",
                        field="attempt",
                    )
                self._request_stop(current, StopReason.FENCED)
            if not self.free_slots():
                raise Conflict(f"no free slot: all {self.slots} slot(s) of this trainer are busy")
            dispatch = with_rendezvous_port(dispatch)
            messages: Queue[ChildMessage] = self._context.Queue()
            cancel = self._context.Event()
            process = self._context.Process(
                target=self.child_target,
                args=(dispatch, self.child_config, messages, cancel),
                name=f"job-{dispatch.job_id}-{dispatch.attempt}",
                daemon=True,
            )
            job = TrackedJob(dispatch=dispatch, process=process, messages=messages, cancel=cancel)
            self._jobs.pop((dispatch.job_id, dispatch.attempt), None)
            self._jobs[(dispatch.job_id, dispatch.attempt)] = job
            self._forget_old_finished()
        # Started outside the lock: the fork server may still be importing torch (seconds), and
        # heartbeats, which read the jobs under this lock, must go on renewing every lease (this
        # job's too: it is tracked, and reported, from here on).
        try:
            process.start()
        except BaseException:
            with self._lock:
                self._jobs.pop((dispatch.job_id, dispatch.attempt), None)
            raise
        log.info(
            "job %s attempt %d started (pid %s)", dispatch.job_id, dispatch.attempt, process.pid
        )
        return job

    def stop(self, job_id: str, reason: StopReason, *, attempt: int | None = None) -> bool:
        """Ask a running job to stop (only attempts <= ``attempt`` when given).

        Returns True when a stop was requested (or was already under way).
        """
        with self._lock:
            matching = [
                job
                for job in self._active()
                if job.dispatch.job_id == job_id
                and (attempt is None or job.dispatch.attempt <= attempt)
            ]
            for job in matching:
                self._request_stop(job, reason)
            return bool(matching)

    def stop_all(self, reason: StopReason) -> list[str]:
        """Stop every running job; the ids stopped."""
        with self._lock:
            stopped = [job for job in self._active() if job.phase is JobPhase.RUNNING]
            for job in stopped:
                self._request_stop(job, reason)
            return [job.dispatch.job_id for job in stopped]

    def _request_stop(self, job: TrackedJob, reason: StopReason) -> None:
        if job.stop_reason is None:
            job.stop_reason = reason
            job.stop_requested_at = time.monotonic()
            job.phase = JobPhase.STOPPING
            log.info(
                "stopping job %s attempt %d: %s",
                job.dispatch.job_id,
                job.dispatch.attempt,
                reason.value,
            )
        job.cancel.set()

    # -- watching ------------------------------------------------------------------------------

    def poll(self) -> None:
        """One watching round: apply children's messages, reap exits, enforce stop deadlines."""
        with self._lock:
            active = self._active()
        for job in active:
            self._drain(job)
            if job.process.exitcode is not None:
                self._drain(job)  # a child flushes its queue before it exits
                self._reap(job)
            elif job.stop_requested_at is not None and job.process.pid is not None:
                overdue = time.monotonic() - job.stop_requested_at - self.stop_grace_s
                if overdue > 2.0:
                    job.process.kill()
                elif overdue > 0:
                    job.process.terminate()

    def _drain(self, job: TrackedJob) -> None:
        while True:
            try:
                message = job.messages.get_nowait()
            except (queue.Empty, EOFError, OSError, ValueError):
                return
            with self._lock:
                if message["kind"] == MessageKind.PROGRESS:
                    self.metrics.epochs_completed(job.count_new_epochs(message))
                    job.progress = message["progress"]
                    job.epoch = message["epoch"]
                    job.metrics = message["metrics"]
                else:
                    job.final_message = message

    def _reap(self, job: TrackedJob) -> None:
        """Decide a finished child's outcome and report a failure when one is due."""
        outcome = decide_outcome(job.final_message, job.stop_reason, job.process.exitcode)
        with self._lock:
            job.ended_at = time.monotonic()
            job.phase = outcome.phase
            if outcome.phase is JobPhase.SUCCEEDED:
                job.progress = 1.0
            if outcome.error is not None:
                job.error = outcome.error
        self.metrics.attempt_ended(job.phase.value)
        log.info(
            "job %s attempt %d ended: %s%s",
            job.dispatch.job_id,
            job.dispatch.attempt,
            job.phase.value,
            f" ({job.error})" if job.error else "",
        )
        job.process.join(timeout=1.0)
        job.messages.close()
        if outcome.report_failure:
            assert job.error is not None  # every reported outcome carries its error
            self._report_failure_in_background(job.dispatch, job.error, outcome.retryable)

    def _report_failure_in_background(
        self, dispatch: Dispatch, error: str, retryable: bool
    ) -> None:
        def report() -> None:
            try:
                self.client.post_failure(dispatch.job_id, dispatch.attempt, error, retryable)
            except StaleAttempt:
                log.info(
                    "failure of job %s attempt %d not recorded: the attempt is stale",
                    dispatch.job_id,
                    dispatch.attempt,
                )
            except (ControllerUnavailable, Exception):
                log.exception("could not report the failure of job %s", dispatch.job_id)

        thread = threading.Thread(target=report, name=f"report-{dispatch.job_id}", daemon=True)
        thread.start()
        with self._lock:
            self._reporters = [t for t in self._reporters if t.is_alive()] + [thread]

    def wait_for_reports(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) for failure reports still being sent (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            reporters = list(self._reporters)
        for thread in reporters:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _forget_old_finished(self) -> None:
        finished = [key for key, job in self._jobs.items() if job.phase.is_final]
        for key in finished[: max(0, len(finished) - FINISHED_JOBS_KEPT)]:
            del self._jobs[key]

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every child (cancel, then terminate, then kill) and reap them."""
        with self._lock:
            active = self._active()
            for job in active:
                self._request_stop(job, job.stop_reason or StopReason.DROPPED)
        deadline = time.monotonic() + timeout
        for job in active:
            job.process.join(max(0.0, deadline - time.monotonic()))
            if job.process.exitcode is None:
                job.process.terminate()
                job.process.join(2.0)
            if job.process.exitcode is None:
                job.process.kill()
                job.process.join(2.0)
        self.poll()
