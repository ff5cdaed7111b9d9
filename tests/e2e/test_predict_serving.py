"""Predict on a real controller of several gunicorn workers (the default pipeline of
``controller/predictor.py``):

- a worker killed (``kill -9``) while it holds predict requests loses no other request and answers
  none twice: every client call ends exactly once, in a 200 carrying its own rows or, for the
  requests the dead worker held, a connection error (predict is read-only, so a client retries
  it safely); the surviving worker keeps serving, and gunicorn replaces the dead one;
- a training job starts, reports progress and succeeds on its first attempt (its trainer's
  heartbeats kept its lease) while 32 clients keep predicting.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from chaos_support import publish_model_by_hand
from cluster import Cluster, ServerProcess, living_group_members
from support import metric_value, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def examples(rows: int, seed: int) -> list[Any]:
    """``rows`` normalized 1x8x8 examples (the digits model's input)."""
    values = np.random.default_rng(seed).normal(size=(rows, 1, 8, 8)).astype(np.float32)
    return values.tolist()


def workers_of(controller: ServerProcess) -> set[int]:
    """The pids of the controller's gunicorn workers (its process group minus the master)."""
    return set(living_group_members(controller.pid)) - {controller.pid}


def accepted_connections(pid: int, port: int) -> int:
    """Client connections to ``port`` that process ``pid`` has accepted and not closed (its
    established sockets, from /proc): requests it holds, whatever their stage."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            established = fields[3] == "01"
            if local_port == port and established and fields[9] in inodes:
                held += 1
    return held


class PredictLoad:
    """``clients`` threads predicting in a loop, each on a fresh connection per request and with
    its own number of rows; every call's one outcome is counted."""

    def __init__(self, url: str, clients: int, rows: Callable[[int], int]) -> None:
        self.url = url
        self.rows = rows
        self.stop = threading.Event()
        self.calls = 0
        self.outcomes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), name=f"client-{i}")
            for i in range(clients)
        ]

    def __enter__(self) -> PredictLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def ok(self) -> int:
        with self._lock:
            return self.outcomes["200"]

    def _client(self, index: int) -> None:
        rows = self.rows(index)
        body = {"examples": examples(rows, seed=index)}
        while not self.stop.is_set():
            with self._lock:
                self.calls += 1
            try:
                answer = requests.post(
                    self.url, json=body, headers={"Connection": "close"}, timeout=60
                )
                outcome = str(answer.status_code)
                if answer.status_code == 200 and len(answer.json()["predictions"]) != rows:
                    outcome = "200 with another request's rows"
                elif answer.status_code == 503 and "Retry-After" in answer.headers:
                    outcome = "503 + Retry-After"
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                # Refused, reset, or cut off in the middle of the answer's body.
                outcome = "connection error"
            except requests.Timeout:
                outcome = "no answer"
            except requests.RequestException as exc:  # counted, so the sums below show it
                outcome = f"other {type(exc).__name__}"
            with self._lock:
                self.outcomes[outcome] += 1


def test_a_worker_killed_while_it_holds_requests_loses_no_other_request(
    cluster: Cluster, tmp_path: Path
) -> None:
    # A long lease: the model is trained in this process (seconds) while its fake trainer waits.
    env = {"GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "8", "LEASE_TIMEOUT_S": "300"}
    controller = cluster.start_controller(env=env)
    model_id = publish_model_by_hand(tmp_path, controller.url, cluster.client())
    port = int(controller.url.rsplit(":", 1)[1])
    url = f"{controller.url}/api/v1/models/{model_id}/predict"
    victim, survivor = sorted(
        wait_until(
            lambda: len(workers_of(controller)) == 2 and workers_of(controller),
            30,
            what="two workers",
        )
    )

    with PredictLoad(url, clients=12, rows=lambda i: 1 + i % 16) as load:
        wait_until(lambda: load.ok() >= 20, 60, what="the load to get going")
        # Freeze the victim while it holds requests (then they cannot finish), and kill it.
        held = 0
        while not held:
            wait_until(
                lambda: accepted_connections(victim, port),
                60,
                interval=0.002,
                what="the victim to accept a request",
            )
            os.kill(victim, signal.SIGSTOP)
            held = accepted_connections(victim, port)
            if not held:  # it finished them between the two looks: try again
                os.kill(victim, signal.SIGCONT)
        os.kill(victim, signal.SIGKILL)
        ok_at_kill = load.ok()
        wait_until(lambda: load.ok() >= ok_at_kill + 50, 60, what="answers after the kill")
        wait_until(lambda: len(workers_of(controller)) == 2, 60, what="a replacement worker")

    print(f"\nheld by the killed worker: {held}; outcomes: {dict(load.outcomes)}")
    assert sum(load.outcomes.values()) == load.calls  # every call ended, exactly once
    assert set(load.outcomes) <= {"200", "connection error", "503 + Retry-After"}, load.outcomes
    # Only requests the dead worker held can be lost, and the client is told (it may retry).
    assert load.outcomes["connection error"] <= held
    assert survivor in workers_of(controller)
    for seed in range(10):  # and the controller serves normally afterwards
        answer = requests.post(url, json={"examples": examples(3, seed)}, timeout=30)
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 3


def _batches_of_several_rows(controller: ServerProcess) -> float:
    """Forward passes this controller ran on more than one row (requests merged)."""
    exposition = requests.get(f"{controller.url}/metrics", timeout=10).text
    total = metric_value(exposition, "cnnswarm_predict_batch_size_count") or 0.0
    single = metric_value(exposition, "cnnswarm_predict_batch_size_bucket", le="1.0") or 0.0
    return total - single


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_a_training_job_progresses_normally_under_predict_load(
    cluster: Cluster, worker_class: str
) -> None:
    controller = cluster.start_controller(  # 2 workers: the default
        env={"GUNICORN_THREADS": "16", "GUNICORN_WORKER_CLASS": worker_class}
    )
    cluster.start_trainer()
    client = cluster.client()
    first = client.submit_job(
        dataset="digits",
        model_type="SmallConvNet",
        example_idxs=[0, 200],
        train_opts={"num_epochs": 1},
    )
    assert client.wait_for_job(first["id"], timeout=120)["state"] == "succeeded"
    url = f"{controller.url}/api/v1/models/{first['model_id']}/predict"

    progress_seen: list[float] = []
    with PredictLoad(url, clients=32, rows=lambda i: 1) as load:
        wait_until(lambda: load.ok() >= 32, 60, what="the predict load to get going")
        job = client.submit_job(
            dataset="digits",
            model_type="SmallConvNet",
            example_idxs=[0, 600],
            train_opts={"num_epochs": 4},
        )
        ok_at_submit = load.ok()
        done = client.wait_for_job(
            job["id"], timeout=180, on_update=lambda j: progress_seen.append(j["progress"])
        )
        ok_during_job = load.ok() - ok_at_submit

    print(
        f"\npredict outcomes: {dict(load.outcomes)}; {ok_during_job} answered during the job; "
        f"progress seen: {sorted(set(progress_seen))}"
    )
    assert done["state"] == "succeeded", done
    assert done["attempt"] == 1  # its lease never lapsed: the heartbeats kept arriving
    assert len({p for p in progress_seen if 0 < p < 1}) >= 2  # progress reported on the way
    assert ok_during_job > 0  # the load really ran alongside
    assert set(load.outcomes) == {"200"}, load.outcomes  # c=32 is served, none refused
    # and concurrent requests were merged into batches (metrics are flushed every second)
    wait_until(lambda: _batches_of_several_rows(controller) > 0, 10, what="merged batches")
    # gevent patched the master before anything took ssl (or a lock) unpatched
    assert "MonkeyPatchWarning" not in controller.log_path.read_text(errors="replace")
