"""Fixtures of the e2e tier: a real cluster (``tests/cluster.py``) per test or per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """An empty cluster under ``tmp_path``; every process it starts is killed at the end."""
    with Cluster(tmp_path / "cluster") as started:
        yield started
