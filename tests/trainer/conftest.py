"""A small but real controller for trainer tests: a Flask app served on an ephemeral port.

It implements the controller's side of the trainer protocol (docs/internals.md) in memory,
records every call, and can be told to fence attempts (409), to fail dataset downloads (503)
or to drop jobs in heartbeat answers.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask, Response, jsonify, request

from cnnswarm.config import Settings
from cnnswarm.ml.datasets.base import ArrayDataset, Normalization
from cnnswarm.protocol import FailureReport, Heartbeat, parse
from support import serve_in_thread, wait_until


def tiny_dataset(num_train: int = 48, num_test: int = 16) -> ArrayDataset:
    """Two easy classes of 1x8x8 images (dark vs bright), for SmallConvNet."""
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 2
        x = rng.integers(0, 60, size=(n, 1, 8, 8)) + (y * 150)[:, None, None, None]
        return x.astype(np.uint8), y.astype(np.int64)

    x_train, y_train = split(num_train)
    x_test, y_test = split(num_test)
    return ArrayDataset(
        name="tiny",
        classes=["dark", "bright"],
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        normalization=Normalization(mean=(0.5,), std=(0.5,)),
    )


@dataclass
class FakeController:
    """The controller's trainer-facing state, as plain attributes tests read and set."""

    datasets: dict[str, bytes] = field(default_factory=dict)
    checkpoints: dict[str, bytes] = field(default_factory=dict)
    checkpoint_puts: list[tuple[str, int]] = field(default_factory=list)
    checkpoint_gets: list[str] = field(default_factory=list)
    results: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    dataset_answers: list[int] = field(default_factory=list)
    # Seed /train requests as they arrived: (raw body, Idempotency-Key header).
    seed_trains: list[tuple[bytes, str | None]] = field(default_factory=list)
    # job_id -> the attempt that currently owns it; writes of any other attempt get 409.
    owner_attempt: dict[str, int] = field(default_factory=dict)
    # Dataset ids whose download answers 503 (the controller "is restarting").
    unavailable_datasets: set[str] = field(default_factory=set)
    drop: list[dict[str, Any]] = field(default_factory=list)
    # When set, heartbeats get this answer instead (a controller speaking another protocol).
    heartbeat_answer: dict[str, Any] | None = None
    # While True every route answers 503 (the controller is restarting).
    maintenance: bool = False
    maintenance_answers: int = 0
    required_token: str = ""
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_dataset(self, dataset_id: str, dataset: ArrayDataset, tmp_path: Path) -> None:
        """Serve ``dataset`` under ``dataset_id`` in the npz wire format."""
        path = tmp_path / f"{dataset_id}.npz"
        dataset.save_npz(path)
        self.datasets[dataset_id] = path.read_bytes()

    def wait_for(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        """Poll ``condition`` until it holds; fail the test at the deadline."""
        wait_until(condition, timeout)


def _build_app(state: FakeController) -> Flask:
    app = Flask("fake-controller")

    @app.before_request
    def check_token() -> Any:
        if state.maintenance:
            state.maintenance_answers += 1
            return jsonify({"exception": "Unavailable"}), 503
        if state.required_token and (
            request.headers.get("Authorization") != f"Bearer {state.required_token}"
        ):
            return jsonify({"exception": "Unauthorized"}), 401
        return None

    def fenced(job_id: str, attempt: int) -> bool:
        return attempt != state.owner_attempt.get(job_id, attempt)

    @app.post("/internal/v1/heartbeat")
    def heartbeat() -> Any:
        body = request.get_json()
        parse(Heartbeat, body)  # the trainer sends what the protocol declares
        with state.lock:
            state.heartbeats.append(body)
            drop, state.drop = state.drop, []
        if state.heartbeat_answer is not None:
            return jsonify(state.heartbeat_answer)
        return jsonify({"drop": drop, "lease_timeout_s": 10.0, "heartbeat_interval_s": 1.0})

    @app.get("/internal/v1/datasets/<dataset_id>/arrays")
    def arrays(dataset_id: str) -> Any:
        if dataset_id in state.unavailable_datasets:
            state.dataset_answers.append(503)
            return jsonify({"exception": "Unavailable"}), 503
        data = state.datasets.get(dataset_id)
        if data is None:
            state.dataset_answers.append(404)
            return jsonify({"exception": "NotFound", "error": f"no dataset {dataset_id}"}), 404
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            state.dataset_answers.append(304)
            return Response(status=304, headers={"ETag": etag})
        state.dataset_answers.append(200)
        return Response(io.BytesIO(data).getvalue(), headers={"ETag": etag})

    @app.get("/internal/v1/jobs/<job_id>/checkpoint")
    def get_checkpoint(job_id: str) -> Any:
        state.checkpoint_gets.append(job_id)
        if job_id not in state.checkpoints:
            return jsonify({"exception": "NotFound"}), 404
        return Response(state.checkpoints[job_id], mimetype="application/octet-stream")

    @app.put("/internal/v1/jobs/<job_id>/checkpoint")
    def put_checkpoint(job_id: str) -> Any:
        attempt = int(request.args["attempt"])
        if fenced(job_id, attempt):
            return jsonify({"exception": "StaleAttempt", "error": "stale attempt"}), 409
        state.checkpoints[job_id] = request.get_data()
        state.checkpoint_puts.append((job_id, attempt))
        return Response(status=204)

    @app.post("/internal/v1/jobs/<job_id>/result")
    def result(job_id: str) -> Any:
        attempt = int(request.args["attempt"])
        if fenced(job_id, attempt):
            return jsonify({"exception": "StaleAttempt", "error": "stale attempt"}), 409
        state.results[job_id] = (attempt, request.get_data())
        return jsonify({"ok": True})

    @app.post("/internal/v1/jobs/<job_id>/failure")
    def failure(job_id: str) -> Any:
        body = request.get_json()
        parse(FailureReport, body)  # the trainer sends what the protocol declares
        if fenced(job_id, int(body["attempt"])):
            return jsonify({"exception": "StaleAttempt", "error": "stale attempt"}), 409
        state.failures.append({"job_id": job_id, **body})
        return jsonify({"ok": True})

    @app.post("/train")
    def seed_train() -> Any:
        body = request.get_data()
        state.seed_trains.append((body, request.headers.get("Idempotency-Key")))
        if b"NoSuchModel" in body:
            return jsonify({"exception": "InvalidInputArg", "field": "model_type"}), 400
        job_id = f"job-{len(state.seed_trains)}"
        return jsonify({"status": {"initiated": True}, "job_id": job_id, "model_id": "m"})

    return app


@pytest.fixture
def fake_controller() -> Iterator[FakeController]:
    """A running fake controller; stopped after the test."""
    state = FakeController()
    with serve_in_thread(_build_app(state)) as url:
        state.url = url
        yield state


def dead_url() -> str:
    """A URL where nothing listens (a port we bound and released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def trainer_settings(tmp_path: Path, controller_url: str, **changes: Any) -> Settings:
    """Settings for a test trainer: one slot, one torch thread, files under ``tmp_path``."""
    base = Settings(
        home_dir=tmp_path / "home",
        controller_url=controller_url,
        trainer_slots=1,
        torch_threads=1,
        force_cpu=True,
        trainer_id="trainer-test",
        trainer_url="http://127.0.0.1:1",
        heartbeat_interval_s=0.2,
        lease_timeout_s=10.0,
    )
    return base.with_overrides(**changes)


@pytest.fixture
def tiny() -> ArrayDataset:
    """The tiny two-class dataset."""
    return tiny_dataset()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """``make_settings(controller_url, **changes)``: test trainer settings under tmp_path."""

    def make(controller_url: str, **changes: Any) -> Settings:
        return trainer_settings(tmp_path, controller_url, **changes)

    return make


@pytest.fixture
def dead_controller_url() -> str:
    """A controller URL where nothing listens."""
    return dead_url()
