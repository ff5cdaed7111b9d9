"""Does a second trainer on the same host make training faster?

For each setup, a REAL local cluster (``cnn-swarm up --trainers N``: a controller and N trainers
as processes, ephemeral ports, SQLite and artefacts in a temp HOME_DIR, a private
``CPU_COORDINATION_DIR``) gets ``--jobs`` (default 4) ResNet8 jobs of ``--epochs`` (default 3)
epochs on ``synthetic``, submitted at once through the Python client; measured is the wall time
from the first submission until every job has succeeded. Setups:

- ``--trainers 1`` and ``--trainers 2`` with the default CPU policy (each job takes its share of
  the host: every core alone, half each when two run; ``cnnswarm.cpu.JobShare``);
- the same with ``TORCH_THREADS=1`` (one thread per job, whatever else runs);
- with ``--old-policy``, also 2 trainers with ``TORCH_THREADS=<cpu_share>``: what every job took
  before the host's jobs split the cores (each trainer's job took every core).

Each job's median ``images_per_s`` over its epochs is reported too (how fast one job trained).
The last line is ``ratio=<wall time of 1 trainer / wall time of 2 trainers>``, default policy.
Every process started is killed in ``finally``. On a shared machine the figures move with the
other load; the setups run one after the other, ``--rounds`` times each (medians reported).

Run: ``.venv/bin/python bench/trainer_scaling.py [--jobs 4] [--epochs 3] [--rounds 1]
[--skip-single-thread] [--old-policy]`` (the default run takes about 6 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cnnswarm.client import Client
from cnnswarm.cpu import cpu_share

MODEL_TYPE = "ResNet8"
STARTUP_TIMEOUT_S = 180.0
JOB_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Setup:
    """One row of the table: how many trainers, and TORCH_THREADS ("" for the default)."""

    trainers: int
    torch_threads: str

    @property
    def label(self) -> str:
        threads = f", TORCH_THREADS={self.torch_threads}" if self.torch_threads else ""
        return f"`cnn-swarm up --trainers {self.trainers}`{threads}"


@dataclass(frozen=True)
class Result:
    wall_s: float
    job_images_per_s: float


@contextlib.contextmanager
def local_cluster(root: Path, setup: Setup) -> Iterator[Client]:
    """``cnn-swarm up`` with ``setup``'s trainers, ready with every trainer registered; stopped
    (SIGTERM, then SIGKILL) at the end."""
    url_file = root / "controller.url"
    env = {
        **os.environ,
        "HOME_DIR": str(root / "home"),
        "CPU_COORDINATION_DIR": str(root / "cpu"),
        "CNN_SWARM_API_TOKEN": "",
        "CNN_SWARM_API_TOKEN_FILE": "",
        "HEARTBEAT_INTERVAL_S": "0.5",
        "DATABASE_URL": "",
    }
    env.pop("TORCH_THREADS", None)
    if setup.torch_threads:
        env["TORCH_THREADS"] = setup.torch_threads
    command = [sys.executable, "-m", "cnnswarm.cli", "up", "--trainers", str(setup.trainers)]
    command += ["--port", "0", "--home", str(root / "home"), "--url-file", str(url_file)]
    with open(root / "up.log", "wb") as log:  # the child keeps its own descriptor
        up = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not url_file.exists():
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`up` did not start: {(root / 'up.log').read_text()[-2000:]}")
            time.sleep(0.2)
        client = Client(url_file.read_text().strip(), timeout=30)
        while len(client.list_trainers()) < setup.trainers:
            if time.monotonic() > deadline:
                raise RuntimeError("the trainers did not register")
            time.sleep(0.2)
        yield client
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)  # `up` stops its children, then exits
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.kill()  # its children get SIGTERM from the kernel when it dies
                up.wait()


def run_setup(root: Path, setup: Setup, jobs: int, epochs: int) -> Result:
    """Submit ``jobs`` jobs at once to a fresh cluster; the wall time until all succeeded."""
    with local_cluster(root, setup) as client:
        client.get_dataset("synthetic")  # built once before the clock starts, for every setup
        started = time.monotonic()
        job_ids = [
            client.submit_job(
                "synthetic",
                model_type=MODEL_TYPE,
                train_opts={"num_epochs": epochs, "seed": index},
            )["id"]
            for index in range(jobs)
        ]
        finals = [client.wait_for_job(job_id, timeout=JOB_TIMEOUT_S) for job_id in job_ids]
        wall_s = time.monotonic() - started
    failed = [job for job in finals if job["state"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) did not succeed: {failed[0]}")
    speeds = [
        statistics.median(m["images_per_s"] for m in job["metrics"] if m.get("images_per_s"))
        for job in finals
    ]
    return Result(wall_s, statistics.median(speeds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--skip-single-thread", action="store_true")
    parser.add_argument("--old-policy", action="store_true")
    args = parser.parse_args(argv)

    setups = [Setup(1, ""), Setup(2, "")]
    if not args.skip_single_thread:
        setups += [Setup(1, "1"), Setup(2, "1")]
    if args.old_policy:
        setups.append(Setup(2, str(cpu_share())))
    walls: dict[Setup, list[float]] = {setup: [] for setup in setups}
    speeds: dict[Setup, list[float]] = {setup: [] for setup in setups}
    print(f"{args.jobs} {MODEL_TYPE} jobs x {args.epochs} epochs on synthetic; "
          f"this host's CPU share: {cpu_share()}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cnnswarm-scaling-") as tmp:
        for round_index in range(args.rounds):
            for number, setup in enumerate(setups):
                root = Path(tmp) / f"round-{round_index}-setup-{number}"
                root.mkdir()
                result = run_setup(root, setup, args.jobs, args.epochs)
                walls[setup].append(result.wall_s)
                speeds[setup].append(result.job_images_per_s)
                print(f"{setup.label}: {result.wall_s:.1f} s, "
                      f"{result.job_images_per_s:.0f} img/s per job", flush=True)  # fmt: skip

    def wall(setup: Setup) -> float:
        return statistics.median(walls[setup])

    print()
    print("| setup | wall time | per-job img/s | speed-up over 1 trainer |")
    print("|---|---|---|---|")
    for setup in setups:
        baseline = Setup(1, setup.torch_threads if setup.torch_threads == "1" else "")
        speed_up = "—" if setup == baseline else f"{wall(baseline) / wall(setup):.2f}x"
        images = statistics.median(speeds[setup])
        print(f"| {setup.label} | {wall(setup):.1f} s | {images:.0f} | {speed_up} |")
    print(f"ratio={wall(Setup(1, '')) / wall(Setup(2, '')):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
