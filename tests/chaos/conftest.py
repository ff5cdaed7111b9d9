"""Fixtures of the chaos tier: real clusters (``tests/cluster.py``) with short leases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos_support import CHAOS_TIMINGS
from cluster import Cluster


@pytest.fixture
def chaos_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """An empty cluster with the chaos timings (lease 3 s) and a retry budget of 10."""
    with Cluster(
        tmp_path / "cluster", timings=CHAOS_TIMINGS, env={"MAX_ATTEMPTS": "10"}
    ) as started:
        yield started
