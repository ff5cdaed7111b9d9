"""An upload over the size limit, streamed to a real gunicorn controller, is answered 413 and
never sits in the server's memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from chaos_support import rss_kib
from cluster import Cluster, ServerProcess, living_group_members
from support import wait_until

pytestmark = pytest.mark.e2e

LIMIT_MB = 1
WORKERS = 2  # the default
SENT_MB = 96
SETTLED_MIB = 8  # half a second's growth that counts as settled (a booting worker grows faster)


def group_rss_mib(server: ServerProcess) -> float:
    """Resident memory of the server's whole process group (gunicorn master and workers)."""
    return sum(rss_kib(pid) for pid in living_group_members(server.pid)) / 1024


def settled_group_rss_mib(server: ServerProcess, processes: int) -> float:
    """``group_rss_mib`` once the group has ``processes`` members and its memory stopped
    growing (a worker still booting after ``/readyz`` answered would count as growth)."""
    readings: list[float] = []

    def settled() -> bool:
        readings.append(group_rss_mib(server))
        members = len(living_group_members(server.pid))
        steady = len(readings) > 1 and abs(readings[-1] - readings[-2]) < SETTLED_MIB
        return members == processes and steady

    wait_until(settled, 60, interval=0.5, what="the controller's memory to settle")
    return readings[-1]


def oversized_body() -> Iterator[bytes]:
    """A multipart body far over the limit, produced lazily (sent chunked, no length)."""
    yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n\r\n'
    chunk = b"\0" * (1 << 20)
    for _ in range(SENT_MB):
        yield chunk


def post(url: str, **kwargs: object) -> int:
    """The status the server answered (a server that stops reading early may reset the
    connection after answering; then the answer is read from a retry with a small body)."""
    try:
        response = requests.post(
            f"{url}/api/v1/datasets",
            headers={"Content-Type": "multipart/form-data; boundary=b"},
            timeout=120,
            **kwargs,  # type: ignore[arg-type]
        )
    except requests.ConnectionError:
        return -1
    return response.status_code


def test_streamed_upload_over_the_limit_is_413_with_bounded_memory(tmp_path: Path) -> None:
    with Cluster(tmp_path / "cluster") as cluster:
        controller = cluster.start_controller(
            env={"MAX_UPLOAD_MB": str(LIMIT_MB), "GUNICORN_WORKERS": str(WORKERS)}
        )
        before = settled_group_rss_mib(controller, processes=1 + WORKERS)
        chunked = post(controller.url, data=oversized_body())
        declared = post(controller.url, data=b"\0" * ((LIMIT_MB + 1) << 20))
        after = group_rss_mib(controller)
        assert declared == 413
        assert chunked in (413, -1)  # 413, or the connection cut after the server answered
        # The server did not keep the body: memory grew far less than what was sent.
        assert after - before < SENT_MB / 3, (before, after)
        print(
            f"chunked answer {chunked}, declared answer {declared}, "
            f"RSS {before:.0f} -> {after:.0f} MiB after {SENT_MB} MiB sent"
        )
        assert controller.get("/readyz")["ready"] is True
        listed = controller.get("/api/v1/datasets")["datasets"]
        assert [d["id"] for d in listed] == ["cifar10", "digits", "synthetic"]
