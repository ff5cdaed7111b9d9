"""The real controller app for the client and CLI tests, served over real HTTP, and a trainer's
side of the protocol played through the controller's real internal routes.

``LiveController`` is ``create_app(settings)`` (temp HOME_DIR, SQLite file) served by werkzeug in
a thread on 127.0.0.1:<ephemeral>; it is shut down and its stores closed in ``finally``. Its
scheduler thread does not run: ``TrainerSide`` registers a trainer by heartbeat, takes a queued
job as the scheduler would (``claim`` in the job store), reports progress in heartbeats and
publishes a real model file, so a job goes through its real states as fast as a test drives it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests

from cnnswarm.config import Settings
from cnnswarm.controller.app import create_app
from cnnswarm.controller.context import ControllerContext
from cnnswarm.ml.artifact import artifact_to_bytes
from cnnswarm.ml.datasets.registry import load_builtin
from cnnswarm.ml.train import train
from support import digits_png, image_folder_zip, serve_in_thread

TOKEN = "s3cret"
TRAINER_ID = "t-1"
# Where the played trainer says it listens: nothing does, and nothing dispatches to it.
TRAINER_URL = "http://127.0.0.1:9"

StartResponse = Callable[..., Any]


class LiveController:
    """The real controller app on 127.0.0.1:<ephemeral> until ``stop()``.

    ``requests`` lists each request's ``(method, path)``. With ``refuse_events`` the job event
    streams answer 404, as behind a proxy that does not pass streams through.
    """

    def __init__(self, home: Path, token: str = "", refuse_events: bool = False) -> None:
        self.app = create_app(Settings(home_dir=home, api_token=token, lease_timeout_s=60.0))
        self.context: ControllerContext = self.app.extensions["cnnswarm"]
        self.token = token
        self.refuse_events = refuse_events
        self.requests: list[tuple[str, str]] = []
        self._serving = ExitStack()
        # Registered first, so stop() closes the stores after the server has stopped.
        self._serving.callback(self.context.stores.close)
        self.url = self._serving.enter_context(serve_in_thread(self._serve))

    def _serve(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        path = str(environ.get("PATH_INFO", ""))
        self.requests.append((str(environ.get("REQUEST_METHOD")), path))
        if self.refuse_events and path.endswith("/events"):
            start_response("404 NOT FOUND", [("Content-Type", "text/plain")])
            return [b"no event streams here"]
        return self.app(environ, start_response)

    def stop(self) -> None:
        """Stop serving and close the stores (idempotent)."""
        self._serving.close()


class TrainerSide:
    """A trainer's calls to the controller, made by the test over HTTP."""

    def __init__(self, controller: LiveController, token: str = "") -> None:
        self.controller = controller
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        self.reports: dict[str, dict[str, Any]] = {}  # running job id -> its last report

    def heartbeat(self) -> None:
        """Register or renew this trainer (one slot) and the leases of its running jobs."""
        body = {
            "trainer_id": TRAINER_ID,
            "url": TRAINER_URL,
            "slots": 1,
            "jobs": list(self.reports.values()),
        }
        answer = self.http.post(f"{self.controller.url}/internal/v1/heartbeat", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["drop"] == [], answer.json()

    def take(self, job_id: str) -> None:
        """Start a queued job on this trainer, as the scheduler would (attempt 1)."""
        jobs = self.controller.context.stores.jobs
        claimed = jobs.claim(jobs.get(job_id), TRAINER_ID, lease_s=60.0)
        assert claimed is not None and claimed.attempt == 1, f"job {job_id} was not queued"
        self.reports[job_id] = {"job_id": job_id, "attempt": 1, "progress": 0.0, "epoch": 0}

    def report(self, job_id: str, progress: float, epoch: int, metrics: list[Any]) -> None:
        """A heartbeat with the job's progress and its metrics so far."""
        self.reports[job_id].update(progress=progress, epoch=epoch, metrics=metrics)
        self.heartbeat()

    def publish(self, job_id: str, model_file: bytes) -> None:
        """The job's result: its model file (the job succeeds)."""
        answer = self.http.post(
            f"{self.controller.url}/internal/v1/jobs/{job_id}/result?attempt=1", data=model_file
        )
        assert answer.status_code == 200, answer.text
        del self.reports[job_id]

    def run(self, job_id: str, model_file: bytes, metrics: list[Any]) -> None:
        """Take the job, report its first epoch, publish its model."""
        self.take(job_id)
        self.report(job_id, 0.5, 1, metrics[:1])
        self.publish(job_id, model_file)


class DigitsModel:
    """A SmallConvNet trained two epochs on digits: its model file and per-epoch metrics."""

    def __init__(self, model_file: bytes, metrics: list[dict[str, Any]]) -> None:
        self.file = model_file
        self.metrics = metrics


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> DigitsModel:
    dataset = load_builtin("digits", tmp_path_factory.mktemp("digits"))
    result = train("SmallConvNet", dataset, {"num_epochs": 2, "seed": 0}, threads=1)
    return DigitsModel(artifact_to_bytes(result.artifact), result.metrics)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[LiveController]:
    """The real controller app without a token."""
    server = LiveController(tmp_path / "home")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def guarded_controller(tmp_path: Path) -> Iterator[LiveController]:
    """The real controller app that demands ``Bearer s3cret`` on every write."""
    server = LiveController(tmp_path / "home", token=TOKEN)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def streamless_controller(tmp_path: Path) -> Iterator[LiveController]:
    """The real controller app whose job event streams are refused (404)."""
    server = LiveController(tmp_path / "home", refuse_events=True)
    try:
        yield server
    finally:
        server.stop()


def _registered(controller: LiveController) -> TrainerSide:
    side = TrainerSide(controller, token=TOKEN if controller.token else "")
    side.heartbeat()
    return side


@pytest.fixture
def trainer(controller: LiveController) -> TrainerSide:
    """A registered trainer with one free slot."""
    return _registered(controller)


@pytest.fixture
def trainer_for() -> Callable[[LiveController], TrainerSide]:
    """Registers a trainer with one free slot on the controller it is given."""
    return _registered


@pytest.fixture
def published(controller: LiveController, trainer: TrainerSide, digits_model: DigitsModel) -> str:
    """Model ``m-1`` (digits, 10 classes) trained by a job, with alias ``prod``."""
    answer = requests.post(
        f"{controller.url}/api/v1/jobs", json={"dataset": "digits", "model_id": "m-1"}, timeout=10
    )
    assert answer.status_code == 202, answer.text
    trainer.run(answer.json()["id"], digits_model.file, digits_model.metrics)
    answer = requests.put(
        f"{controller.url}/api/v1/aliases/prod", json={"model_id": "m-1"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return "m-1"


@pytest.fixture
def digit_files(tmp_path: Path) -> list[tuple[Path, int]]:
    """Four digit PNG files (scikit-learn's digits 0-3) and their labels."""
    files = []
    for index in range(4):
        data, label = digits_png(index)
        path = tmp_path / f"digit-{index}.png"
        path.write_bytes(data)
        files.append((path, label))
    return files


@pytest.fixture
def pets_zip(tmp_path: Path) -> Path:
    """An image-folder zip of two classes, six 8x8 images each."""
    path = tmp_path / "pets.zip"
    cats = [digits_png(i)[0] for i in range(6)]
    dogs = [digits_png(i)[0] for i in range(6, 12)]
    path.write_bytes(image_folder_zip({"cat": cats, "dog": dogs}))
    return path
