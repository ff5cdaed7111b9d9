"""The scheduler keeps its leader lease through a round that waits on a slow trainer, but not
past ``ROUND_LEASE_LIMIT_S``; ``leads_here`` names the controller instance, not the process.

Regression: the 2 s lease lapsed while a round waited on a dispatch POST (a trainer warming up
its fork server answers in seconds), and a second controller took over mid-round.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from cnnswarm.config import Settings
from cnnswarm.controller import scheduler as scheduler_module
from cnnswarm.controller.context import ControllerContext
from cnnswarm.controller.scheduler import Scheduler
from support import serve_stub_trainer

TRAINER_DELAY_S = 3.5  # longer than the 2 s lease, shorter than the dispatch timeout


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(scheduler_interval_s=0.1)  # a lease of 2 s


@pytest.fixture
def slow_trainer_url() -> Iterator[str]:
    server, _ = serve_stub_trainer(202, delay_s=TRAINER_DELAY_S)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _rival_rounds(rival: Scheduler, seconds: float) -> list[bool]:
    """The rival's leadership after each of its rounds during ``seconds``."""
    led: list[bool] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rival.tick()
        led.append(rival.is_leader)
        time.sleep(0.05)
    return led


def _start_a_slow_dispatch(
    client: FlaskClient, context: ControllerContext, slow_trainer_url: str
) -> str:
    """Start the context's scheduler with a job queued for the slow trainer; once it leads,
    its round is waiting on the dispatch POST. The job's id."""
    context.stores.trainers.heartbeat("slow", slow_trainer_url, 1, [])
    job = client.post("/api/v1/jobs", json={"dataset": "digits"}).json
    assert job is not None
    context.scheduler.start()
    deadline = time.monotonic() + 10
    while context.stores.jobs.get(job["id"]).state.value != "running":
        assert time.monotonic() < deadline, "the job was never claimed"
        time.sleep(0.02)
    return str(job["id"])


def test_a_round_waiting_on_a_slow_trainer_keeps_the_lead(
    client: FlaskClient, context: ControllerContext, settings: Settings, slow_trainer_url: str
) -> None:
    rival = Scheduler(settings, context.stores)
    try:
        job_id = _start_a_slow_dispatch(client, context, slow_trainer_url)

        led = _rival_rounds(rival, TRAINER_DELAY_S + 1.0)  # past the POST's answer

        assert led and not any(led), "the rival led while the leader's round waited"
        assert context.scheduler.is_leader and context.scheduler.leads_here()
        assert not rival.leads_here()
        job = context.stores.jobs.get(job_id)
        assert (job.state.value, job.trainer_id, job.attempt) == ("running", "slow", 1)
    finally:
        context.scheduler.stop()
        rival.stop()


def test_a_round_stuck_past_the_limit_lets_another_controller_lead(
    client: FlaskClient,
    context: ControllerContext,
    settings: Settings,
    slow_trainer_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduler_module, "ROUND_LEASE_LIMIT_S", 0.5)
    rival = Scheduler(settings, context.stores)
    try:
        _start_a_slow_dispatch(client, context, slow_trainer_url)

        led = _rival_rounds(rival, TRAINER_DELAY_S - 0.5)  # while the round still waits

        assert led[-1], f"the rival never took the lead over: {led}"
        assert rival.leads_here() and not context.scheduler.leads_here()
    finally:
        context.scheduler.stop()
        rival.stop()


def test_every_worker_of_the_leading_instance_says_it_leads(
    context: ControllerContext, settings: Settings
) -> None:
    instance = settings.with_overrides(controller_instance="ctl-a")
    worker_1, worker_2 = Scheduler(instance, context.stores), Scheduler(instance, context.stores)
    other = Scheduler(settings.with_overrides(controller_instance="ctl-b"), context.stores)

    worker_1.tick()
    worker_2.tick()
    other.tick()

    assert [worker_1.is_leader, worker_2.is_leader, other.is_leader] == [True, False, False]
    assert [worker_1.leads_here(), worker_2.leads_here(), other.leads_here()] == [
        True,
        True,
        False,
    ]
