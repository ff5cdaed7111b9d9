"""Swarm on one node: the stack (PostgreSQL, global controllers, 3 dnsrr trainers, secrets)
survives a trainer killed mid-job (the job resumes from its checkpoint on another replica as
attempt 2) and trainers scaling to 1 and back; the `docker service create` variant registers
its trainers too."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cnnswarm.client import Client
from support import free_port_below_ephemeral_range

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.xdist_group("docker")]

TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
def host_port() -> int:
    """Where the controller is published (in host mode: no routing mesh). Not 48515, which is in
    the ephemeral range: a server another test started on port 0 can hold it for minutes."""
    return free_port_below_ephemeral_range()


@pytest.fixture(scope="module")
def swarm(docker: Any) -> Iterator[Any]:
    """A one-node swarm: the engine's own if it is in one already, else one made and left here."""
    state = docker.run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"]).stdout.strip()
    created = state != "active"
    if created:
        docker.cmd("swarm_init")
    try:
        yield docker
    finally:
        if created:
            docker.cmd("swarm_leave", timeout=120)
            docker.quiet("docker", "network", "rm", "docker_gwbridge")


def _live_trainers(client: Client) -> list[dict[str, Any]]:
    return [t for t in client.list_trainers() if t["state"] != "lost"]


def _task_containers(docker: Any, service: str, *, stopped_too: bool = False) -> list[str]:
    argv = ["docker", "ps", "-aq" if stopped_too else "-q"]
    argv += ["--filter", f"label=com.docker.swarm.service.name={service}"]
    return docker.run(argv).stdout.split()


def _container_with_ip(docker: Any, service: str, ip: str) -> str:
    for container in _task_containers(docker, service):
        networks = docker.inspect("container", container)["NetworkSettings"]["Networks"]
        if any(network.get("IPAddress") == ip for network in networks.values()):
            return container
    raise AssertionError(f"no container of {service} has address {ip}")


def _remove_stack(docker: Any, stack: str, wait: Any) -> None:
    docker.run(docker.argv("stack_rm", stack=stack), check=False)
    label = f"label=com.docker.stack.namespace={stack}"

    def gone() -> bool:
        return not docker.run(["docker", "ps", "-aq", "--filter", label]).stdout.split()

    wait(f"the containers of {stack} to go", gone, timeout=120)
    # Volumes and the network outlive `stack rm` by a moment.
    for volume in docker.run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split():
        docker.quiet("docker", "volume", "rm", volume)
    wait(
        f"the network of {stack} to go",
        lambda: not docker.run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split(),
        timeout=60,
    )


def _wait_for_checkpoint(client: Client, job_id: str, token: str, wait: Any) -> None:
    def has_checkpoint() -> bool:
        url = f"{client.url}/internal/v1/jobs/{job_id}/checkpoint"
        answer = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        return answer.status_code == 200

    wait(f"a checkpoint of {job_id}", has_checkpoint, timeout=240)


def test_stack_resumes_a_killed_job_and_scales_trainers(
    swarm: Any,
    images: dict[str, str],
    wait: Any,
    secrets_dir: Path,
    timings: Any,
    host_port: int,
) -> None:
    docker = swarm
    stack = f"cnnswarm-test-{uuid.uuid4().hex[:6]}"
    trainers = f"{stack}_ml_train"
    token = (secrets_dir / "api_token").read_text()
    env = docker.env(CNN_SWARM_SECRETS_DIR=str(secrets_dir), CONTROLLER_PUBLISH=str(host_port))
    try:
        docker.run(docker.argv("stack_deploy", stack=stack), env=env)
        client = Client(f"http://127.0.0.1:{host_port}", token=token)
        wait("the controller to be ready", client.ready, timeout=180)
        wait("3 trainers to register", lambda: len(_live_trainers(client)) == 3, timeout=180)
        services = docker.cmd("stack_services", stack=stack).stdout
        modes = {
            line.split()[1].split("_", 1)[1]: line.split()[2] for line in services.splitlines()[1:]
        }
        assert modes == {
            "ml_controller": "global",
            "ml_train": "replicated",
            "postgres": "replicated",
        }

        long_job = client.submit_job(
            "digits", model_type="SmallConvNet", train_opts={"num_epochs": 3, "seed": 1}
        )
        other_job = client.submit_job(
            "digits", model_type="SmallConvNet", train_opts={"num_epochs": 1, "seed": 2}
        )
        _wait_for_checkpoint(client, long_job["id"], token, wait)
        running = client.get_job(long_job["id"])
        assert running["state"] == "running" and running["attempt"] == 1, running
        urls = {t["id"]: t["url"] for t in client.list_trainers()}
        victim_ip = urls[running["trainer"]].split("//")[1].rsplit(":", 1)[0]
        victim = _container_with_ip(docker, trainers, victim_ip)

        killed_at = time.monotonic()
        docker.run(["docker", "kill", victim])
        resumed = wait(
            "the killed job to run again",
            lambda: (job := client.get_job(long_job["id"]))["attempt"] == 2 and job,
            timeout=120,
        )
        timings.record("swarm_kill_to_redispatch_s", time.monotonic() - killed_at)
        assert resumed["trainer"] != running["trainer"]
        finished = client.wait_for_job(long_job["id"], timeout=300)
        timings.record("swarm_kill_to_job_succeeded_s", time.monotonic() - killed_at)
        assert finished["state"] == "succeeded" and finished["attempt"] == 2, finished
        assert [m["epoch"] for m in finished["metrics"]] == [1, 2, 3]
        logs = docker.cmd("service_logs", stack=stack)
        # The trainers log to stderr, which `docker service logs` passes on as stderr.
        assert "resuming attempt 2 from a checkpoint" in logs.stdout + logs.stderr
        assert client.wait_for_job(other_job["id"], timeout=300)["state"] == "succeeded"

        docker.cmd("service_scale", stack=stack, trainers="1", timeout=180)
        wait("one trainer container", lambda: len(_task_containers(docker, trainers)) == 1, 120)
        small = client.submit_job("digits", model_type="SmallConvNet", train_opts={"num_epochs": 1})
        assert client.wait_for_job(small["id"], timeout=300)["state"] == "succeeded"
        docker.cmd("service_scale", stack=stack, trainers="3", timeout=180)
        wait("3 trainers again", lambda: len(_live_trainers(client)) == 3, timeout=180)
    finally:
        _remove_stack(docker, stack, wait)


def test_service_create_commands_register_trainers(
    swarm: Any, images: dict[str, str], wait: Any, host_port: int
) -> None:
    docker = swarm
    for service in ("ml_controller", "ml_train"):
        listed = docker.run(["docker", "service", "ls", "-q", "--filter", f"name={service}"])
        assert not listed.stdout.strip(), f"a service {service} exists already"
    suffix = uuid.uuid4().hex[:6]
    values = {"network": f"cnnswarm-test-{suffix}", "volume": f"cnnswarm-test-{suffix}"}
    try:
        docker.cmd("overlay_create", **values)
        docker.cmd("service_create_trainer", trainers="2", **values, timeout=180)
        docker.cmd("service_create_controller", host_port=str(host_port), **values, timeout=180)
        client = Client(f"http://127.0.0.1:{host_port}")
        wait("the controller to be ready", client.ready, timeout=180)
        wait("2 trainers to register", lambda: len(_live_trainers(client)) == 2, timeout=180)
        seed_status = client.status()
        assert len(seed_status["train_jobs"]) >= 2
    finally:
        docker.run(docker.argv("service_rm"), check=False)
        wait(
            "the services' containers to go",
            lambda: (
                not _task_containers(docker, "ml_controller", stopped_too=True)
                and not _task_containers(docker, "ml_train", stopped_too=True)
            ),
            timeout=120,
        )
        docker.run(docker.argv("network_rm", **values), check=False)
        docker.run(docker.argv("volume_rm", **values), check=False)
