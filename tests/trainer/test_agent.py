"""The heartbeat agent against a real (fake) controller: body, drops, outages, address."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cnnswarm.config import Settings
from cnnswarm.protocol import Dispatch
from cnnswarm.trainer.agent import HeartbeatAgent, announced_url, make_trainer_id
from cnnswarm.trainer.controller_api import ControllerClient
from cnnswarm.trainer.runner import JobPhase, JobRunner
from support import ManualClock, drive_until

pytestmark = pytest.mark.timeout(60)


def waiting_dispatch(job_id: str, attempt: int = 1) -> Dispatch:
    """A job whose dataset the controller keeps answering 503 for: it holds a slot, idle."""
    return Dispatch(
        job_id=job_id, attempt=attempt, model_id="m", model_type="SmallConvNet", dataset="waiting"
    )


def make_agent(settings: Settings) -> tuple[HeartbeatAgent, JobRunner]:
    client = ControllerClient(settings.resolved_controller_url, settings.api_token)
    runner = JobRunner(settings, client)
    agent = HeartbeatAgent(settings, runner, client, trainer_id="t1", url="http://10.0.0.7:48516")
    return agent, runner


def test_heartbeat_reports_jobs_and_obeys_drops(
    fake_controller: Any, make_settings: Callable[..., Settings]
):
    fake_controller.unavailable_datasets.add("waiting")
    agent, runner = make_agent(make_settings(fake_controller.url, heartbeat_interval_s=0.3))
    try:
        assert agent.controller_reachable is False
        runner.start(waiting_dispatch("j1", attempt=3))
        assert agent.beat_once() is True
        assert agent.controller_reachable is True
        [body] = fake_controller.heartbeats
        assert body == {
            "trainer_id": "t1",
            "url": "http://10.0.0.7:48516",
            "slots": 1,
            "jobs": [{"job_id": "j1", "attempt": 3, "progress": 0.0, "epoch": 0, "metrics": []}],
        }
        # The controller's answer retunes the agent.
        assert (agent.interval_s, agent.lease_timeout_s) == (1.0, 10.0)

        fake_controller.drop = [{"job_id": "j1", "attempt": 3, "reason": "cancelled"}]
        agent.beat_once()
        job = runner.job("j1")
        assert job is not None
        drive_until(runner.poll, lambda: job.phase.is_final, what=lambda: str(runner.status()))
        assert job.phase is JobPhase.DROPPED
        assert fake_controller.failures == []
        agent.beat_once()
        assert fake_controller.heartbeats[-1]["jobs"] == []
    finally:
        runner.shutdown()


def test_jobs_keep_training_while_the_controller_is_away(
    fake_controller: Any, dead_controller_url: str, make_settings: Callable[..., Settings]
):
    # Jobs talk to the (waiting) fake controller; heartbeats go to a dead address. A trainer
    # must not stop its jobs because the controller is silent: a restarting controller gives
    # running jobs a fresh lease, and a reassigned job is dropped when the trainer next gets
    # through (its writes are fenced by attempt meanwhile).
    fake_controller.unavailable_datasets.add("waiting")
    settings = make_settings(fake_controller.url, lease_timeout_s=0.5)
    runner = JobRunner(settings, ControllerClient(fake_controller.url))
    clock = ManualClock()
    agent = HeartbeatAgent(
        settings,
        runner,
        ControllerClient(dead_controller_url),
        trainer_id="t1",
        url="u",
        clock=clock,
    )
    try:
        job = runner.start(waiting_dispatch("j1"))
        # The job's process is up and waiting on the (restarting) controller for its dataset.
        fake_controller.wait_for(lambda: 503 in fake_controller.dataset_answers, timeout=30)
        deadline = clock() + 1.5  # three lease timeouts of silence, on the agent's clock
        while clock() < deadline:
            assert agent.beat_once() is False
            clock.advance(0.1)
        runner.poll()  # the runner's view of its job after the silence
        assert job.phase is JobPhase.RUNNING
        assert agent.last_success_at is None
        assert agent.consecutive_failures >= 2
        # back-off stays short enough to re-attach within the lease once the controller is back
        assert agent.next_delay_s() <= max(settings.heartbeat_interval_s, 0.5 / 4)
    finally:
        runner.shutdown()


def test_background_loop_keeps_beating(
    fake_controller: Any, make_settings: Callable[..., Settings]
):
    agent, runner = make_agent(make_settings(fake_controller.url))
    agent.interval_s = 0.05
    agent.start()
    try:
        fake_controller.wait_for(lambda: len(fake_controller.heartbeats) >= 2, timeout=10)
    finally:
        agent.stop()
        runner.shutdown()


def test_identity_and_announced_address(make_settings: Callable[..., Settings]):
    settings = make_settings("http://c:1", trainer_id="", trainer_url="")
    assert make_trainer_id(settings) != make_trainer_id(settings)
    assert make_trainer_id(settings.with_overrides(trainer_id="fixed")) == "fixed"
    assert announced_url(settings.with_overrides(train_host="10.1.2.3", train_port=9)) == (
        "http://10.1.2.3:9"
    )
    wildcard = announced_url(settings.with_overrides(train_host="0.0.0.0", train_port=9))
    assert wildcard.endswith(":9") and "0.0.0.0" not in wildcard
    assert announced_url(settings.with_overrides(trainer_url="http://t:5/")) == "http://t:5"
