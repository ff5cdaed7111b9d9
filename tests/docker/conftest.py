"""Fixtures of the Docker tier: a real Docker engine, the real images, real compose and swarm.

Every command a test runs that the README's Docker section shows comes from ``COMMANDS`` (the
docs test checks that the section holds these commands and no other). Tests talk only to
loopback ports and to the containers they create, and remove everything they create in ``finally``.

In CI (``CI=true``) a missing engine is an error; elsewhere the tier skips with one line.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support import FIGURES_PROPERTY, wait_until

REPO = Path(__file__).resolve().parents[2]
OFFICIAL_BASE = "python:3.11-slim"
LOCAL_BASE = "cnn-swarm/base:bookworm-py3.11"  # what .ci/docker-setup builds when it must
CONTROLLER_IMAGE = "docker-exps-ml_controller"
TRAINER_IMAGE = "docker-exps-ml_train"
POSTGRES_IMAGE = "docker-exps-postgres"

# The commands the README's Docker section shows, as templates. Tests fill them with their own
# names; the README shows them filled with DOC_VALUES. `docker compose` runs as
# `docker-compose` where v2 is absent.
COMMANDS: dict[str, str] = {
    # stand-alone containers
    "build_controller": (
        "docker image build -t docker-exps-ml_controller -f Dockerfile_controller ."
    ),
    "build_trainer": "docker image build -t docker-exps-ml_train -f Dockerfile_train .",
    "build_postgres": "docker image build -t docker-exps-postgres docker/postgres",
    "network_create": "docker network create {network}",
    "run_controller": (
        "docker run --detach --name {controller} --network {network} -p {publish}48515"
        " -v {volume}:/data -e CNN_SWARM_ALLOW_NO_TOKEN=1 docker-exps-ml_controller"
    ),
    "run_trainer": (
        "docker run --detach --name {trainer} --network {network}"
        " -e CONTROLLER_URL=http://{controller}:48515 -e CNN_SWARM_ALLOW_NO_TOKEN=1"
        " docker-exps-ml_train"
    ),
    "container_logs": "docker logs {controller}",
    "container_rm": "docker rm -f {controller} {trainer}",
    "network_rm": "docker network rm {network}",
    "volume_rm": "docker volume rm {volume}",
    # compose
    "compose_up": "docker compose -p {project} up -d --build --scale ml_train={trainers}",
    "compose_ps": "docker compose -p {project} ps",
    "compose_logs": "docker compose -p {project} logs ml_controller",
    "compose_down": "docker compose -p {project} down -v",
    "compose_pg_up": (
        "docker compose -p {project} -f docker-compose.yml -f docker-compose.postgres.yml"
        " up -d --build"
    ),
    "compose_pg_down": (
        "docker compose -p {project} -f docker-compose.yml -f docker-compose.postgres.yml down -v"
    ),
    # swarm
    "swarm_init": "docker swarm init --advertise-addr 127.0.0.1",
    "stack_deploy": "docker stack deploy --resolve-image never -c docker-stack.yml {stack}",
    "stack_services": "docker stack services {stack}",
    "service_scale": "docker service scale {stack}_ml_train={trainers}",
    "service_logs": "docker service logs {stack}_ml_train",
    "stack_rm": "docker stack rm {stack}",
    "overlay_create": "docker network create --driver overlay {network}",
    "service_create_controller": (
        "docker service create --name ml_controller --network {network} --endpoint-mode dnsrr"
        " --publish mode=host,target=48515,published={host_port}"
        " --mount type=volume,source={volume},target=/data -e CNN_SWARM_ALLOW_NO_TOKEN=1"
        " docker-exps-ml_controller"
    ),
    "service_create_trainer": (
        "docker service create --name ml_train --network {network} --endpoint-mode dnsrr"
        " -e CONTROLLER_URL=http://ml_controller:48515 -e CNN_SWARM_ALLOW_NO_TOKEN=1"
        " --replicas {trainers} docker-exps-ml_train"
    ),
    "service_rm": "docker service rm ml_controller ml_train",
    "swarm_leave": "docker swarm leave --force",
}

DOC_VALUES = {
    "network": "MLNetwork",
    "controller": "ml_controller",
    "trainer": "ml_train",
    "publish": "48515:",
    "host_port": "48515",
    "volume": "docker_exps_home",
    "project": "docker-exps",
    "stack": "docker-exps",
    "trainers": "3",
}


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


@dataclass
class Timings:
    """Figures the tier measures; printed at the end of the run."""

    values: dict[str, float] = field(default_factory=dict)

    def record(self, name: str, seconds: float) -> None:
        self.values[name] = round(seconds, 1)


TIMINGS = Timings()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Each report carries the figures so far; the root conftest prints the last at the end
    (this tier runs in a pytest-xdist worker, and the summary is written by the main process)."""
    report = yield
    if TIMINGS.values:
        report.user_properties.append((FIGURES_PROPERTY, dict(TIMINGS.values)))
    return report


class Docker:
    """Runs docker commands (and the templates of COMMANDS) with logs on failure."""

    def __init__(self, base_image: str, wheels_only: bool) -> None:
        self.base_image = base_image
        self.wheels_only = wheels_only
        v2 = subprocess.run(["docker", "compose", "version"], capture_output=True)
        self.compose = ["docker", "compose"] if v2.returncode == 0 else ["docker-compose"]

    def build_args(self) -> list[str]:
        args = ["--force-rm", "--build-arg", f"BASE_IMAGE={self.base_image}"]
        if self.wheels_only:
            args += ["--build-arg", "WHEELS_ONLY=1"]
        return args

    def env(self, **extra: str) -> dict[str, str]:
        """The environment compose runs in: build arguments, the classic builder, ``extra``."""
        # Not COLUMNS or LINES: pytest-xdist sets them in its workers, and compose would wrap the
        # rows of its tables (`ps`) to that width instead of printing one line per container.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env.update(DOCKER_BUILDKIT="0", COMPOSE_DOCKER_CLI_BUILD="0")
        env["BASE_IMAGE"] = self.base_image
        env["WHEELS_ONLY"] = "1" if self.wheels_only else "0"
        env.update(extra)
        return env

    def argv(self, name: str, extra: list[str] | None = None, **values: str) -> list[str]:
        """The argv of COMMANDS[name] filled with ``values`` (``extra`` goes after the verb)."""
        argv = shlex.split(COMMANDS[name].format(**values))
        if argv[:2] == ["docker", "compose"]:
            argv = self.compose + argv[2:]
        if extra:
            # Options such as --build-arg go right after `docker image build`.
            at = 3 if argv[:3] == ["docker", "image", "build"] else len(argv)
            argv = argv[:at] + extra + argv[at:]
        return argv

    def run(
        self,
        argv: list[str],
        *,
        timeout: float = 300,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the repository root; on failure raise with its output."""
        result = subprocess.run(
            argv,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env or self.env(),
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{shlex.join(argv)} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def cmd(
        self, name: str, *, extra: list[str] | None = None, timeout: float = 300, **values: str
    ) -> subprocess.CompletedProcess[str]:
        """Run COMMANDS[name] filled with ``values``."""
        return self.run(self.argv(name, extra, **values), timeout=timeout, env=self.env())

    def quiet(self, *argv: str) -> None:
        """Run a clean-up command, ignoring failure (the thing may be gone already)."""
        subprocess.run(argv, cwd=REPO, capture_output=True, timeout=120, env=self.env())

    def inspect(self, kind: str, name: str) -> Any:
        return json.loads(self.run(["docker", kind, "inspect", name]).stdout)[0]


def _engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0:
        return "no Docker engine answers (docker info failed)"
    return None


def _base_image() -> str:
    chosen = os.environ.get("CNN_SWARM_BASE_IMAGE")
    if chosen:
        return chosen
    for image in (OFFICIAL_BASE, LOCAL_BASE):
        if (
            subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode
            == 0
        ):
            return image
    return OFFICIAL_BASE


def _wheels_are_complete() -> bool:
    """Whether docker/wheels holds every requirement of pyproject.toml as it is now (the list
    .ci/docker-setup records after a full download), so builds need no package index."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = "\n".join(project["project"]["dependencies"] + project["build-system"]["requires"])
    recorded = REPO / "docker" / "wheels" / ".requirements"
    return recorded.exists() and recorded.read_text().strip() == wanted.strip()


@pytest.fixture(scope="session")
def docker() -> Docker:
    """A reachable Docker engine (skip, or fail in CI, without one)."""
    problem = _engine_problem()
    if problem:
        if in_ci():
            pytest.fail(f"Docker tier: {problem}; .ci/docker-setup should have started one")
        pytest.skip(f"Docker tier skipped: {problem}")
    return Docker(_base_image(), wheels_only=_wheels_are_complete())


@pytest.fixture(scope="session")
def images(docker: Docker) -> dict[str, str]:
    """Both service images (and the PostgreSQL image) built from this tree, with build times."""
    started = time.monotonic()
    docker.cmd("build_controller", extra=docker.build_args(), timeout=900)
    TIMINGS.record("build_controller_s", time.monotonic() - started)
    started = time.monotonic()
    docker.cmd("build_trainer", extra=docker.build_args(), timeout=900)
    TIMINGS.record("build_trainer_after_controller_s", time.monotonic() - started)
    started = time.monotonic()
    docker.cmd(
        "build_postgres",
        extra=["--force-rm", "--build-arg", f"BASE_IMAGE={docker.base_image}"],
        timeout=900,
    )
    TIMINGS.record("build_postgres_s", time.monotonic() - started)
    return {"controller": CONTROLLER_IMAGE, "trainer": TRAINER_IMAGE, "postgres": POSTGRES_IMAGE}


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    """Secret files (DB password, API token) as Docker secrets read them."""
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "db_password").write_text(os.urandom(12).hex())
    (directory / "api_token").write_text(os.urandom(12).hex())
    for path in [directory, *directory.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    tmp_path.chmod(0o755)
    return directory


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """``support.wait_until`` in the Docker tests' argument order: a check that raises (a
    container still starting) counts as "not yet"."""
    return wait_until(check, timeout, interval, what=what, ignoring=(Exception,))


@pytest.fixture(scope="session")
def wait() -> Callable[..., Any]:
    return wait_for


@pytest.fixture(scope="session")
def timings() -> Timings:
    return TIMINGS


def digit_pngs(count: int) -> tuple[list[bytes], list[int]]:
    """The first ``count`` scikit-learn digits as 8x8 grey PNGs, with their labels."""
    import io

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for pixels in digits.images[:count]:
        buffer = io.BytesIO()
        Image.fromarray((pixels * 255 / 16).astype(np.uint8)).save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images, [int(label) for label in digits.target[:count]]


@pytest.fixture(scope="session")
def digits() -> Callable[[int], tuple[list[bytes], list[int]]]:
    return digit_pngs


def iter_lines(text: str) -> Iterator[str]:
    yield from (line.strip() for line in text.splitlines() if line.strip())
