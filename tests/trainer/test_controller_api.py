"""The trainer's controller client against a real (fake) controller: cache, retries, fencing."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cnnswarm.errors import NotFound, StaleAttempt
from cnnswarm.ml.datasets.base import ArrayDataset
from cnnswarm.protocol import MAX_ERROR_CHARS, Heartbeat
from cnnswarm.trainer.controller_api import (
    ControllerClient,
    ControllerUnavailable,
    RetriesAborted,
    RetryPolicy,
)

pytestmark = pytest.mark.timeout(60)

FAST = RetryPolicy(deadline_s=None, first_delay_s=0.05, max_delay_s=0.2)


def test_dataset_is_cached_by_etag(fake_controller: Any, tiny: ArrayDataset, tmp_path: Path):
    fake_controller.add_dataset("tiny", tiny, tmp_path)
    client = ControllerClient(fake_controller.url)
    cache = tmp_path / "cache"

    first = client.fetch_dataset("tiny", cache)
    assert ArrayDataset.load_npz(first).info() == tiny.info()
    second = client.fetch_dataset("tiny", cache)
    assert second == first
    assert fake_controller.dataset_answers == [200, 304]

    # A changed dataset (new ETag) is downloaded again.
    fake_controller.add_dataset("tiny", tiny.subset([0, 10]), tmp_path)
    third = client.fetch_dataset("tiny", cache)
    assert fake_controller.dataset_answers == [200, 304, 200]
    assert ArrayDataset.load_npz(third).info()["num_train"] == 10
    assert not list(cache.rglob("*.tmp"))  # no temp files left behind


def test_unknown_dataset_is_not_found(fake_controller: Any, tmp_path: Path):
    with pytest.raises(NotFound, match="no dataset nope"):
        ControllerClient(fake_controller.url).fetch_dataset("nope", tmp_path)


def test_writes_wait_for_a_restarting_controller(fake_controller: Any):
    fake_controller.maintenance = True
    client = ControllerClient(fake_controller.url)
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            client.post_result("j1", 1, b"model", policy=FAST)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=publish)
    thread.start()
    # The controller stays "down" for several tries; the client keeps trying.
    fake_controller.wait_for(lambda: fake_controller.maintenance_answers >= 3, timeout=10)
    assert "j1" not in fake_controller.results and thread.is_alive()
    fake_controller.maintenance = False
    thread.join(10)
    assert errors == []
    assert fake_controller.results["j1"] == (1, b"model")


def test_stale_attempt_is_raised_not_retried(fake_controller: Any):
    fake_controller.owner_attempt["j1"] = 2
    client = ControllerClient(fake_controller.url)
    with pytest.raises(StaleAttempt):
        client.put_checkpoint("j1", 1, b"ckpt", policy=FAST)
    with pytest.raises(StaleAttempt):
        client.post_failure("j1", 1, "boom", False, policy=FAST)
    assert fake_controller.checkpoints == {} and fake_controller.failures == []


def test_retries_give_up_at_the_deadline_or_when_stopped(dead_controller_url: str):
    started = time.monotonic()
    with pytest.raises(ControllerUnavailable):
        ControllerClient(dead_controller_url).put_checkpoint(
            "j1", 1, b"x", policy=RetryPolicy(deadline_s=0.5, first_delay_s=0.05)
        )
    assert time.monotonic() - started < 5

    stop = threading.Event()
    client = ControllerClient(dead_controller_url, should_stop=stop.is_set)
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(RetriesAborted):
        client.get_checkpoint("j1", policy=FAST)


def test_token_is_sent(fake_controller: Any):
    fake_controller.required_token = "tok"
    assert ControllerClient(fake_controller.url, "tok").get_checkpoint("j1") is None
    assert fake_controller.checkpoint_gets == ["j1"]


def test_several_controllers_fail_over(
    fake_controller: Any, dead_controller_url: str, tiny: ArrayDataset, tmp_path: Path
):
    fake_controller.add_dataset("tiny", tiny, tmp_path)
    client = ControllerClient(f"{dead_controller_url}, {fake_controller.url}/")
    assert client.base_url == dead_controller_url
    # A heartbeat is tried once: it fails on the dead controller and moves on ...
    beat = Heartbeat(trainer_id="t1", url="http://t1", slots=1)
    with pytest.raises(ControllerUnavailable):
        client.heartbeat(beat)
    # ... so the next one reaches the live one.
    assert client.heartbeat(beat).drop == []
    # Retried calls fail over within one call.
    client = ControllerClient(f"{dead_controller_url},{fake_controller.url}")
    path = client.fetch_dataset("tiny", tmp_path / "cache", policy=FAST)
    assert ArrayDataset.load_npz(path).info() == tiny.info()


@pytest.mark.parametrize(
    "answer",
    [
        {"drop": [{"job_id": "j1"}], "lease_timeout_s": 10.0, "heartbeat_interval_s": 1.0},
        {"drop": [], "lease_timeout_s": 0, "heartbeat_interval_s": 1.0},
        {"drop": [], "lease_timeout_s": 10.0, "heartbeat_interval_s": 1.0, "more": 1},
    ],
)
def test_a_heartbeat_answer_that_does_not_fit_is_a_failed_heartbeat(
    fake_controller: Any, answer: dict[str, Any]
):
    fake_controller.heartbeat_answer = answer
    client = ControllerClient(fake_controller.url)
    with pytest.raises(ControllerUnavailable, match="does not fit"):
        client.heartbeat(Heartbeat(trainer_id="t1", url="http://t1", slots=1))


def test_a_failure_report_is_sent_as_the_protocol_declares(fake_controller: Any):
    client = ControllerClient(fake_controller.url)
    client.post_failure("j1", 2, "x" * (MAX_ERROR_CHARS + 1), True, policy=FAST)
    [failure] = fake_controller.failures
    cut = "x" * MAX_ERROR_CHARS
    assert failure == {"job_id": "j1", "attempt": 2, "error": cut, "retryable": True}
