"""The scheduler offers a job to the next trainer when one refuses it (regression: a trainer
still wrapping up a finished job answered 409 round after round while another sat idle), and
reaches the trainer on the path meant when it asks it to cancel."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import pytest
from flask.testing import FlaskClient

from cnnswarm.controller.context import ControllerContext
from support import serve_stub_trainer


@pytest.fixture
def trainers() -> Iterator[dict[str, tuple[str, list[dict[str, object]]]]]:
    busy, busy_got = serve_stub_trainer(409)
    idle, idle_got = serve_stub_trainer(202)
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


@pytest.mark.parametrize("hostile", ["..", "../train", "j-1?x=1", "j-1#x", "a/b", "j%2F"])
def test_a_cancel_reaches_the_trainer_with_the_job_id_as_one_segment(
    context: ControllerContext,
    trainers: dict[str, tuple[str, list[dict[str, object]]]],
    hostile: str,
) -> None:
    url, received = trainers["b-idle"]
    context.stores.trainers.heartbeat("b-idle", url, 1, [])

    context.scheduler.tell_trainer_to_cancel("b-idle", hostile)

    # requests decodes %2E back to "." on the wire, so compare the path segment by segment.
    [request] = received
    path = urlsplit(str(request["path"])).path
    assert [unquote(segment) for segment in path.split("/")] == [
        "",
        "jobs",
        hostile,
        "cancel",
    ]
