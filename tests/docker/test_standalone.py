"""Stand-alone containers on a user-defined network, as the README's `docker run` section shows:
the trainer registers with the controller by name, and the seed's /status lists it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from cnnswarm.client import Client

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.xdist_group("docker")]


def test_docker_run_controller_and_trainer_on_a_network(
    docker: Any, images: dict[str, str], wait: Any
) -> None:
    suffix = uuid.uuid4().hex[:8]
    values = {
        "network": f"cnnswarm-test-{suffix}",
        "controller": f"cnnswarm-test-controller-{suffix}",
        "trainer": f"cnnswarm-test-trainer-{suffix}",
        "volume": f"cnnswarm-test-{suffix}",
        "publish": "127.0.0.1::",  # an ephemeral loopback port
    }
    try:
        docker.cmd("network_create", **values)
        docker.cmd("run_controller", **values)
        docker.cmd("run_trainer", **values)
        port = docker.run(["docker", "port", values["controller"], "48515"]).stdout.split(":")[-1]
        client = Client(f"http://127.0.0.1:{port.strip()}")
        wait("the controller to be ready", client.ready, timeout=120)
        wait("the trainer to register", lambda: client.status()["train_jobs"], timeout=120)
        assert docker.inspect("volume", values["volume"])["Name"] == values["volume"]
        logs = docker.cmd("container_logs", **values)
        assert "listening on" in logs.stdout + logs.stderr
    finally:
        docker.run(docker.argv("container_rm", **values), check=False)
        docker.run(docker.argv("network_rm", **values), check=False)
        docker.run(docker.argv("volume_rm", **values), check=False)
