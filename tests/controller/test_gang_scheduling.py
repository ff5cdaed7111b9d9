"""Gang scheduling (``controller/gang.py``): a data-parallel job starts on N trainers at once
or waits, says why it waits, holds the free slots against the one-worker jobs queued behind it,
and loses its attempt as a whole when one member stops renewing its lease. The trainers are
minimal HTTP servers that accept every dispatch (rank 0 answers a rendezvous port)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from cnnswarm.config import Settings
from cnnswarm.controller.context import ControllerContext
from cnnswarm.store import db
from support import free_port

RENDEZVOUS_PORT = 4242
Received = list[dict[str, Any]]


class _Trainer(BaseHTTPRequestHandler):
    """Accepts every POST and records its JSON body (with ``"path"``); a dispatch of rank 0
    of a gang is answered with ``RENDEZVOUS_PORT``; every GET is a 200 (``/healthz``)."""

    received: Received

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.loads(raw) if raw else {}
        self.received.append({**body, "path": self.path})
        answer: dict[str, Any] = {"status": {"initiated": True}, "job_id": body.get("job_id", "x")}
        if body.get("world_size", 1) > 1 and body.get("rank") == 0:
            answer["rendezvous_port"] = RENDEZVOUS_PORT
        payload = json.dumps(answer).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # /healthz
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A long lease: a registered trainer stays alive however slow the test runs (the tests
    that lose a member or a trainer set its lease or heartbeat in the past)."""
    return Settings(home_dir=tmp_path / "home", lease_timeout_s=300.0)


@pytest.fixture
def start_trainer(context: ControllerContext) -> Iterator[Callable[[str], Received]]:
    """Start a fake trainer and register it (one slot); returns what it receives."""
    servers: list[ThreadingHTTPServer] = []

    def start(trainer_id: str) -> Received:
        received: Received = []
        handler = type("Handler", (_Trainer,), {"received": received})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        context.stores.trainers.heartbeat(trainer_id, url, 1, [])
        return received

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def submit(client: FlaskClient, **body: Any) -> dict[str, Any]:
    answer = client.post("/api/v1/jobs", json={"dataset": "digits", **body})
    assert answer.status_code == 202, answer.json
    assert answer.json is not None
    return answer.json


def dispatches(received: Received) -> Received:
    return [body for body in received if body["path"] == "/train"]


def test_a_gang_starts_on_all_its_trainers_at_once(
    client: FlaskClient, context: ControllerContext, start_trainer: Callable[[str], Received]
) -> None:
    first, second = start_trainer("t1"), start_trainer("t2")
    job = submit(client, workers=2)
    assert job["workers"] == 2 and job["min_workers"] == 2

    assert [j.id for j in context.scheduler.tick()] == [job["id"]]

    (rank0,) = dispatches(first)
    (rank1,) = dispatches(second)
    assert (rank0["rank"], rank0["world_size"], rank0["master_port"]) == (0, 2, None)
    assert (rank1["rank"], rank1["world_size"]) == (1, 2)
    assert (rank1["master_addr"], rank1["master_port"]) == ("127.0.0.1", RENDEZVOUS_PORT)
    assert rank0["attempt"] == rank1["attempt"] == 1
    shown = client.get(f"/api/v1/jobs/{job['id']}").json
    assert shown["state"] == "running" and shown["trainer"] == "t1"
    assert shown["gang"] == ["t1", "t2"]


def test_a_gang_waits_for_enough_trainers_and_says_so(
    client: FlaskClient, context: ControllerContext, start_trainer: Callable[[str], Received]
) -> None:
    first = start_trainer("t1")
    job = submit(client, workers=2)
    assert context.scheduler.tick() == []
    assert dispatches(first) == []
    waiting = client.get(f"/api/v1/jobs/{job['id']}").json
    assert waiting["waiting_reason"] == "needs 2 free trainers, 1 free"

    second = start_trainer("t2")  # a second trainer registers
    assert [j.id for j in context.scheduler.tick()] == [job["id"]]
    assert len(dispatches(first)) == len(dispatches(second)) == 1


def test_a_trainer_that_does_not_answer_is_left_out_of_the_gang(
    client: FlaskClient, context: ControllerContext, start_trainer: Callable[[str], Received]
) -> None:
    # "a-dead" looks alive (a fresh heartbeat) and would be chosen first, but is gone.
    context.stores.trainers.heartbeat("a-dead", f"http://127.0.0.1:{free_port()}", 1, [])
    first, second = start_trainer("t1"), start_trainer("t2")
    job = submit(client, workers=2)
    assert [j.id for j in context.scheduler.tick()] == [job["id"]]
    running = context.stores.jobs.get(job["id"])
    assert (running.attempt, running.trainer_id) == (1, "t1")  # no attempt lost on it
    assert len(dispatches(first)) == len(dispatches(second)) == 1


def test_a_waiting_gang_holds_freed_slots_against_jobs_behind_it(
    client: FlaskClient, context: ControllerContext, start_trainer: Callable[[str], Received]
) -> None:
    start_trainer("t1"), start_trainer("t2")
    busy = submit(client)
    assert [j.id for j in context.scheduler.tick()] == [busy["id"]]  # one trainer now busy
    gang = submit(client, workers=2)
    behind = submit(client)  # would fit on the idle trainer

    assert context.scheduler.tick() == []  # the idle trainer's slot is kept for the gang
    assert context.stores.jobs.get(behind["id"]).state.value == "queued"

    running = context.stores.jobs.get(busy["id"])
    context.stores.jobs.fail(running.id, running.attempt, "done with it")
    assert [j.id for j in context.scheduler.tick()] == [gang["id"]]


def test_a_gang_larger_than_the_live_trainers_does_not_hold_the_queue(
    client: FlaskClient, context: ControllerContext, start_trainer: Callable[[str], Received]
) -> None:
    start_trainer("t1"), start_trainer("t2")
    submit(client, workers=3)
    behind = submit(client)
    assert [j.id for j in context.scheduler.tick()] == [behind["id"]]


def test_a_lost_member_ends_the_attempt_for_the_whole_gang(
    client: FlaskClient, context: ControllerContext, start_trainer: Callable[[str], Received]
) -> None:
    start_trainer("t1"), start_trainer("t2")
    job = submit(client, workers=2)
    context.scheduler.tick()
    member = [{"job_id": job["id"], "attempt": 1, "progress": 0.0}]
    # Both members renew: nothing is dropped (rank 1's lease is its gang row's).
    for trainer_id in ("t1", "t2"):
        assert heartbeat(client, context, trainer_id, member)["drop"] == []

    lose_rank_1_and_its_trainer(context)
    context.scheduler.tick()

    requeued = client.get(f"/api/v1/jobs/{job['id']}").json
    assert requeued["state"] == "queued"  # a gang of 2 does not fit on t1 alone
    assert "rank 1 (trainer t2) stopped renewing the lease of attempt 1" in requeued["error"]
    answer = heartbeat(client, context, "t1", member)
    assert [drop["job_id"] for drop in answer["drop"]] == [job["id"]]  # rank 0 told to stop


def lose_rank_1_and_its_trainer(context: ControllerContext) -> None:
    """As if trainer t2, rank 1, had been killed a lease ago."""
    with context.stores.engine.begin() as conn:
        conn.execute(
            update(db.gang_members)
            .values(lease_expires_at=0.0)
            .where(db.gang_members.c.trainer_id == "t2")
        )
        conn.execute(update(db.trainers).values(last_heartbeat=0.0).where(db.trainers.c.id == "t2"))


def test_a_resumed_gang_may_run_smaller_down_to_min_workers(
    client: FlaskClient, context: ControllerContext, start_trainer: Callable[[str], Received]
) -> None:
    first, _ = start_trainer("t1"), start_trainer("t2")
    job = submit(client, workers=2, min_workers=1)
    context.scheduler.tick()
    lose_rank_1_and_its_trainer(context)
    context.scheduler.tick()  # ends attempt 1, and starts attempt 2 on t1 alone
    running = context.stores.jobs.get(job["id"])
    assert (running.state.value, running.attempt, running.trainer_id) == ("running", 2, "t1")
    resumed = dispatches(first)[-1]
    assert (resumed["attempt"], resumed["world_size"]) == (2, 1)


def test_cancel_reaches_every_member(
    client: FlaskClient, context: ControllerContext, start_trainer: Callable[[str], Received]
) -> None:
    first, second = start_trainer("t1"), start_trainer("t2")
    job = submit(client, workers=2)
    context.scheduler.tick()
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200
    for received in (first, second):
        assert [b["path"] for b in received if b["path"].endswith("/cancel")] == [
            f"/jobs/{job['id']}/cancel"
        ]


def test_min_workers_above_workers_is_refused(client: FlaskClient) -> None:
    answer = client.post("/api/v1/jobs", json={"dataset": "digits", "workers": 2, "min_workers": 3})
    assert answer.status_code == 400 and answer.json["field"] == "min_workers"
    answer = client.post("/api/v1/jobs", json={"dataset": "digits", "workers": 0})
    assert answer.status_code == 400 and answer.json["field"] == "workers"


def heartbeat(
    client: FlaskClient, context: ControllerContext, trainer_id: str, jobs: list[dict[str, Any]]
) -> Any:
    trainer = context.stores.trainers.get(trainer_id)
    assert trainer is not None
    body = {"trainer_id": trainer_id, "url": trainer.url, "slots": 1, "jobs": jobs}
    token = context.settings.api_token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = client.post("/internal/v1/heartbeat", json=body, headers=headers)
    assert answer.status_code == 200, answer.json
    return answer.json
