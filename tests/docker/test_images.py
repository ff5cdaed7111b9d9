"""The images: built from this tree, under 1 GB, non-root, CPU torch, health-checked, and
torch threads matched to the container's CPU limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ROLE_MARKER = "# ---- role"

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("docker")]


def _shared_part(dockerfile: str) -> str:
    """A Dockerfile without its first line (its title) and from the role marker on."""
    text = (REPO / dockerfile).read_text()
    assert ROLE_MARKER in text, f"{dockerfile} lost its '{ROLE_MARKER}' line"
    return text.split("\n", 1)[1].split(ROLE_MARKER)[0]


def test_the_two_dockerfiles_differ_only_in_their_role_section() -> None:
    # Identical stages give identical layer cache keys: the second image costs seconds.
    assert _shared_part("Dockerfile_controller") == _shared_part("Dockerfile_train")


@pytest.mark.slow
def test_images_are_small_non_root_cpu_only_and_health_checked(
    docker: Any, images: dict[str, str], timings: Any
) -> None:
    for role, image in (("controller", images["controller"]), ("trainer", images["trainer"])):
        config = docker.inspect("image", image)
        size = config["Size"]
        timings.record(f"{role}_image_mb", size / 1e6)
        assert size <= 1_000_000_000, f"{image} is {size / 1e9:.2f} GB, over the 1 GB goal"
        assert config["Config"]["User"] == "cnnswarm"
        health = config["Config"]["Healthcheck"]["Test"]
        assert health[-2:] == ["/opt/cnn-swarm/healthcheck.py", role]
        assert config["Config"]["Cmd"] == [role]

    probe = docker.run(
        [
            "docker",
            "run",
            "--rm",
            images["trainer"],
            "python3",
            "-c",
            "import os, torch, cnnswarm; print(os.getuid(), torch.version.cuda, torch.__version__)",
        ]
    ).stdout.split()
    assert probe[0] != "0", "the container runs as root"
    assert probe[1] == "None", f"torch {probe[2]} is a CUDA build"

    help_text = docker.run(["docker", "run", "--rm", images["controller"], "--help"]).stdout
    assert "controller" in help_text and "trainer" in help_text


# What the CLI gives torch in a container: (trainer threads, trainer threads with one slot per
# CPU split two ways, CPUs seen). The controller runs PREDICT_TORCH_THREADS, whatever the CPUs.
THREADS_PROBE = (
    "import os; from cnnswarm.config import load_settings; "
    "from cnnswarm.cpu import torch_threads_for; s = load_settings(); "
    "print(torch_threads_for(s, sharers=s.trainer_slots), "
    "torch_threads_for(s, sharers=1), len(os.sched_getaffinity(0)))"
)


@pytest.mark.slow
def test_torch_threads_follow_the_container_cpu_limit(docker: Any, images: dict[str, str]) -> None:
    """The serving code reads the container's CPU quota (cgroup v2 or v1: this host runs v1)
    and splits it among a trainer's job slots."""

    def threads(*options: str) -> list[int]:
        argv = ["docker", "run", "--rm", *options, images["trainer"], "python3", "-c"]
        return [int(n) for n in docker.run([*argv, THREADS_PROBE]).stdout.split()]

    assert threads("--cpus", "1")[:2] == [1, 1]
    assert threads("--cpus", "1.5")[:2] == [2, 2]  # a partial CPU rounds up
    assert threads("--cpus", "1", "-e", "TORCH_THREADS=3")[:2] == [3, 3]  # explicit wins
    split = threads("--cpus", "2", "-e", "TRAINER_SLOTS=2")
    assert split[:2] == [1, 2]
    trainer, one_slot, cpus = threads()  # no limit: the CPUs the container sees
    assert trainer == one_slot == cpus
