"""Where a multi-process server keeps its Prometheus values: ``PROMETHEUS_MULTIPROC_DIR``.

A role served by several processes (the controller's gunicorn workers) uses
``prometheus_client``'s multiprocess mode: each worker writes its values to memory-mapped files
in one folder, and ``/metrics``, whichever worker answers it, adds them up. ``prometheus_client``
reads ``PROMETHEUS_MULTIPROC_DIR`` when it is first imported, so ``use_multiprocess_dir`` must run
in the gunicorn master before anything imports it (this module imports it only inside
``mark_worker_dead``, which runs later).

Guarantees: every server instance gets a folder of its own, emptied when it starts (values of a
previous run never leak into this one): the folder named by ``PROMETHEUS_MULTIPROC_DIR`` when it
is set (a container's tmpfs), else a fresh temporary folder, removed by ``remove`` when the server
exits. A temporary folder records its server's pid (``OWNER_FILE``), so a server that was killed
(``kill -9`` cannot clean up) leaves nothing for long: the next one to start on the host removes
every such folder whose owner is gone. A worker that exits is marked dead (``mark_worker_dead``),
so gauges of the ``live*`` modes drop its values while its counters keep counting in the totals.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
OWNER_FILE = "owner.pid"  # the pid of the server that created a temporary folder


class MultiprocessDir:
    """This server instance's metric folder (see the module docstring)."""

    def __init__(self, path: Path, *, owned: bool) -> None:
        self.path = path
        self.owned = owned  # created here, so removed here

    def remove(self) -> None:
        """Remove the folder when this module created it (a named one is left for inspection)."""
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)


def use_multiprocess_dir(role: str) -> MultiprocessDir:
    """Point ``prometheus_client`` (imported after this call) at an empty folder of this server
    instance: ``$PROMETHEUS_MULTIPROC_DIR`` emptied, else a new temporary folder."""
    named = os.environ.get(ENV_VAR, "")
    if named:
        path = Path(named)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        folder = MultiprocessDir(path, owned=False)
    else:
        prefix = f"cnnswarm-{role}-metrics-"
        remove_orphans(Path(tempfile.gettempdir()), prefix)
        folder = MultiprocessDir(Path(tempfile.mkdtemp(prefix=prefix)), owned=True)
        (folder.path / OWNER_FILE).write_text(str(os.getpid()))
    os.environ[ENV_VAR] = str(folder.path)
    return folder


def remove_orphans(parent: Path, prefix: str) -> list[Path]:
    """Remove the temporary metric folders under ``parent`` whose server is gone (its pid no
    longer runs); return them. Folders without an owner file are left alone."""
    removed = []
    for path in parent.glob(f"{prefix}*"):
        try:
            owner = int((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not process_alive(owner):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def use_single_process() -> None:
    """This server runs its metrics in one process: an inherited folder must not switch
    ``prometheus_client`` (imported after this call) to multiprocess mode."""
    os.environ.pop(ENV_VAR, None)


def mark_worker_dead(pid: int) -> None:
    """In the gunicorn master, once worker ``pid`` has exited: drop its ``live*`` gauge values."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
