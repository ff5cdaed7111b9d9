"""cnnswarm.cpu: the CPU share (cgroup v1/v2 quota, affinity mask), its split among sharers and
the host's job registry (real files, locks and processes)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnnswarm.config import ConfigError, Settings, load_settings
from cnnswarm.cpu import (
    HostJobs,
    cgroup_cpu_limit,
    check_coordination_dir,
    cpu_share,
    fair_threads,
    job_share,
    torch_threads_for,
)


def test_cpu_share_reads_the_cgroup_v2_quota(tmp_path: Path) -> None:
    available = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None and cpu_share(tmp_path) == available
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU rounds up to one
    assert cgroup_cpu_limit(tmp_path) == 1 and cpu_share(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2
    assert cpu_share(tmp_path / "absent") == available


@pytest.mark.parametrize("folder", ["cpu", "cpu,cpuacct"])
def test_cpu_share_reads_the_cgroup_v1_quota(tmp_path: Path, folder: str) -> None:
    v1 = tmp_path / folder
    v1.mkdir()
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert cgroup_cpu_limit(tmp_path) is None
    (v1 / "cpu.cfs_quota_us").write_text("250000\n")
    assert cgroup_cpu_limit(tmp_path) == 3
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    assert cpu_share(tmp_path) == 1


def test_garbled_cgroup_files_mean_no_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("lots 0\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("100000 0\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_torch_threads_split_the_share_unless_set() -> None:
    assert torch_threads_for(Settings(torch_threads=3), sharers=4) == 3
    assert torch_threads_for(Settings(), sharers=1) == cpu_share()
    assert torch_threads_for(Settings(), sharers=10_000) == 1


# -- the host's job registry: real files, real locks, real processes ----------------------------

# A job process: joins the registry, says so, and holds its entry until stdin closes.
JOB_PROCESS = (
    "import sys; from pathlib import Path; from cnnswarm.cpu import HostJobs\n"
    "with HostJobs(Path(sys.argv[1])).joined() as entry:\n"
    "    print(entry, flush=True); sys.stdin.read()\n"
)


@contextlib.contextmanager
def job_processes(directory: Path, count: int) -> Iterator[list[tuple[subprocess.Popen[str], str]]]:
    """``count`` real processes registered as jobs in ``directory``; all killed at the end."""
    processes = []
    try:
        for _ in range(count):
            process = subprocess.Popen(
                [sys.executable, "-c", JOB_PROCESS, str(directory)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            processes.append(process)
        # Each prints its entry once it holds the lock (readline waits for that line).
        yield [(process, _first_line(process)) for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()


def _first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def test_a_job_counts_while_it_runs_and_leaves_nothing_behind(tmp_path: Path) -> None:
    jobs = HostJobs(tmp_path / "jobs")
    assert jobs.live() == []  # the folder does not exist yet
    with jobs.joined() as entry:
        assert jobs.live() == [entry]
        assert jobs.live() == [entry]  # counting does not disturb a live job
    assert jobs.live() == [] and list((tmp_path / "jobs").iterdir()) == []


def test_jobs_of_other_processes_count_until_they_end_or_die(tmp_path: Path) -> None:
    jobs = HostJobs(tmp_path)
    with job_processes(tmp_path, 3) as processes:
        entries = [entry for _, entry in processes]
        assert jobs.live() == sorted(entries)
        (ended, ended_entry), (killed, killed_entry), _ = processes
        ended.communicate("")  # closes stdin: the job ends normally and removes its entry
        killed.send_signal(signal.SIGKILL)  # no clean-up runs: its lock goes with the process
        killed.wait()
        assert (tmp_path / killed_entry).exists()
        with jobs.joined() as mine:
            assert jobs.live() == sorted([entries[2], mine])
        assert not (tmp_path / killed_entry).exists()  # the dead job's file was removed
        assert not (tmp_path / ended_entry).exists()


def test_half_made_entries_are_removed_only_when_old(tmp_path: Path) -> None:
    young, old = tmp_path / ".1-young.pending", tmp_path / ".2-old.pending"
    young.touch()
    old.touch()
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert HostJobs(tmp_path).live() == []
    assert young.exists() and not old.exists()


@pytest.mark.parametrize(
    ("cpus", "jobs", "threads"),
    [(2, 1, [2]), (2, 2, [1, 1]), (2, 3, [1, 1, 1]), (4, 3, [2, 1, 1]), (16, 2, [8, 8])],
)
def test_fair_threads_split_the_cpus_and_hand_out_the_remainder(
    cpus: int, jobs: int, threads: list[int]
) -> None:
    names = [f"job-{index}" for index in range(jobs)]
    assert [fair_threads(cpus, names, name) for name in names] == threads
    assert fair_threads(cpus, [], "not-listed-yet") == cpus


def test_a_job_share_follows_the_jobs_on_the_host_unless_threads_are_set(tmp_path: Path) -> None:
    with job_share(tmp_path) as share:
        assert share() == share.cpus == cpu_share()  # alone: every core
        with job_processes(tmp_path, 1) as [(_, other)]:
            assert share() == fair_threads(share.cpus, sorted([share.entry, other]), share.entry)
            assert share() < share.cpus or share.cpus == 1  # no longer every core
        assert share() == share.cpus  # the other job ended
    with job_share(tmp_path, explicit_threads=3) as share, job_processes(tmp_path, 1):
        assert share() == 3  # TORCH_THREADS wins
        assert len(HostJobs(tmp_path).live()) == 2  # and the job still counts for the others


def test_the_coordination_folder_is_checked_at_start(tmp_path: Path) -> None:
    check_coordination_dir(Settings(cpu_coordination_dir=tmp_path / "new" / "folder"))
    assert (tmp_path / "new" / "folder").is_dir()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="CPU_COORDINATION_DIR"):
        check_coordination_dir(Settings(cpu_coordination_dir=tmp_path / "file" / "jobs"))


def test_the_coordination_folder_is_per_user_in_memory_unless_set() -> None:
    default = load_settings({}).cpu_coordination_dir
    assert default.name.endswith(str(os.getuid())) or default.name == "cnn-swarm-cpu"
    if Path("/dev/shm").is_dir():
        assert default.parent == Path("/dev/shm")
    assert load_settings({"CPU_COORDINATION_DIR": "/srv/cpu"}).cpu_coordination_dir == Path(
        "/srv/cpu"
    )
