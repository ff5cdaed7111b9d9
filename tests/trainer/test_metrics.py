"""A trainer's ``/metrics``: its series, the read-route token policy, and how epochs are
counted (a resumed attempt counts only the epochs it trained itself)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cnnswarm.config import Settings
from cnnswarm.trainer.app import TrainerService, create_app
from cnnswarm.trainer.messages import progress_message
from cnnswarm.trainer.runner import TrackedJob
from support import drive_until, metric_value

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def app(fake_controller: Any, make_settings: Callable[..., Settings]) -> Iterator[Flask]:
    fake_controller.unavailable_datasets.add("waiting")  # the child holds its slot, untrained
    fake_controller.required_token = TOKEN
    flask_app = create_app(make_settings(fake_controller.url, api_token=TOKEN))
    try:
        yield flask_app
    finally:
        service(flask_app).stop(timeout=5)


def service(app: Flask) -> TrainerService:
    return cast(TrainerService, app.extensions["trainer_service"])


def scrape(client: FlaskClient) -> str:
    response = client.get("/metrics")  # a read: no token, though this trainer has one
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_trainer_series_follow_a_job_from_dispatch_to_cancel(app: Flask) -> None:
    client = app.test_client()
    idle = scrape(client)
    trainer_id = service(app).trainer_id
    assert metric_value(idle, "cnnswarm_trainer_info", trainer_id=trainer_id) == 1
    assert metric_value(idle, "cnnswarm_trainer_slots") == 1
    assert metric_value(idle, "cnnswarm_trainer_free_slots") == 1
    assert metric_value(idle, "cnnswarm_trainer_images_per_second") == 0
    assert metric_value(idle, "cnnswarm_trainer_epochs_total") == 0

    dispatch = {
        "job_id": "j1",
        "attempt": 1,
        "model_id": "m-j1",
        "model_type": "SmallConvNet",
        "dataset": "waiting",
        "example_idxs": None,
        "train_opts": {"num_epochs": 1},
    }
    assert client.post("/train", json=dispatch, headers=AUTH).status_code == 202
    busy = scrape(client)
    assert metric_value(busy, "cnnswarm_trainer_jobs", phase="running") == 1
    assert metric_value(busy, "cnnswarm_trainer_free_slots") == 0

    assert client.post("/jobs/j1/cancel", headers=AUTH).status_code == 200
    drive_until(
        service(app).runner.poll,
        lambda: client.get("/status").get_json()["jobs"]["j1"]["complete"],
    )
    done = scrape(client)
    assert metric_value(done, "cnnswarm_trainer_attempts_ended_total", phase="cancelled") == 1
    assert metric_value(done, "cnnswarm_trainer_jobs", phase="running") == 0
    assert metric_value(
        done, "cnnswarm_http_requests_total", route="/train", method="POST", status="202"
    )


def test_metrics_off_leaves_no_route(fake_controller: Any, make_settings: Callable[..., Settings]):
    app = create_app(make_settings(fake_controller.url, metrics_enabled=False))
    assert app.test_client().get("/metrics").status_code == 404


def _epochs(*numbers: int) -> list[dict[str, Any]]:
    return [{"epoch": number, "train_loss": 1.0} for number in numbers]


def _job() -> TrackedJob:
    # Only the epoch bookkeeping is exercised: no child process is needed.
    return TrackedJob(dispatch=None, process=None, messages=None, cancel=None)  # type: ignore[arg-type]


def test_a_fresh_attempt_counts_every_epoch_it_finishes() -> None:
    job = _job()
    assert job.count_new_epochs(progress_message(0.1, 1, [])) == 0
    assert job.count_new_epochs(progress_message(0.5, 2, _epochs(1))) == 1
    assert job.count_new_epochs(progress_message(0.6, 2, _epochs(1))) == 0
    assert job.count_new_epochs(progress_message(1.0, 3, _epochs(1, 2, 3))) == 2


def test_images_per_second_sums_the_last_epoch_of_each_running_job(
    fake_controller: Any, make_settings: Callable[..., Settings]
) -> None:
    runner = service(create_app(make_settings(fake_controller.url))).runner
    for key, rates in {("a", 1): [50.0, 100.0], ("b", 1): [30.0], ("c", 1): []}.items():
        job = _job()
        job.metrics = [{"epoch": i + 1, "images_per_s": rate} for i, rate in enumerate(rates)]
        runner._jobs[key] = job
    assert runner.training_images_per_s() == 130.0


def test_a_resumed_attempt_counts_only_its_own_epochs() -> None:
    job = _job()
    # Resumed in epoch 3: epochs 1 and 2 were trained (and counted) by earlier attempts.
    assert job.count_new_epochs(progress_message(0.7, 3, _epochs(1, 2))) == 0
    assert job.count_new_epochs(progress_message(1.0, 3, _epochs(1, 2, 3))) == 1
