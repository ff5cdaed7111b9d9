"""The scheduler: gives queued jobs to trainers with free slots and requeues lost ones.

One controller schedules at a time (the ``leader`` lease row); every controller runs this
loop and the others wait. A loop iteration:

1. renew (or take) the leader lease; a controller that just became leader gives running jobs
   a fresh lease first, so trainers can re-attach after a controller outage. While the round
   runs, a second thread keeps renewing it (a dispatch POST may wait longer than the lease
   lasts), up to ``ROUND_LEASE_LIMIT_S``: a round stuck longer lets another controller lead;
2. requeue running jobs whose lease expired (or fail them past the retry limit);
   advance the sweeps (``controller.sweeps``: tell ended trials, prune, ask for new ones);
3. for each queued job in submission order, pick the live trainer with the fewest running
   jobs and a free slot, claim the job in the DB (attempt + 1), then POST it to the trainer;
   a failed POST undoes the claim. A data-parallel job goes to ``controller/gang.py`` (all its
   members at once; the first one that cannot start holds the free slots for itself).

``wake()`` runs an iteration at once (a job submitted to an idle system starts within a
fraction of a second); otherwise it runs every ``scheduler_interval_s``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass

import requests
from pydantic import ValidationError

from cnnswarm.config import Settings
from cnnswarm.controller.gang import DISPATCH_TIMEOUT_S, GangDispatcher
from cnnswarm.controller.metrics import ControllerMetrics, RequeueReason
from cnnswarm.controller.sweeps import SweepEngine
from cnnswarm.exposition import AppMetrics
from cnnswarm.http import auth_headers
from cnnswarm.protocol import Dispatch
from cnnswarm.store import Stores
from cnnswarm.store.gangs import GangSize
from cnnswarm.store.jobs import Job, JobState
from cnnswarm.store.trainers import Trainer
from cnnswarm.urls import quote_segment

log = logging.getLogger(__name__)

# The longest a round keeps the leader lease alive while it runs (see the module docstring).
ROUND_LEASE_LIMIT_S = 60.0


class Scheduler:
    """The leader loop of one controller process."""

    def __init__(
        self, settings: Settings, stores: Stores, metrics: ControllerMetrics | None = None
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.metrics = metrics or ControllerMetrics(AppMetrics(enabled=False))
        # Lease holder "controller-<instance>-<this scheduler>": the workers of one controller
        # instance share its first part (``leads_here``).
        instance = settings.controller_instance or uuid.uuid4().hex[:12]
        self._instance_prefix = f"controller-{instance}-"
        self.holder = f"{self._instance_prefix}{uuid.uuid4().hex[:6]}"
        self.is_leader = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lease_keeper: threading.Thread | None = None
        self._round_started_at: float | None = None  # time.monotonic() of the running round
        self._session = requests.Session()
        self.gangs = GangDispatcher(settings, stores, self._session, self.tell_trainer_to_cancel)
        self.sweeps = SweepEngine(stores, self.tell_trainer_to_cancel)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop in a daemon thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
            self._thread.start()
            self._lease_keeper = threading.Thread(
                target=self._keep_lease, name="scheduler-lease", daemon=True
            )
            self._lease_keeper.start()

    def stop(self) -> None:
        """Stop the loop and hand the leader lease over at once."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._lease_keeper is not None:
            self._lease_keeper.join(timeout=10)
        if self.is_leader:
            self.is_leader = False
            self.stores.leader.resign(self.holder)

    def wake(self) -> None:
        """Run an iteration now (after a submission, a heartbeat with free slots, ...)."""
        self._wake.set()

    def leads_here(self) -> bool:
        """Whether this controller instance (any of its workers) holds the leader lease now."""
        holder = self.stores.leader.holder()
        return holder is not None and holder.startswith(self._instance_prefix)

    @property
    def lease_ttl_s(self) -> float:
        """The leader lease outlives a few missed rounds but not a dead controller."""
        return max(3 * self.settings.scheduler_interval_s, 2.0)

    def _keep_lease(self) -> None:
        """Renew the lease every third of its life while a round runs (up to
        ``ROUND_LEASE_LIMIT_S``); a renewal that fails ends the lead at once."""
        overrun_logged: float | None = None  # the start of the round last reported stuck
        while not self._stop.wait(self.lease_ttl_s / 3):
            started = self._round_started_at
            if started is None or not self.is_leader:
                continue
            if time.monotonic() - started > ROUND_LEASE_LIMIT_S:
                if overrun_logged != started:
                    overrun_logged = started
                    log.error(
                        "a scheduling round has run %.0f s: its lead lapses", ROUND_LEASE_LIMIT_S
                    )
                continue
            try:
                if not self.stores.leader.try_lead(self.holder, ttl_s=self.lease_ttl_s):
                    self.is_leader = False
                    log.warning("%s lost the scheduling lead during a round", self.holder)
            except Exception:
                log.exception("renewing the leader lease failed; retrying")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduler iteration failed; retrying")
            self._wake.wait(self.settings.scheduler_interval_s)
            self._wake.clear()

    # -- one iteration --------------------------------------------------------------------

    def tick(self) -> list[Job]:
        """One scheduling round; returns the jobs dispatched (tests call this directly)."""
        was_leader = self.is_leader
        self.is_leader = self.stores.leader.try_lead(self.holder, ttl_s=self.lease_ttl_s)
        if not self.is_leader:
            return []
        self._round_started_at = time.monotonic()
        try:
            return self._lead_round(was_leader)
        finally:
            self._round_started_at = None

    def _lead_round(self, was_leader: bool) -> list[Job]:
        """Steps 1 (grace on a new lead) to 3 of the module docstring, as the leader."""
        if not was_leader:
            granted = self.stores.jobs.grant_grace(self.settings.lease_timeout_s)
            self.stores.gangs.grant_grace(self.settings.lease_timeout_s)  # whole gangs re-attach
            log.info(
                "%s became the scheduling leader; %d running job(s) get a fresh lease",
                self.holder,
                granted,
            )
        expired = self.stores.jobs.expire_leases(self.settings.max_attempts)
        for job in expired:
            log.warning("job %s lost its trainer: now %s (%s)", job.id, job.state.value, job.error)
        for job in expired + self.gangs.end_lost_attempts():
            if job.state == JobState.QUEUED:
                self.metrics.job_requeued(RequeueReason.LEASE_EXPIRED)
            self.metrics.job_ended(job)
        try:
            self.sweeps.advance()
        except Exception:  # a sweep's trouble must never stop ordinary scheduling
            log.exception("advancing the sweeps failed; retrying next round")
        return self._dispatch_queued()

    def _live_trainers(self) -> dict[str, tuple[Trainer, int]]:
        """Each live trainer by id, with the number of jobs the DB says run on it now."""
        alive = self.stores.trainers.alive(self.settings.lease_timeout_s)
        if not alive:
            return {}  # no need to count running jobs
        running = self.stores.gangs.slots_taken_per_trainer()  # gang members included
        return {t.id: (t, running.get(t.id, 0)) for t in alive}

    def _dispatch_queued(self) -> list[Job]:
        dispatched: list[Job] = []
        live = self._live_trainers()
        free = {tid: (t, running) for tid, (t, running) in live.items() if t.free_slots(running)}
        if not free:
            return dispatched
        for job in self.stores.jobs.list_jobs(JobState.QUEUED, limit=100, oldest=True):
            if not self.is_leader:
                break  # the lease keeper lost the lead: another controller schedules now
            size = GangSize.of(job)
            if size is not None:  # a data-parallel job: all its members at once, or none
                started = self.gangs.dispatch(job, size, free, self._dispatch_of)
                if started is not None:
                    self.metrics.attempt_started(job, started)
                    dispatched.append(started)
                elif self.gangs.holds_the_queue(size, len(live), resumed=job.attempt > 0):
                    break  # the free slots wait for it (controller/gang.py: anti-starvation)
                if not free:
                    break
                continue
            # A trainer that refuses (busy finishing a job the DB already counts as done,
            # unreachable) is skipped and the same job offered to the next one, so an idle
            # trainer is never left waiting behind a busy one.
            while free:
                # Least running now (not least ever run); ties broken by trainer id for stability.
                trainer_id = min(free, key=lambda tid: (free[tid][1], tid))
                trainer, running = free[trainer_id]
                claimed = self.stores.jobs.claim(job, trainer.id, self.settings.lease_timeout_s)
                if claimed is None:
                    break
                dispatch = self._dispatch_of(claimed)
                if dispatch is None:
                    break  # failed: no trainer could ever run it
                outcome = self._post_to_trainer(trainer, dispatch)
                if outcome != "refused":
                    self.metrics.attempt_started(job, claimed)
                if outcome == "unknown":
                    # The trainer may have taken it: keep the claim, so this attempt number
                    # is never given to a second trainer; if it did not, the lease expires.
                    del free[trainer_id]
                    break
                if outcome == "accepted":
                    dispatched.append(claimed)
                    running += 1
                    if trainer.free_slots(running):
                        free[trainer_id] = (trainer, running)
                    else:
                        del free[trainer_id]
                    break
                del free[trainer_id]  # do not try it again this round
                if not self.stores.jobs.unclaim(claimed):
                    break  # the job moved meanwhile (cancelled): nothing to offer
            if not free:
                break
        return dispatched

    def _dispatch_of(self, job: Job) -> Dispatch | None:
        """The dispatch of a claimed job; None, with the job failed, when its row does not
        make one (it was accepted under other rules): retrying cannot fix that."""
        try:
            return Dispatch(
                job_id=job.id,
                attempt=job.attempt,
                model_id=job.model_id,
                model_type=job.model_type,
                dataset=job.dataset,
                example_idxs=job.example_idxs,
                train_opts=job.train_opts,
            )
        except ValidationError as exc:
            error = f"the job cannot be dispatched: {exc.errors(include_url=False)[0]}"
            log.error("job %s: %s", job.id, error)
            self.metrics.job_ended(self.stores.jobs.fail(job.id, job.attempt, error))
            return None

    def _post_to_trainer(self, trainer: Trainer, dispatch: Dispatch) -> str:
        """POST the dispatch to the trainer: "accepted", "refused" (surely not running there)
        or "unknown" (the request may have arrived: a timeout waiting for the answer)."""
        try:
            response = self._session.post(
                f"{trainer.url.rstrip('/')}/train",
                json=dispatch.model_dump(mode="json"),
                headers=auth_headers(self.settings.api_token),
                timeout=DISPATCH_TIMEOUT_S,
            )
        except requests.ConnectionError as exc:  # refused, unreachable, connect timeout
            log.warning("dispatch of %s to %s failed: %s", dispatch.job_id, trainer.url, exc)
            return "refused"
        except requests.RequestException as exc:
            log.warning("dispatch of %s to %s got no answer: %s", dispatch.job_id, trainer.url, exc)
            return "unknown"
        if response.status_code in (200, 202):
            log.info(
                "job %s attempt %d -> trainer %s", dispatch.job_id, dispatch.attempt, trainer.id
            )
            return "accepted"
        log.warning(
            "trainer %s refused %s: %s %s",
            trainer.url,
            dispatch.job_id,
            response.status_code,
            response.text[:200],
        )
        return "refused"

    # -- helpers for routes ---------------------------------------------------------------

    def tell_trainer_to_cancel(self, trainer_id: str, job_id: str) -> None:
        """Ask the trainer to stop ``job_id`` now (its next heartbeat would tell it anyway)."""
        trainer = self.stores.trainers.get(trainer_id)
        if trainer is None:
            return
        try:
            self._session.post(
                f"{trainer.url.rstrip('/')}/jobs/{quote_segment(job_id)}/cancel",
                headers=auth_headers(self.settings.api_token),
                timeout=DISPATCH_TIMEOUT_S,
            )
        except requests.RequestException as exc:
            log.info(
                "could not reach trainer %s to cancel %s (%s); its heartbeat will",
                trainer.url,
                job_id,
                exc,
            )

    def capacity(self) -> Capacity:
        """The live trainers' slots now (a few queries, read once for a whole job listing)."""
        live = self._live_trainers().values()
        return Capacity(
            trainers=len(live),
            slots=sum(trainer.slots for trainer, _ in live),
            free_slots=sum(trainer.free_slots(running) for trainer, running in live),
            free_trainers=sum(1 for trainer, running in live if trainer.free_slots(running)),
        )


@dataclass(frozen=True)
class Capacity:
    """The live trainers' slots at one moment, as the scheduler counts them."""

    trainers: int
    slots: int
    free_slots: int
    free_trainers: int = 0  # live trainers with at least one free slot

    def waiting_reason(self, jobs_ahead: int, workers: int = 1) -> str:
        """Why a queued job with ``jobs_ahead`` jobs before it, needing ``workers`` trainers
        at once, has not started."""
        if not self.trainers:
            return "no trainer is connected; the job starts when one registers"
        if workers > 1 and self.free_trainers < workers:
            return f"needs {workers} free trainers, {self.free_trainers} free"
        if not self.free_slots:
            return f"all {self.slots} trainer slot(s) are busy"
        if jobs_ahead:
            return f"{jobs_ahead} job(s) ahead in the queue"
        return "being dispatched to a trainer"
