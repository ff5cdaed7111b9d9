"""A small real HTTP server speaking just enough of API v1 for the client and CLI tests.

Canned but realistic answers; it records what it received (headers, bodies, files) so tests can
check how the client built its requests. Served by werkzeug in a thread on an ephemeral port.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer, make_server

CLASSES = ["plane", "car", "bird"]
BUILTINS = [
    {"id": "cifar10", "name": "cifar10", "classes": CLASSES, "num_train": 50000,
     "num_test": 10000, "shape": [3, 32, 32]},
    {"id": "digits", "name": "digits", "classes": [str(d) for d in range(10)],
     "num_train": 1437, "num_test": 360, "shape": [1, 8, 8]},
]  # fmt: skip


@dataclass
class FakeState:
    """What the fake server holds and what it has seen."""

    token: str = ""
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    # The events stream pauses after its first event until a test sets this.
    release_stream: threading.Event = field(default_factory=threading.Event)
    stream_pauses: bool = False
    # Set when the pause ended by timeout: the client did not see the first event in time.
    stream_wait_timed_out: bool = False


def _error(status: int, exception: str, error: str, field_name: str | None = None) -> Response:
    body: dict[str, Any] = {"exception": exception, "error": error}
    if field_name:
        body["field"] = field_name
    response = jsonify(body)
    response.status_code = status
    return response


def _job(job_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": job_id,
        "state": "queued",
        "dataset": body["dataset"],
        "model_type": body.get("model_type") or "ResNet8",
        "model_id": body.get("model_id") or f"model-{job_id}",
        "train_opts": {"num_epochs": 2, **(body.get("train_opts") or {})},
        "example_idxs": body.get("example_idxs"),
        "progress": 0.0,
        "epoch": None,
        "metrics": [],
        "trainer": None,
        "attempt": 0,
        "error": None,
        "queue_position": 0,
        "waiting_reason": "no free trainer slot",
    }


def _advance(job: dict[str, Any], step: int) -> dict[str, Any]:
    """The job as it looks after ``step`` updates: running epoch 1, 2, then succeeded."""
    job = dict(job)
    epochs = [
        {"epoch": 1, "train_loss": 1.9, "train_accuracy": 0.31, "test_accuracy": 0.35},
        {"epoch": 2, "train_loss": 1.2, "train_accuracy": 0.58, "test_accuracy": 0.61},
    ]
    if step >= 1:
        job.update(state="running", trainer="http://127.0.0.1:1", attempt=1, epoch=1,
                   progress=0.25, queue_position=None, waiting_reason=None)  # fmt: skip
    if step >= 2:
        job.update(epoch=2, progress=0.75, metrics=epochs[:1])
    if step >= 3:
        job.update(state="succeeded", progress=1.0, metrics=epochs)
    return job


def create_fake_app(state: FakeState) -> Flask:
    """The fake controller's routes."""
    app = Flask("fake_controller")

    @app.before_request
    def record_and_authenticate() -> Response | None:
        state.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": dict(request.headers),
                "args": request.args.to_dict(),
            }
        )
        authorized = request.headers.get("Authorization") == f"Bearer {state.token}"
        if state.token and request.path.startswith("/api/") and not authorized:
            return _error(401, "Unauthorized", "missing or wrong API token")
        return None

    @app.get("/healthz")
    def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> Any:
        return {"ready": True}

    @app.get("/status")
    def status() -> Any:
        return {
            "train_jobs": [
                {"url": "http://10.0.0.2:48516/", "trainer_id": "t-1", "slots": 1,
                 "free_slots": 0, "jobs": {"j-1": {"duration": 3.0, "progress": 40,
                                                   "complete": False}}},
            ],
            "queued": 2,
            "job_counts": {"queued": 2, "running": 1},
        }  # fmt: skip

    @app.post("/api/v1/datasets")
    def upload_dataset() -> Any:
        upload = request.files.get("file")
        if upload is None:
            return _error(400, "InvalidInputArg", "send the dataset as multipart 'file'", "file")
        content = upload.read()
        state.requests[-1]["upload"] = {"filename": upload.filename, "size": len(content),
                                        "name": request.form.get("name")}  # fmt: skip
        name = request.form.get("name") or (upload.filename or "upload").split(".")[0]
        record = {"id": f"ds-{name}", "name": name, "classes": ["cat", "dog"],
                  "num_train": 8, "num_test": 2, "shape": [3, 16, 16]}  # fmt: skip
        return record, 201

    @app.get("/api/v1/datasets")
    def list_datasets() -> Any:
        return {"datasets": BUILTINS}

    @app.get("/api/v1/datasets/<dataset_id>")
    def get_dataset(dataset_id: str) -> Any:
        for dataset in BUILTINS:
            if dataset["id"] == dataset_id:
                return dataset
        return _error(404, "NotFound", f"no dataset {dataset_id!r}")

    @app.delete("/api/v1/datasets/<dataset_id>")
    def delete_dataset(dataset_id: str) -> Any:
        return "", 204

    @app.post("/api/v1/jobs")
    def submit_job() -> Any:
        body = request.get_json()
        state.requests[-1]["json"] = body
        unknown = set(body.get("train_opts") or {}) - {"num_epochs", "lr", "batch_size"}
        if unknown:
            key = sorted(unknown)[0]
            return _error(400, "InvalidInputArg", f"unknown train option {key!r}",
                          f"train_opts.{key}")  # fmt: skip
        job_id = f"job-{len(state.jobs) + 1}"
        if body.get("model_id") == "nostream":
            job_id = "nostream"
        state.jobs[job_id] = _job(job_id, body)
        return state.jobs[job_id], 202

    @app.get("/api/v1/jobs")
    def list_jobs() -> Any:
        wanted = request.args.get("state")
        return {"jobs": [j for j in state.jobs.values() if not wanted or j["state"] == wanted]}

    @app.get("/api/v1/jobs/<job_id>")
    def get_job(job_id: str) -> Any:
        if job_id not in state.jobs:
            return _error(404, "NotFound", f"no job {job_id!r}")
        state.polls[job_id] = state.polls.get(job_id, 0) + 1
        return _advance(state.jobs[job_id], state.polls[job_id])

    @app.post("/api/v1/jobs/<job_id>/cancel")
    def cancel_job(job_id: str) -> Any:
        if job_id not in state.jobs:
            return _error(404, "NotFound", f"no job {job_id!r}")
        state.jobs[job_id]["state"] = "cancelled"
        return state.jobs[job_id]

    @app.get("/api/v1/jobs/<job_id>/events")
    def job_events(job_id: str) -> Any:
        if job_id == "nostream":
            return _error(404, "NotFound", "no such route")
        if job_id not in state.jobs:
            return _error(404, "NotFound", f"no job {job_id!r}")
        base = state.jobs[job_id]

        def stream() -> Iterator[str]:
            import json

            yield ": keep-alive\n\n"
            yield f"event: progress\ndata: {json.dumps(_advance(base, 1))}\n\n"
            if state.stream_pauses and not state.release_stream.wait(timeout=5):
                state.stream_wait_timed_out = True
            # A multi-line data field, CRLF endings and an id line, as SSE allows.
            text = json.dumps(_advance(base, 2), indent=1).replace("\n", "\r\ndata: ")
            yield f"id: 2\r\nevent: progress\r\ndata: {text}\r\n\r\n"
            yield "event: progress\ndata: not json\n\n"
            yield f"event: end\ndata: {json.dumps(_advance(base, 3))}\n\n"

        return Response(stream(), mimetype="text/event-stream")

    @app.get("/api/v1/models")
    def list_models() -> Any:
        return {"models": [{"id": "m-1", "model_type": "ResNet8", "dataset": "cifar10",
                            "classes": CLASSES, "aliases": ["prod"], "created": 1700000000.5,
                            "metrics": [{"epoch": 1, "test_accuracy": 0.61}]}]}  # fmt: skip

    @app.get("/api/v1/models/<model_id>")
    def get_model(model_id: str) -> Any:
        if model_id not in ("m-1", "prod"):
            return _error(404, "NotFound", f"no model or alias {model_id!r}")
        return {"id": "m-1", "model_type": "ResNet8", "classes": CLASSES}

    @app.delete("/api/v1/models/<model_id>")
    def delete_model(model_id: str) -> Any:
        return {"deleted": model_id}

    @app.put("/api/v1/aliases/<alias>")
    def set_alias(alias: str) -> Any:
        body = request.get_json()
        state.requests[-1]["json"] = body
        return {"alias": alias, "model_id": body["model_id"]}

    @app.post("/api/v1/models/<model_id>/predict")
    def predict(model_id: str) -> Any:
        if model_id not in ("m-1", "prod"):
            return _error(404, "NotFound", f"no model or alias {model_id!r}")
        top_k = int(request.args.get("top_k", "1"))
        if request.files:
            files = request.files.getlist("files")
            names = [f.filename for f in files]
            payloads = [f.read() for f in files]
            state.requests[-1]["files"] = names
        else:
            body = request.get_json()
            state.requests[-1]["json"] = body
            payloads = body.get("instances") or body.get("examples")
        for index, payload in enumerate(payloads):
            if payload == b"not an image":
                return _error(400, "InvalidInputArg", f"files[{index}] is not an image",
                              f"files[{index}]")  # fmt: skip
        predictions = []
        for index in range(len(payloads)):
            ranked = [
                {"class_idx": (index + r) % 3, "class_tag": CLASSES[(index + r) % 3],
                 "probability": round(0.7 / (r + 1), 4)}
                for r in range(top_k)
            ]  # fmt: skip
            predictions.append({**ranked[0], "top_k": ranked})
        return {"predictions": predictions}

    @app.get("/api/v1/trainers")
    def trainers() -> Any:
        return {"trainers": [{"url": "http://10.0.0.2:48516", "state": "alive", "slots": 1}]}

    return app


class FakeController:
    """The fake app served on 127.0.0.1:<ephemeral> until ``stop()``."""

    def __init__(self, token: str = "") -> None:
        self.state = FakeState(token=token)
        self.server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, create_fake_app(self.state), threaded=True
        )
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.state.release_stream.set()
        self.server.shutdown()
        self.thread.join(timeout=5)

    def last(self, path: str) -> dict[str, Any]:
        """The most recent recorded request to ``path``."""
        return next(r for r in reversed(self.state.requests) if r["path"] == path)


@pytest.fixture
def fake() -> Iterator[FakeController]:
    """A fake controller without a token."""
    server = FakeController()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake_with_token() -> Iterator[FakeController]:
    """A fake controller that demands ``Bearer s3cret`` on /api routes."""
    server = FakeController(token="s3cret")
    try:
        yield server
    finally:
        server.stop()
