"""The one CPU policy: how many CPUs this process may use, and how they are split.

Everything that sizes a thread pool asks here: the servers (``cnnswarm.serve``, per gunicorn
worker), the trainer's job processes (per job slot) and the training loop's default
(``cnnswarm.ml.train``). The share is the smallest of the cgroup quota (v2 ``cpu.max``, v1
``cpu.cfs_quota_us``), the affinity mask and ``os.cpu_count()``, so a container's CPU limit
is honoured wherever the code runs.

This module imports no server, app or store (the import contract in ``pyproject.toml`` keeps
it that way), so a job process can use it without pulling in gunicorn or Flask.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from cnnswarm.config import Settings

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
    evenly among ``sharers`` (gunicorn workers for the controller, job slots for a trainer)."""
    if settings.torch_threads > 0:
        return settings.torch_threads
    return max(1, cpu_share() // max(1, sharers))
