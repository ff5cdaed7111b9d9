"""The controller's metrics across gunicorn workers (``prometheus_client`` multiprocess mode):
whichever worker answers ``/metrics`` reports every worker's counts, a worker that dies leaves
its counts in the totals and its live gauges out, and a restart starts from an empty folder."""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict

from cluster import Cluster
from support import metric_value, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def worker_pids(metrics_dir: Path) -> set[int]:
    """The processes that wrote counters to the folder (one file per process)."""
    return {int(path.stem.rsplit("_", 1)[1]) for path in metrics_dir.glob("counter_*.db")}


def healthz_by_worker(metrics_dir: Path) -> dict[int, float]:
    """Each worker's own count of answered ``GET /healthz``, read from its file."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        counts[int(path.stem.rsplit("_", 1)[1])] = sum(
            value
            for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))
            if json.loads(key)[1] == "cnnswarm_http_requests_total"
            and json.loads(key)[2].get("route") == "/healthz"
        )
    return counts


def healthz_count(url: str) -> float | None:
    text = requests.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=10).text
    return metric_value(
        text, "cnnswarm_http_requests_total", route="/healthz", method="GET", status="200"
    )


def test_two_workers_report_one_total(cluster: Cluster, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale = metrics_dir / "counter_999999.db"
    stale.write_bytes(b"left by a previous run")
    controller = cluster.start_controller(
        env={"GUNICORN_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    )
    assert not stale.exists()
    url = controller.url
    sent = 0

    def probe(_: int) -> int:
        return requests.get(
            f"{url}/healthz", headers={"Connection": "close"}, timeout=10
        ).status_code

    # Requests on fresh connections, 8 at a time, until both workers have counted some
    # (each writes its buffered counts within a second: cnnswarm.metric_buffers).
    with ThreadPoolExecutor(8) as pool:

        def both_workers_answered() -> bool:
            nonlocal sent
            assert set(pool.map(probe, range(16))) == {200}
            sent += 16
            counts = healthz_by_worker(metrics_dir)
            return len(counts) == 2 and all(counts.values())

        wait_until(both_workers_answered, 30, interval=0.5, what="both workers to answer")

    wait_until(lambda: healthz_count(url) == sent, 10, what=f"the total of {sent} requests")
    assert sum(healthz_by_worker(metrics_dir).values()) == sent
    for _ in range(4):  # each scrape may land on either worker: every one sees the total
        assert healthz_count(url) == sent

    # A worker killed: gunicorn starts another; the dead one's counts stay in the totals.
    victim = min(worker_pids(metrics_dir))
    assert (metrics_dir / f"gauge_livesum_{victim}.db").exists()  # its model cache size
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(worker_pids(metrics_dir)) == 3, 60, what="a replacement worker")
    wait_until(
        lambda: not (metrics_dir / f"gauge_livesum_{victim}.db").exists(),
        10,
        what="the dead worker's live gauges to be dropped",
    )
    assert healthz_count(url) == sent
