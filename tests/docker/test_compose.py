"""Compose: `up --build` starts a controller and scaled trainers that train on `digits` and
serve predictions, and train a two-worker job across two trainer containers (one deployment for
both); the PostgreSQL override runs two controllers on one shared job store."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from cnnswarm.client import Client

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.xdist_group("docker")]

TRAIN_OPTS = {"num_epochs": 2, "seed": 0}


def _published(docker: Any, project: str, service: str, files: list[str]) -> str:
    """``http://127.0.0.1:<port>`` where compose published ``service``'s port 48515."""
    argv = [*docker.compose, "-p", project, *files, "port", service, "48515"]
    host_port = docker.run(argv, env=docker.env()).stdout.strip()
    return f"http://127.0.0.1:{host_port.rsplit(':', 1)[1]}"


def _live_trainers(client: Client) -> list[dict[str, Any]]:
    return [t for t in client.list_trainers() if t["state"] != "lost"]


def _assert_predicts_digits(client: Client, model_id: str, digits: Any) -> None:
    images, labels = digits(10)
    predictions = client.predict_instances(model_id, images)
    assert len(predictions) == len(images)
    correct = sum(p["class_idx"] == label for p, label in zip(predictions, labels, strict=True))
    assert correct >= 7, f"only {correct}/10 digits right: {predictions}"


@dataclass(frozen=True)
class Deployment:
    """A running ``docker compose up --scale ml_train=2`` of the default file."""

    project: str
    env: dict[str, str]
    client: Client
    started: float  # time.monotonic() when ``compose up`` began


@pytest.fixture(scope="class")
def deployment(docker: Any, images: dict[str, str], wait: Any) -> Iterator[Deployment]:
    """The default compose file up with two trainers, the controller ready and both trainers
    registered; ``compose down`` afterwards."""
    project = f"cnnswarm-test-{uuid.uuid4().hex[:8]}"
    env = docker.env(CONTROLLER_PUBLISH="127.0.0.1:")  # an ephemeral loopback port
    started = time.monotonic()
    try:
        docker.run(docker.argv("compose_up", project=project, trainers="2"), env=env, timeout=600)
        client = Client(_published(docker, project, "ml_controller", []))
        wait("the controller to be ready", client.ready, timeout=120)
        wait("two trainers to register", lambda: len(_live_trainers(client)) == 2, timeout=120)
        yield Deployment(project, env, client, started)
    finally:
        docker.run(docker.argv("compose_down", project=project), env=env, check=False)


class TestTheDefaultFile:
    """Both tests on one deployment (``deployment``, down when the class is done)."""

    def test_compose_up_trains_digits_and_predicts(
        self, docker: Any, deployment: Deployment, digits: Any, timings: Any
    ) -> None:
        client = deployment.client
        job = client.submit_job("digits", model_type="SmallConvNet", train_opts=TRAIN_OPTS)
        job = client.wait_for_job(str(job["id"]), timeout=300)
        assert job["state"] == "succeeded", job
        assert job["metrics"][-1]["test_accuracy"] > 0.7
        _assert_predicts_digits(client, job["model_id"], digits)
        timings.record("compose_up_to_first_prediction_s", time.monotonic() - deployment.started)

        project, env = deployment.project, deployment.env
        listed = docker.run(docker.argv("compose_ps", project=project), env=env).stdout
        assert listed.count("ml_train") == 2 and "ml_controller" in listed
        logs = docker.run(docker.argv("compose_logs", project=project), env=env).stdout
        assert "listening on" in logs

    def test_a_two_worker_job_trains_across_two_trainer_containers(
        self, deployment: Deployment, wait: Any
    ) -> None:
        """gloo between two ``ml_train`` containers: rank 0's address is its container IP (its
        announced URL) and the port it opened; nothing is published for it."""
        client = deployment.client
        job = client.submit_job(
            "digits", model_type="SmallConvNet", train_opts={**TRAIN_OPTS, "num_epochs": 3},
            workers=2,
        )  # fmt: skip
        gang = wait(
            "the job to run on both trainers",
            lambda: client.get_job(str(job["id"])).get("gang"),
            timeout=120,
        )
        assert len(set(gang)) == 2
        final = client.wait_for_job(str(job["id"]), timeout=600)
        assert final["state"] == "succeeded", final
        assert (final["attempt"], final["workers"]) == (1, 2)
        assert final["metrics"][-1]["test_accuracy"] > 0.7
        assert [m["id"] for m in client.list_models()].count(final["model_id"]) == 1


def test_postgres_override_runs_two_controllers_on_one_store(
    docker: Any, images: dict[str, str], wait: Any, digits: Any, secrets_dir: Path
) -> None:
    project = f"cnnswarm-test-{uuid.uuid4().hex[:8]}"
    files = ["-f", "docker-compose.yml", "-f", "docker-compose.postgres.yml"]
    env = docker.env(
        CONTROLLER_PUBLISH="127.0.0.1:",
        CONTROLLER_2_PUBLISH="127.0.0.1:",
        CNN_SWARM_SECRETS_DIR=str(secrets_dir),
    )
    token = (secrets_dir / "api_token").read_text()
    try:
        docker.run(docker.argv("compose_pg_up", project=project), env=env, timeout=600)
        first = Client(_published(docker, project, "ml_controller", files), token=token)
        second = Client(_published(docker, project, "ml_controller_2", files), token=token)
        for client in (first, second):
            wait("a controller to be ready", client.ready, timeout=180)
        wait("a trainer to register", lambda: len(_live_trainers(first)) == 1, timeout=120)

        unauthorized = requests.post(
            f"{second.url}/api/v1/jobs", json={"dataset": "digits"}, timeout=10
        )
        assert unauthorized.status_code == 401  # the token comes from the secret file

        job = second.submit_job("digits", model_type="SmallConvNet", train_opts=TRAIN_OPTS)
        job = first.wait_for_job(str(job["id"]), timeout=300)  # one store behind both
        assert job["state"] == "succeeded", job
        _assert_predicts_digits(second, job["model_id"], digits)
    finally:
        docker.run(docker.argv("compose_pg_down", project=project), env=env, check=False)
