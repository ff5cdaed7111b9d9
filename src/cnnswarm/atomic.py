"""Atomic file writes: the one way cnn-swarm writes a file that a reader or a crash may see.

Guarantee: a reader (or the process after a crash) finds either the old file or the whole new
one, never a torn one. The data goes to a uniquely named temp file beside the target, is
fsynced, renamed into place, and the rename is made durable. If writing fails the temp file is
removed and the target is untouched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO


def write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(fh)`` on a temp file beside ``path``, fsync it, then rename it into place.

    An exception from ``write`` (e.g. a checksum that does not match) leaves ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: Path, chunks: Iterable[bytes] | bytes) -> int:
    """Write ``chunks`` (or one bytes object) to ``path`` atomically; returns bytes written."""
    size = 0

    def write(fh: IO[bytes]) -> None:
        nonlocal size
        for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
            fh.write(chunk)
            size += len(chunk)

    write_atomically(path, write)
    return size


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_atomic(path, text.encode())
