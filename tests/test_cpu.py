"""cnnswarm.cpu: the CPU share (cgroup v1/v2 quota, affinity mask) and its split among sharers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cnnswarm.config import Settings
from cnnswarm.cpu import cgroup_cpu_limit, cpu_share, torch_threads_for


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
