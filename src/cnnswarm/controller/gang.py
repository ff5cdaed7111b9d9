"""Gang scheduling: a data-parallel job (``workers: N``) starts on N trainers at once, or not.

Placement: a job's first attempt needs ``workers`` live trainers with a free slot, a resumed
attempt at least ``min_workers`` (it takes as many as are free, up to ``workers``); the
trainers with the fewest running jobs are chosen, one rank each, ties broken by id. Each is
probed (``/healthz``) first: a trainer killed a moment ago still looks alive by its last
heartbeat, and a gang dispatched to it would cost the job an attempt.

Dispatch, in order: claim the job (attempt + 1, rank 0's trainer is the job's trainer), record
the members, dispatch rank 0 (whose trainer answers the port it opened), then ranks 1.. with
rank 0's address and that port; each member's lease is renewed as its trainer accepts. If
rank 0 refuses, the claim is undone; if a later rank cannot be dispatched, the attempt ends
(requeued) and the members already started are told to stop (their rendezvous would time out
anyway).

Anti-starvation (the queue policy): jobs are offered in submission order, and the first gang
that cannot start now although the live trainers could hold it is a barrier: no job queued
after it starts in that round, so slots freed by finishing jobs are kept for it instead of
going to a stream of one-worker jobs behind it. A gang larger than the live trainers can hold
is no barrier (it waits for trainers to register; the others run meanwhile).

A lost member (its lease expired: killed, partitioned) ends the attempt for the whole gang
(``end_lost_attempts``); the other members are told to stop by their next heartbeat's answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import requests
from pydantic import ValidationError

from cnnswarm.config import Settings
from cnnswarm.http import auth_headers
from cnnswarm.protocol import Dispatch, DispatchAnswer
from cnnswarm.store import Stores
from cnnswarm.store.gangs import GangSize
from cnnswarm.store.jobs import Job, JobState
from cnnswarm.store.trainers import Trainer

log = logging.getLogger(__name__)

# Live trainers with a free slot, by id, each with the number of jobs running on it.
FreeSlots = dict[str, tuple[Trainer, int]]

# How long the controller waits for a trainer to answer a dispatch or a cancel (the scheduler's
# one-worker dispatches use it too).
DISPATCH_TIMEOUT_S = 5.0
DISPATCH_TRIES = 2
PROBE_TIMEOUT_S = 2.0
REFUSED, UNKNOWN = "refused", "unknown"


def rendezvous_host(trainer: Trainer) -> str:
    """The address the other members reach rank 0's trainer at: the host of its URL."""
    return urlsplit(trainer.url).hostname or "127.0.0.1"


def choose_trainers(free: FreeSlots, world_size: int) -> list[str]:
    """The ``world_size`` trainers of ``free`` with the fewest running jobs (rank order)."""
    return sorted(free, key=lambda tid: (free[tid][1], tid))[:world_size]


class GangDispatcher:
    """Starts data-parallel jobs for the scheduler and ends the attempts of broken gangs."""

    def __init__(
        self,
        settings: Settings,
        stores: Stores,
        session: requests.Session,
        tell_trainer_to_cancel: Callable[[str, str], None],
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.session = session
        self._tell_trainer_to_cancel = tell_trainer_to_cancel  # (trainer_id, job_id)
        # Trainers that did not answer a probe, with the heartbeat they had then.
        self._unreachable: dict[str, float] = {}

    def holds_the_queue(self, size: GangSize, live_trainers: int, resumed: bool) -> bool:
        """Whether a waiting gang keeps the free slots for itself (the barrier policy)."""
        return live_trainers >= size.needed(resumed=resumed)

    def dispatch(
        self,
        job: Job,
        size: GangSize,
        free: FreeSlots,
        dispatch_of: Callable[[Job], Dispatch | None],
    ) -> Job | None:
        """Start ``job`` on a gang of ``free`` trainers (their slots are taken from ``free``);
        None when it cannot start now."""
        while True:  # until every chosen trainer answers, or too few are left
            world_size = size.world_size(len(free), resumed=job.attempt > 0)
            if world_size is None:
                return None
            chosen = choose_trainers(free, world_size)
            unreachable = [tid for tid in chosen if not self._reachable(free[tid][0])]
            if not unreachable:
                break
            for trainer_id in unreachable:
                del free[trainer_id]
        trainers = [free[trainer_id][0] for trainer_id in chosen]
        lease_s = self.settings.lease_timeout_s
        claimed = self.stores.jobs.claim(job, chosen[0], lease_s)
        if claimed is None:
            return None
        self.stores.gangs.add_members(claimed.id, claimed.attempt, chosen, lease_s)
        base = dispatch_of(claimed)
        if base is None:
            return None
        master_addr = rendezvous_host(trainers[0])

        def member(rank: int, master_port: int | None) -> Dispatch:
            return Dispatch.model_validate(
                {
                    **base.model_dump(),
                    "rank": rank,
                    "world_size": world_size,
                    "master_addr": master_addr,
                    "master_port": master_port,
                }
            )

        answer = self._post(trainers[0], member(0, None))
        port = answer.rendezvous_port if isinstance(answer, DispatchAnswer) else None
        if not isinstance(answer, DispatchAnswer) or (world_size > 1 and port is None):
            del free[chosen[0]]  # not offered again this round
            if answer == REFUSED:  # surely not running there: undo the claim
                if self.stores.jobs.unclaim(claimed):
                    self.stores.gangs.remove_members(claimed.id, claimed.attempt)
            else:  # it may run: this attempt number is never given to another gang
                self._abandon(claimed, chosen[:1], "rank 0 gave no rendezvous port")
            return None
        for rank in range(1, world_size):
            dispatch = member(rank, port)
            if not isinstance(self._post(trainers[rank], dispatch), DispatchAnswer):
                self._abandon(claimed, chosen[:rank], f"rank {rank} could not be dispatched")
                del free[chosen[rank]]
                return None
            # Its lease counts from now: the POSTs before it (a trainer warming up its fork
            # server answers in seconds) may have outlasted the one given at the claim.
            self.stores.gangs.renew_member(claimed.id, claimed.attempt, chosen[rank], lease_s)
        for trainer_id in chosen:
            trainer, running = free[trainer_id]
            if trainer.free_slots(running + 1):
                free[trainer_id] = (trainer, running + 1)
            else:
                del free[trainer_id]
        log.info(
            "job %s attempt %d -> gang of %d: %s",
            claimed.id,
            claimed.attempt,
            world_size,
            ", ".join(chosen),
        )
        return claimed

    def _reachable(self, trainer: Trainer) -> bool:
        """Whether ``trainer`` answers ``/healthz`` now. One that did not is not asked again
        until it sends a heartbeat: a killed trainer looks alive until its heartbeat is a lease
        old, and each gang dispatched to it would cost the job an attempt."""
        if self._unreachable.get(trainer.id) == trainer.last_heartbeat:
            return False
        try:
            answer = self.session.get(f"{trainer.url.rstrip('/')}/healthz", timeout=PROBE_TIMEOUT_S)
            reachable = answer.status_code == 200
        except requests.RequestException:
            reachable = False
        if reachable:
            self._unreachable.pop(trainer.id, None)
        else:
            log.warning("trainer %s does not answer; left out of gangs until it beats", trainer.id)
            self._unreachable[trainer.id] = trainer.last_heartbeat
        return reachable

    def end_lost_attempts(self) -> list[Job]:
        """End every running attempt one of whose members stopped renewing its lease."""
        ended: list[Job] = []
        for member in self.stores.gangs.lost_members():
            job = self.stores.jobs.get(member.job_id)
            if job.state != JobState.RUNNING or job.attempt != member.attempt:
                continue
            reason = (
                f"rank {member.rank} (trainer {member.trainer_id}) stopped renewing the lease "
                f"of attempt {member.attempt}"
            )
            done = self.stores.jobs.end_lost_attempt(job, reason, self.settings.max_attempts)
            if done is not None:
                log.warning("job %s lost a gang member: now %s (%s)", job.id, done.state, reason)
                ended.append(done)
        return ended

    def cancel_members(self, job_id: str, trainer_ids: list[str]) -> None:
        """Ask each of ``trainer_ids`` to stop ``job_id`` now (heartbeats would tell them)."""
        for trainer_id in trainer_ids:
            self._tell_trainer_to_cancel(trainer_id, job_id)

    def _abandon(self, job: Job, started: list[str], reason: str) -> None:
        """End an attempt whose gang could not be completed; stop the members started."""
        log.warning("job %s attempt %d: %s; requeued", job.id, job.attempt, reason)
        self.stores.jobs.end_lost_attempt(job, reason, self.settings.max_attempts)
        self.cancel_members(job.id, started)

    def _post(self, trainer: Trainer, dispatch: Dispatch) -> DispatchAnswer | str:
        """``_post_once``, tried again on failure (``DISPATCH_TRIES`` in all): the same attempt
        dispatched twice is accepted once by a trainer, and one lost request must not cost
        the whole gang its attempt."""
        outcome: DispatchAnswer | str = REFUSED
        for _ in range(DISPATCH_TRIES):
            outcome = self._post_once(trainer, dispatch)
            if isinstance(outcome, DispatchAnswer):
                break
        return outcome

    def _post_once(self, trainer: Trainer, dispatch: Dispatch) -> DispatchAnswer | str:
        """POST one member's dispatch: the trainer's answer, ``REFUSED`` (surely not running
        there: refused, unreachable) or ``UNKNOWN`` (it may have arrived: no answer in time,
        or an answer that is not a ``DispatchAnswer``)."""
        try:
            response = self.session.post(
                f"{trainer.url.rstrip('/')}/train",
                json=dispatch.model_dump(mode="json"),
                headers=auth_headers(self.settings.api_token),
                timeout=DISPATCH_TIMEOUT_S,
            )
        except requests.ConnectionError as exc:
            log.warning("dispatch of %s to %s failed: %s", dispatch.job_id, trainer.url, exc)
            return REFUSED
        except requests.RequestException as exc:
            log.warning("dispatch of %s to %s got no answer: %s", dispatch.job_id, trainer.url, exc)
            return UNKNOWN
        if response.status_code not in (200, 202):
            log.warning(
                "trainer %s refused rank %d of %s: %s %s",
                trainer.url,
                dispatch.rank,
                dispatch.job_id,
                response.status_code,
                response.text[:200],
            )
            return REFUSED
        try:
            return DispatchAnswer.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            log.warning("trainer %s answered rank %d oddly: %s", trainer.url, dispatch.rank, exc)
            return UNKNOWN
