"""Temporary metric folders of killed servers are removed by the next server to start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cnnswarm.metrics_dir import OWNER_FILE, remove_orphans


def folder(parent: Path, name: str, owner: int | None) -> Path:
    path = parent / f"cnnswarm-controller-metrics-{name}"
    path.mkdir()
    (path / "counter_1.db").write_bytes(b"values")
    if owner is not None:
        (path / OWNER_FILE).write_text(str(owner))
    return path


def a_finished_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid  # reaped: no process has this pid now (until the kernel reuses it)


def test_only_folders_whose_server_is_gone_are_removed(tmp_path: Path) -> None:
    killed = folder(tmp_path, "killed", a_finished_pid())
    running = folder(tmp_path, "running", os.getpid())
    unowned = folder(tmp_path, "unowned", None)
    other_role = tmp_path / "cnnswarm-trainer-metrics-x"
    other_role.mkdir()
    (other_role / OWNER_FILE).write_text(str(a_finished_pid()))

    assert remove_orphans(tmp_path, "cnnswarm-controller-metrics-") == [killed]
    assert not killed.exists()
    assert running.exists() and unowned.exists() and other_role.exists()
