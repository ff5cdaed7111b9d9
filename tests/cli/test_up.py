"""`cnn-swarm up` for real: a controller and trainers as child processes, then SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnswarm.client import Client
from cnnswarm.cpu import HostJobs
from support import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def test_up_serves_until_sigterm_then_leaves_no_process(tmp_path: Path) -> None:
    url_file = tmp_path / "controller.url"
    env = dict(os.environ, TORCH_THREADS="1", HEARTBEAT_INTERVAL_S="0.2")
    up = subprocess.Popen(
        [sys.executable, "-m", "cnnswarm.cli", "up", "--trainers", "1", "--port", "0",
         "--home", str(tmp_path / "home"), "--url-file", str(url_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )  # fmt: skip
    children: list[int] = []
    try:
        deadline = time.monotonic() + 90

        def url_written() -> bool:
            assert up.poll() is None, up.communicate()[0]
            return url_file.exists()

        wait_until(url_written, 90, interval=0.1, what="up to write its URL file")
        client = Client(url_file.read_text().strip(), timeout=5)
        assert client.ready()
        # The trainer was ready before the URL file was written.
        wait_until(
            lambda: client.status()["train_jobs"],
            deadline - time.monotonic(),
            interval=0.1,
            what="the trainer to register",
        )
        children = [
            int(pid)
            for pid in subprocess.run(
                ["pgrep", "-P", str(up.pid)], capture_output=True, text=True
            ).stdout.split()
        ]
        assert len(children) == 2  # one controller, one trainer
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for pid in children:  # in case `up` failed to: never leave servers behind
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
    assert up.returncode == 0, output
    assert "cnn-swarm is up: controller at http://127.0.0.1:" in output
    assert "cnn-swarm: stopping" in output
    assert "[trainer-1]" in output and "[controller]" in output
    assert not url_file.exists()
    assert [pid for pid in children if _alive(pid)] == []
    for group in children:  # each child led a process group: its gunicorn workers are gone too
        left = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True).stdout
        assert [pid for pid in left.split() if _alive(int(pid))] == []


def test_the_jobs_of_every_trainer_up_starts_split_the_host_in_one_folder(tmp_path: Path) -> None:
    """`up --trainers 2`: each trainer's job process registers in the host's coordination
    folder (so each takes half the cores), and leaves nothing there once it ends."""
    url_file = tmp_path / "controller.url"
    coordination = tmp_path / "cpu"
    env = dict(
        os.environ,
        TORCH_THREADS="1",  # explicit threads still register (and keep this test light)
        HEARTBEAT_INTERVAL_S="0.2",
        CPU_COORDINATION_DIR=str(coordination),
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "cnnswarm.cli", "up", "--trainers", "2", "--port", "0",
         "--home", str(tmp_path / "home"), "--url-file", str(url_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )  # fmt: skip
    host_jobs = HostJobs(coordination)
    try:

        def url_written() -> bool:
            assert up.poll() is None, up.communicate()[0]
            return url_file.exists()

        wait_until(url_written, 90, interval=0.1, what="up to write its URL file")
        # The first submission of a dataset loads it: slow on a busy machine.
        client = Client(url_file.read_text().strip(), timeout=60)
        wait_until(lambda: len(client.list_trainers()) == 2, 60, what="two trainers")
        job = {"model_type": "SmallConvNet", "train_opts": {"num_epochs": 10_000}}
        job_ids = [client.submit_job("digits", **job)["id"] for _ in range(2)]
        wait_until(lambda: len(host_jobs.live()) == 2, 90, what="both jobs to register")
        job_pids = [int(entry.split("-")[0]) for entry in host_jobs.live()]
        # Each job process was started by its own trainer's fork server.
        assert len({_parent(pid) for pid in job_pids}) == 2
        for job_id in job_ids:
            client.cancel_job(job_id)
        wait_until(lambda: host_jobs.live() == [], 60, what="the jobs to leave the folder")
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 0, output
    assert list(coordination.iterdir()) == []


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].split()[1])
