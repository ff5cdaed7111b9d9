"""The artifact store: atomic writes, contained paths, and the sweep of abandoned temp files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cnnswarm.atomic import write_atomic
from cnnswarm.errors import InvalidInput
from cnnswarm.store.artifacts import ArtifactStore, check_id


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "file.bin"
    assert write_atomic(target, [b"one", b"two"]) == 6
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


@pytest.mark.parametrize(
    "bad", ["", "..", "../x", "a/b", ".hidden", "x" * 200, "é", "abc\n", None, 5]
)
def test_unsafe_ids_are_refused(bad: object) -> None:
    with pytest.raises(InvalidInput):
        check_id(bad, "model_id")


def test_paths_stay_inside_home(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert store.model_path("m1", 2) == tmp_path.resolve() / "torch_models" / "m1" / "attempt-2.pth"
    with pytest.raises(InvalidInput):
        store.dataset_path("../../etc/passwd")


def test_sweep_removes_only_old_temp_files(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    old = tmp_path / "checkpoints" / ".job-1.pt.abc.tmp"
    fresh = tmp_path / "checkpoints" / ".job-2.pt.def.tmp"
    kept = tmp_path / "checkpoints" / "job-1.pt"
    for path in (old, fresh, kept):
        path.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(kept, (two_hours_ago, two_hours_ago))
    assert store.sweep_temp_files(older_than_s=3600) == 1
    assert not old.exists() and fresh.exists() and kept.exists()


def test_latest_checkpoint_is_the_highest_attempts(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert store.latest_checkpoint("job-1") is None
    for attempt in (1, 3, 2):
        write_atomic(store.checkpoint_path("job-1", attempt), f"a{attempt}".encode())
    latest = store.latest_checkpoint("job-1")
    assert latest is not None and latest.read_bytes() == b"a3"
    store.remove_checkpoints("job-1")
    assert store.latest_checkpoint("job-1") is None
