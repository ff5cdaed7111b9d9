"""A kill during a checkpoint write never leaves a corrupt checkpoint as the latest.

- Library: a forked process rewrites one checkpoint file in a loop with
  ``save_checkpoint`` and is ``kill -9``ed at a random moment, many times; the file must always
  load with ``load_checkpoint`` and hold one complete version (its tensors agree with its
  version number).
- Controller: a real controller is ``kill -9``ed while a large checkpoint ``PUT`` streams in (at
  a random point of the upload, including just after it); after the restart the stored file
  under ``HOME_DIR/checkpoints/`` loads and is the previous checkpoint or the new one, never a
  torn one. The job is owned by a stand-in trainer (``FakeTrainer``), so no training runs.
"""

from __future__ import annotations

import http.client
import multiprocessing
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import torch

from chaos_support import FakeTrainer
from cluster import Cluster
from cnnswarm.ml.checkpoint import checkpoint_to_bytes, load_checkpoint, save_checkpoint
from support import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

LIBRARY_KILLS = 60
CONTROLLER_KILLS = 4


def _checkpoint(version: int, megabytes: int) -> dict[str, Any]:
    """A checkpoint whose every element says which version it is."""
    numel = megabytes * (1 << 20) // 4
    return {
        "version": version,
        "weights": torch.full((numel,), float(version)),
        "metrics": [{"epoch": version}],
    }


def _assert_whole(ckpt: dict[str, Any]) -> int:
    version = int(ckpt["version"])
    assert bool((ckpt["weights"] == float(version)).all()), "a torn mix of versions"
    assert ckpt["metrics"] == [{"epoch": version}]
    return version


def _rewrite_forever(path: str, start: int) -> None:
    version = start
    while True:
        save_checkpoint(_checkpoint(version, 4), Path(path))
        version += 1


def test_kill_during_save_checkpoint_leaves_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "job.pt"
    save_checkpoint(_checkpoint(0, 4), path)
    rng = random.Random(5)
    fork = multiprocessing.get_context("fork")
    versions = []
    for round_ in range(LIBRARY_KILLS):
        child = fork.Process(target=_rewrite_forever, args=(str(path), 1000 * (round_ + 1)))
        child.start()
        time.sleep(rng.uniform(0.0, 0.15))  # the kill lands at a random point of a write
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        versions.append(_assert_whole(load_checkpoint(path)))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "job.pt"]
    print(
        f"\nsave_checkpoint killed {LIBRARY_KILLS} times: the file always loaded; "
        f"{len(set(versions))} distinct versions seen; {len(leftovers)} temp files left behind"
    )
    assert len(set(versions)) > 1, "the kills never landed after a completed write"


def _stream_put(url: str, job_id: str, data: bytes, chunk: int, pause_s: float) -> None:
    """PUT ``data`` as the owning trainer would, slowly; connection errors are expected."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("PUT", f"/internal/v1/jobs/{job_id}/checkpoint?attempt=1")
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(len(data)))
        conn.endheaders()
        for start in range(0, len(data), chunk):
            conn.send(data[start : start + chunk])
            time.sleep(pause_s)
        conn.getresponse().read()
    except OSError:
        pass
    finally:
        conn.close()


def test_controller_killed_during_checkpoint_upload(tmp_path: Path) -> None:
    # A long lease: the stand-in trainer keeps the job without heartbeats.
    with Cluster(tmp_path / "cluster", env={"LEASE_TIMEOUT_S": "300"}) as cluster:
        controller = cluster.start_controller()
        client = cluster.client()
        job_id = client.submit_job(
            dataset="digits", model_type="SmallConvNet", train_opts={"num_epochs": 1}
        )["id"]
        stored = controller.home / "checkpoints" / job_id / "attempt-1.pt"
        with FakeTrainer(controller.url) as fake:
            assert fake.wait_dispatch(job_id)["attempt"] == 1
        rng = random.Random(7)
        previous = checkpoint_to_bytes(_checkpoint(1, 1))
        _stream_put(controller.url, job_id, previous, 1 << 20, 0.0)
        assert _assert_whole(load_checkpoint(stored)) == 1
        outcomes = {"previous": 0, "new": 0}
        for round_ in range(CONTROLLER_KILLS):
            version = round_ + 2
            data = checkpoint_to_bytes(_checkpoint(version, 24))
            # ~24 chunks of 1 MiB, 20 ms apart: the kill lands anywhere in ~0.5 s + the write.
            upload = threading.Thread(
                target=_stream_put, args=(controller.url, job_id, data, 1 << 20, 0.02)
            )
            upload.start()
            time.sleep(rng.uniform(0.05, 0.7))
            controller.kill()
            upload.join(timeout=60)
            cluster.restart(controller)
            found = _assert_whole(load_checkpoint(stored))
            assert found in (version - 1, version), found  # the previous one or the new one
            outcomes["new" if found == version else "previous"] += 1
            if found != version:  # store this version whole, so the next round has a new one
                _stream_put(controller.url, job_id, data, 1 << 20, 0.0)
                wait_until(lambda v=version: _assert_whole(load_checkpoint(stored)) == v, 10)
        assert client.get_job(job_id)["attempt"] == 1
        print(f"\ncontroller killed {CONTROLLER_KILLS} times mid-upload: {outcomes}")
