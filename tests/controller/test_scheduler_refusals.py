"""The scheduler offers a job to the next trainer when one refuses it (regression: a trainer
still wrapping up a finished job answered 409 round after round while another sat idle)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from flask.testing import FlaskClient

from cnnswarm.controller.context import ControllerContext


class _Trainer(BaseHTTPRequestHandler):
    """A minimal trainer ``/train`` endpoint answering a fixed status code."""

    status = 202
    received: list[dict[str, object]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append(body)
        payload = json.dumps({"status": {"initiated": True}}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


def _serve(status: int) -> tuple[ThreadingHTTPServer, list[dict[str, object]]]:
    received: list[dict[str, object]] = []
    handler = type("Handler", (_Trainer,), {"status": status, "received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


@pytest.fixture
def trainers() -> Iterator[dict[str, tuple[str, list[dict[str, object]]]]]:
    busy, busy_got = _serve(409)
    idle, idle_got = _serve(202)
    try:
        yield {
            "a-busy": (f"http://127.0.0.1:{busy.server_address[1]}", busy_got),
            "b-idle": (f"http://127.0.0.1:{idle.server_address[1]}", idle_got),
        }
    finally:
        for server in (busy, idle):
            server.shutdown()
            server.server_close()


def test_a_refused_job_goes_to_the_next_trainer_in_the_same_round(
    client: FlaskClient,
    context: ControllerContext,
    trainers: dict[str, tuple[str, list[dict[str, object]]]],
) -> None:
    for trainer_id, (url, _) in trainers.items():
        context.stores.trainers.heartbeat(trainer_id, url, 1, [])
    job = client.post("/api/v1/jobs", json={"dataset": "digits"}).json
    assert job is not None

    dispatched = context.scheduler.tick()

    assert [j.id for j in dispatched] == [job["id"]]
    assert len(trainers["a-busy"][1]) == 1  # asked first (tie broken by id), refused
    assert [b["job_id"] for b in trainers["b-idle"][1]] == [job["id"]]
    stored = context.stores.jobs.get(job["id"])
    assert (stored.state.value, stored.trainer_id, stored.attempt) == ("running", "b-idle", 1)
