"""/api/v1/jobs in-process: validation, idempotency, uniqueness, cancel, listing, events,
and the trainer protocol's fencing through the real internal routes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from cnnswarm.controller.context import ControllerContext
from store_support import counting_statements, queue_jobs


def submit(client: FlaskClient, body: Any, **headers: str) -> Any:
    return client.post("/api/v1/jobs", json=body, headers=headers)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"dataset": "digits", "bogus": 1}, "bogus", "unknown field"),
        ({"dataset": "nope"}, "dataset", "nope"),
        ({"dataset": "digits", "model_type": "Transformer"}, "model_type", "unknown model_type"),
        ({"dataset": "digits", "model_type": "NNConvResNetRGB"}, "in_channels", "needs"),
        ({"dataset": "digits", "train_opts": {"lr": -1}}, "lr", "lr"),
        ({"dataset": "digits", "train_opts": {"num_epochs": 10**12}}, "num_epochs", "num_epochs"),
        ({"dataset": "digits", "train_opts": {"warp": 9}}, "warp", "warp"),
        ({"dataset": "digits", "train_opts": "fast"}, "train_opts", "object"),
        ({"dataset": "digits", "example_idxs": [5, 2]}, "example_idxs", "start < end"),
        ({"dataset": "digits", "example_idxs": [0, 10**9]}, "example_idxs", "1437"),
        ({"dataset": "digits", "example_idxs": [-1, 3]}, "example_idxs", "start"),
        ({"dataset": "digits", "example_idxs": [1]}, "example_idxs", "two integers"),
        ({"dataset": "digits", "model_id": "../etc"}, "model_id", "model_id"),
        ({"model_type": "SmallConvNet"}, "dataset", "dataset is required"),
    ],
)
def test_bad_job_requests_are_400_naming_the_field(
    client: FlaskClient, body: dict[str, Any], field: str, words: str
) -> None:
    response = submit(client, body)
    assert response.status_code == 400, response.json
    assert response.json["field"] == field
    assert words in response.json["error"]


@pytest.mark.parametrize("raw", ["{bad json", "[1, 2]", "", "null", '"text"'])
def test_malformed_bodies_are_400(client: FlaskClient, raw: str) -> None:
    response = client.post("/api/v1/jobs", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json["exception"] == "InvalidInputArg"


def test_submit_queues_a_durable_job(client: FlaskClient) -> None:
    response = submit(client, {"dataset": "digits", "model_id": "m1"})
    assert response.status_code == 202
    job = response.json
    assert job["state"] == "queued" and job["attempt"] == 0 and job["model_id"] == "m1"
    assert job["model_type"] == "SmallConvNet"  # default for 8x8 grayscale
    assert job["queue_position"] == 0 and "no trainer" in job["waiting_reason"]
    assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert client.get(f"/api/v1/jobs/{job['id']}").json["id"] == job["id"]
    assert [j["id"] for j in client.get("/api/v1/jobs?state=queued").json["jobs"]] == [job["id"]]
    assert client.get("/api/v1/jobs?state=running").json["jobs"] == []
    assert client.get("/api/v1/jobs?state=weird").status_code == 400
    assert client.get("/api/v1/jobs/job-missing").status_code == 404


def test_listing_1000_queued_jobs_takes_as_many_queries_as_10(
    client: FlaskClient, context: ControllerContext
) -> None:
    stores = context.stores
    stores.trainers.heartbeat("t1", "http://127.0.0.1:9", 2, [])
    running = submit(client, {"dataset": "digits", "model_id": "running"}).json
    assert stores.jobs.claim(stores.jobs.get(running["id"]), "t1", lease_s=30) is not None
    counts = []
    for total, new in ((10, 10), (1000, 990)):
        queue_jobs(stores.engine, new, first=total - new)
        with counting_statements(stores.engine) as statements:
            listed = client.get("/api/v1/jobs?limit=10000").json["jobs"]
        counts.append(len(statements))
        assert listed[0]["id"] == running["id"] and "queue_position" not in listed[0]
        queued = listed[1:]
        assert [job["queue_position"] for job in queued] == list(range(total))
        assert queued[0]["waiting_reason"] == "being dispatched to a trainer"
        assert queued[-1]["waiting_reason"] == f"{total - 1} job(s) ahead in the queue"
    assert counts[0] == counts[1] <= 10, counts


def test_duplicate_model_id_is_409(client: FlaskClient) -> None:
    assert submit(client, {"dataset": "digits", "model_id": "same"}).status_code == 202
    response = submit(client, {"dataset": "digits", "model_id": "same"})
    assert response.status_code == 409 and response.json["field"] == "model_id"


def test_idempotency_key(client: FlaskClient) -> None:
    first = submit(client, {"dataset": "digits"}, **{"Idempotency-Key": "abc"})
    again = submit(client, {"dataset": "digits"}, **{"Idempotency-Key": "abc"})
    assert first.status_code == 202 and again.status_code == 200
    assert first.json["id"] == again.json["id"]
    other = submit(client, {"dataset": "synthetic"}, **{"Idempotency-Key": "abc"})
    assert other.status_code == 422 and other.json["field"] == "Idempotency-Key"


def test_cancel(client: FlaskClient, context: ControllerContext) -> None:
    job = submit(client, {"dataset": "digits"}).json
    response = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200 and response.json["state"] == "cancelled"
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel").json["state"] == "cancelled"
    done = submit(client, {"dataset": "digits"}).json
    stored = context.stores.jobs.get(done["id"])
    context.stores.jobs.claim(stored, "t1", 5)
    context.stores.jobs.fail(done["id"], 1, "bad")
    assert client.post(f"/api/v1/jobs/{done['id']}/cancel").status_code == 409


def test_events_stream_ends_with_the_final_state(
    client: FlaskClient, context: ControllerContext
) -> None:
    job = submit(client, {"dataset": "digits"}).json
    client.post(f"/api/v1/jobs/{job['id']}/cancel")
    text = client.get(f"/api/v1/jobs/{job['id']}/events").get_data(as_text=True)
    assert text.startswith("event: end\ndata: {") and '"state": "cancelled"' in text
    # The end event is the job's whole answer, as GET reads it (attempts included).
    ended = json.loads(text.split("data: ", 1)[1].split("\n", 1)[0])
    assert ended == client.get(f"/api/v1/jobs/{job['id']}").json
    assert "attempts" in ended


def _heartbeat(client: FlaskClient, jobs: list[dict[str, Any]], tid: str = "t1") -> Any:
    body = {"trainer_id": tid, "url": "http://127.0.0.1:9", "slots": 1, "jobs": jobs}
    return client.post("/internal/v1/heartbeat", json=body)


def test_trainer_protocol_fences_stale_attempts(
    client: FlaskClient, context: ControllerContext, digits_model_bytes: bytes
) -> None:
    job_id = submit(client, {"dataset": "digits", "model_id": "fenced"}).json["id"]
    assert _heartbeat(client, []).status_code == 200
    assert [t["id"] for t in client.get("/api/v1/trainers").json["trainers"]] == ["t1"]
    jobs = context.stores.jobs
    context.scheduler.tick()  # become leader first (a new leader grants running jobs grace)
    first = jobs.claim(jobs.get(job_id), "t1", lease_s=-1)  # claimed, lease already expired
    assert first is not None and first.attempt == 1
    context.scheduler.tick()  # requeues it; the dispatch to 127.0.0.1:9 fails and is undone
    assert jobs.get(job_id).state.value == "queued"
    second = jobs.claim(jobs.get(job_id), "t2", lease_s=30)
    assert second is not None and second.attempt == 2

    stale = _heartbeat(client, [{"job_id": job_id, "attempt": 1, "progress": 0.5}])
    assert stale.json["drop"][0]["job_id"] == job_id and "stale" in stale.json["drop"][0]["reason"]
    put = client.put(f"/internal/v1/jobs/{job_id}/checkpoint?attempt=1", data=b"x")
    assert put.status_code == 409 and put.json["exception"] == "StaleAttempt"
    result = client.post(f"/internal/v1/jobs/{job_id}/result?attempt=1", data=digits_model_bytes)
    assert result.status_code == 409
    assert client.get(f"/internal/v1/jobs/{job_id}/checkpoint").status_code == 404
    garbage = client.put(f"/internal/v1/jobs/{job_id}/checkpoint?attempt=2", data=b"not torch")
    assert garbage.status_code == 400

    fresh = _heartbeat(client, [{"job_id": job_id, "attempt": 2, "progress": 0.25}], tid="t2")
    assert fresh.json["drop"] == []
    assert client.get(f"/api/v1/jobs/{job_id}").json["progress"] == 0.25
    odd = [{"job_id": job_id, "attempt": 2, "progress": 7, "metrics": "x"}]
    assert _heartbeat(client, odd, tid="t2").json["drop"] == []  # renewed; odd values ignored
    assert client.get(f"/api/v1/jobs/{job_id}").json["progress"] == 0.25
    ok = client.post(f"/internal/v1/jobs/{job_id}/result?attempt=2", data=digits_model_bytes)
    assert ok.status_code == 200, ok.json
    final = client.get(f"/api/v1/jobs/{job_id}").json
    assert final["state"] == "succeeded" and final["attempt"] == 2
    assert [m["id"] for m in client.get("/api/v1/models").json["models"]] == ["fenced"]


def test_failure_report_fails_the_job_with_its_error(
    client: FlaskClient, context: ControllerContext
) -> None:
    job_id = submit(client, {"dataset": "digits"}).json["id"]
    context.stores.jobs.claim(context.stores.jobs.get(job_id), "t1", lease_s=30)
    response = client.post(
        f"/internal/v1/jobs/{job_id}/failure", json={"attempt": 1, "error": "ValueError: x"}
    )
    assert response.status_code == 200
    job = client.get(f"/api/v1/jobs/{job_id}").json
    assert job["state"] == "failed" and job["error"] == "ValueError: x"


def test_api_token_guards_mutating_routes(tmp_path: Any) -> None:
    from cnnswarm.config import Settings
    from cnnswarm.controller.app import create_app

    app = create_app(Settings(home_dir=tmp_path / "h", api_token="s3cret"))
    client = app.test_client()
    assert submit(client, {"dataset": "digits"}).status_code == 401
    assert client.post("/internal/v1/heartbeat", json={}).status_code == 401
    bad = client.post(
        "/api/v1/jobs", json={"dataset": "digits"}, headers={"Authorization": "Bearer wrong"}
    )
    assert bad.status_code == 401
    good = client.post(
        "/api/v1/jobs", json={"dataset": "digits"}, headers={"Authorization": "Bearer s3cret"}
    )
    assert good.status_code == 202
    assert client.get("/api/v1/jobs").status_code == 200


def test_json_bodies_over_the_json_limit_are_413(client: FlaskClient) -> None:
    from cnnswarm.http import MAX_JSON_BYTES

    response = client.post(
        "/api/v1/jobs",
        data=b" " * (MAX_JSON_BYTES + 1),
        content_type="application/json",
    )
    assert response.status_code == 413 and "multipart" in response.json["error"]
