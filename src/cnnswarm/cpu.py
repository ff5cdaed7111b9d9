"""The one CPU policy: how many CPUs this process may use, and how they are split.

Everything that sizes a thread pool for training asks here: the trainer server
(``cnnswarm.serve``), its job processes and the training loop's default (``cnnswarm.ml.train``).
The controller is the exception: each of its workers runs ``PREDICT_TORCH_THREADS`` torch
threads (1 by default; see ``controller/predictor.py`` for why).
The share is the smallest of the cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), the
affinity mask and ``os.cpu_count()``, so a container's CPU limit is honoured wherever the code
runs.

Training jobs split the host among themselves, wherever their trainers come from (``cnn-swarm
up``, several ``serve`` processes, compose ``--scale`` with a shared tmpfs): each job process
holds an ``flock``'d file in one directory per host (``HostJobs``, ``CPU_COORDINATION_DIR``),
and ``JobShare`` answers ``cpu_share() / live jobs`` whenever the training loop asks. So one job
alone gets every core and two concurrent jobs get half each, which a fixed per-trainer split
cannot give. Guarantees: a job's file disappears with its lock when the process dies, even by
SIGKILL (the next count removes the file); a count never includes a dead job; an explicit
``TORCH_THREADS`` always wins.

This module imports no server, app or store (the import contract in ``pyproject.toml`` keeps
it that way), so a job process can use it without pulling in gunicorn or Flask.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from cnnswarm.config import ConfigError, Settings

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> int | None:
    """The whole CPUs this process's cgroup quota allows, rounded up: cgroup v2 ``cpu.max``, else
    v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (under ``cpu/`` or ``cpu,cpuacct/``).
    None when there is no quota or it cannot be read."""
    candidates = [(root / "cpu.max", None)] + [
        (root / d / "cpu.cfs_quota_us", root / d / "cpu.cfs_period_us")
        for d in ("cpu", "cpu,cpuacct")
    ]
    for quota_path, period_path in candidates:
        try:
            if period_path is None:
                quota, _, period = quota_path.read_text().strip().partition(" ")
            else:
                quota, period = quota_path.read_text().strip(), period_path.read_text().strip()
        except OSError:
            continue
        if quota in ("max", "-1"):
            return None
        try:
            quota_us, period_us = int(quota), int(period)
        except ValueError:
            return None
        return math.ceil(quota_us / period_us) if quota_us > 0 and period_us > 0 else None
    return None


def cpu_share(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The whole CPUs this process may use: the smallest of the cgroup quota
    (``cgroup_cpu_limit``), the CPU affinity mask and ``os.cpu_count()``; at least 1."""
    limits = [os.cpu_count() or 1]
    with contextlib.suppress(AttributeError, OSError):  # no sched_getaffinity on macOS
        limits.append(len(os.sched_getaffinity(0)))
    quota = cgroup_cpu_limit(cgroup_root)
    if quota is not None:
        limits.append(quota)
    return max(1, min(limits))


def torch_threads_for(settings: Settings, *, sharers: int) -> int:
    """Intra-op threads for torch: ``settings.torch_threads`` when set, else the CPU share split
    evenly among ``sharers`` (a trainer's job slots; training jobs use ``JobShare``, which
    follows the jobs actually running)."""
    if settings.torch_threads > 0:
        return settings.torch_threads
    return max(1, cpu_share() // max(1, sharers))


JOB_SUFFIX = ".job"
# A half-made entry (created, not yet locked and renamed) older than this belonged to a process
# that died in between; younger ones may still be on their way.
STALE_PENDING_S = 60.0


class HostJobs:
    """The training jobs running on this host: one ``flock``'d file per live job in
    ``directory`` (a tmpfs shared by every trainer on the host)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextlib.contextmanager
    def joined(self) -> Iterator[str]:
        """Count this process as one running job until the block ends (or the process dies);
        yields the entry's name."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        pending = self.directory / f".{name}.pending"
        entry = self.directory / f"{name}{JOB_SUFFIX}"
        fd = os.open(pending, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            # Locked before it is visible under a job name: a counter that sees the name and
            # can lock it knows the holder is gone.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(pending, entry)
            yield entry.name
        finally:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            with contextlib.suppress(FileNotFoundError):
                pending.unlink()
            os.close(fd)

    def live(self) -> list[str]:
        """The names of the live jobs' entries, sorted; entries of dead jobs are removed."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        alive = []
        for name in names:
            path = self.directory / name
            if name.endswith(JOB_SUFFIX):
                if _held_by_a_live_process(path):
                    alive.append(name)
            elif name.endswith(".pending"):
                with contextlib.suppress(OSError):
                    if time.time() - path.stat().st_mtime > STALE_PENDING_S:
                        path.unlink()
        return sorted(alive)


def _held_by_a_live_process(path: Path) -> bool:
    """Whether another open file holds ``path``'s lock; if none does, its owner is dead and the
    file is removed (under the lock, so two counters cannot both take it for live)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # its job just ended
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return False
    finally:
        os.close(fd)


def fair_threads(cpus: int, live_jobs: list[str], me: str) -> int:
    """``me``'s threads when ``live_jobs`` split ``cpus``: an even share, the remainder going
    one each to the first jobs by name; at least 1."""
    count = max(1, len(live_jobs))
    rank = live_jobs.index(me) if me in live_jobs else count - 1
    return max(1, cpus // count + (1 if rank < cpus % count else 0))


class JobShare:
    """One job's fair share of the host's CPUs, asked again whenever the training loop
    calls it: ``explicit_threads`` when set (``TORCH_THREADS``), else ``fair_threads`` of this
    process's ``cpu_share()`` among the live jobs of ``HostJobs``."""

    def __init__(self, jobs: HostJobs, entry: str, *, explicit_threads: int = 0) -> None:
        self.jobs = jobs
        self.entry = entry
        self.explicit_threads = explicit_threads
        self.cpus = cpu_share()  # the quota does not change while a job runs

    def __call__(self) -> int:
        if self.explicit_threads > 0:
            return self.explicit_threads
        return fair_threads(self.cpus, self.jobs.live(), self.entry)


@contextlib.contextmanager
def job_share(directory: Path, *, explicit_threads: int = 0) -> Iterator[JobShare]:
    """Register this process as a running job on the host for the block (even with explicit
    threads, so the others count it) and yield its ``JobShare``."""
    jobs = HostJobs(directory)
    with jobs.joined() as entry:
        yield JobShare(jobs, entry, explicit_threads=explicit_threads)


def check_coordination_dir(settings: Settings) -> None:
    """Raise ``ConfigError`` naming ``CPU_COORDINATION_DIR`` unless a job of this process could
    register in ``settings.cpu_coordination_dir`` (created when missing)."""
    directory = settings.cpu_coordination_dir
    try:
        with HostJobs(directory).joined():
            pass
    except OSError as exc:
        raise ConfigError(
            f"Config 'CPU_COORDINATION_DIR' must be a folder this user can create files in "
            f"(shared by every trainer on the host), got {str(directory)!r}: {exc.strerror}."
        ) from None
