"""The trainer's heartbeat agent: announce, report progress, renew leases, obey drops.

Guarantees:
- Every ``heartbeat_interval_s`` the agent POSTs one heartbeat with this trainer's id, address,
  slots and running jobs; the controller's ``drop`` list stops those jobs (cancelled or
  reassigned elsewhere).
- No self-fencing: jobs keep training while the controller is unreachable (it may be
  restarting, and a new leader grants running jobs a fresh lease so they re-attach with their
  attempt unchanged). A job that was reassigned meanwhile is safe anyway: its writes carry a
  stale attempt and are refused, and the next heartbeat that gets through drops it.
- Back-off after failures is capped at a quarter of the lease, so a trainer re-attaches
  within the grace a returning controller gives.
- The loop never dies of an error: each round catches, logs and backs off (capped), and the
  controller's answer may retune the interval and the lease timeout.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable

from cnnswarm.config import Settings
from cnnswarm.protocol import Heartbeat, HeartbeatAnswer
from cnnswarm.trainer.controller_api import ControllerClient
from cnnswarm.trainer.outcome import StopReason
from cnnswarm.trainer.runner import JobRunner

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0


def make_trainer_id(settings: Settings) -> str:
    """``settings.trainer_id``, or a fresh id for this process start."""
    return settings.trainer_id or f"trainer-{uuid.uuid4().hex[:12]}"


def announced_url(settings: Settings) -> str:
    """The address the controller should use to reach this trainer (no trailing slash).

    ``settings.trainer_url`` when set; otherwise ``http://<train_host>:<train_port>``, where a
    wildcard host (``0.0.0.0``) is replaced by this host's address as its own name resolves
    (the container's IP in Docker).
    """
    if settings.trainer_url:
        return settings.trainer_url.rstrip("/")
    host = settings.train_host
    if host in ("0.0.0.0", "", "::"):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    return f"http://{host}:{settings.train_port}"


class HeartbeatAgent:
    """Sends heartbeats for a ``JobRunner``; ``beat_once()`` is one round (tests call it)."""

    def __init__(
        self,
        settings: Settings,
        runner: JobRunner,
        client: ControllerClient,
        *,
        trainer_id: str,
        url: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` (seconds) stamps ``started_at`` and ``last_success_at``; tests pass a fake
        one to let time pass without sleeping."""
        self.runner = runner
        self.client = client
        self.trainer_id = trainer_id
        self.url = url
        self.interval_s = settings.heartbeat_interval_s
        self.lease_timeout_s = settings.lease_timeout_s
        self.clock = clock
        self.started_at = clock()
        self.last_success_at: float | None = None
        self.consecutive_failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def controller_reachable(self) -> bool:
        """True when the latest heartbeat round succeeded."""
        return self.last_success_at is not None and self.consecutive_failures == 0

    def heartbeat(self) -> Heartbeat:
        """What one heartbeat says about this trainer."""
        return Heartbeat(
            trainer_id=self.trainer_id,
            url=self.url,
            slots=self.runner.slots,
            jobs=self.runner.heartbeat_jobs(),
        )

    def beat_once(self) -> bool:
        """Send one heartbeat and act on the answer.

        Returns True when the controller answered.
        """
        try:
            answer = self.client.heartbeat(self.heartbeat())
        except Exception as exc:  # never let one bad round end the loop
            self.consecutive_failures += 1
            log.warning("heartbeat failed (%d in a row): %s", self.consecutive_failures, exc)
            return False
        self.last_success_at = self.clock()
        self.consecutive_failures = 0
        self._apply_answer(answer)
        return True

    def _apply_answer(self, answer: HeartbeatAnswer) -> None:
        for drop in answer.drop:
            if self.runner.stop(drop.job_id, StopReason.DROPPED, attempt=drop.attempt):
                log.info("controller dropped job %s (%s)", drop.job_id, drop.reason)
        self.interval_s = answer.heartbeat_interval_s
        self.lease_timeout_s = answer.lease_timeout_s

    def next_delay_s(self) -> float:
        """The wait before the next round: the interval, doubled per failure, capped."""
        if self.consecutive_failures == 0:
            return self.interval_s
        backoff = self.interval_s * float(2 ** min(self.consecutive_failures - 1, 6))
        # Come back within the grace a returning controller gives running jobs.
        return min(backoff, MAX_BACKOFF_S, max(self.interval_s, self.lease_timeout_s / 4))

    def run_forever(self) -> None:
        """Beat until ``stop()``; each round's errors are caught and logged."""
        while not self._stop.is_set():
            try:
                self.beat_once()
            except Exception:  # beat_once already catches; this guards the guard
                log.exception("heartbeat round crashed")
            self._stop.wait(self.next_delay_s())

    def start(self) -> None:
        """Run the loop in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.run_forever, name="heartbeat-agent", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the loop and wait for its thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
