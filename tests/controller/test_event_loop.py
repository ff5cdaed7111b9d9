"""CPU-heavy work of a request leaves a gevent worker's event loop free (``off_the_loop``).

Under gevent (a fresh interpreter, patched as a gevent worker is), the work blocks on a pipe
that only another greenlet of the same loop writes to: run on the loop, it would wait forever
(that greenlet could never run); handed to the loop's thread pool, it gets its byte. Without
gevent the work runs in the caller's thread."""

from __future__ import annotations

import subprocess
import sys
import threading

from cnnswarm.controller.event_loop import off_the_loop

UNDER_GEVENT = """
from gevent import monkey
monkey.patch_all()
import os, threading
import gevent
from cnnswarm.controller.event_loop import off_the_loop

readable, writable = os.pipe()
caller = threading.get_ident()

def heavy(size):  # blocks its OS thread until the byte arrives
    return os.read(readable, size), threading.get_ident() != caller

def other_request():
    os.write(writable, b"x")

waiting = gevent.spawn(off_the_loop, heavy, 1)
gevent.spawn_later(0.1, other_request)
print(waiting.get(timeout=30))
"""


def test_under_gevent_the_work_runs_off_the_loop_while_other_greenlets_go_on() -> None:
    answer = subprocess.run(
        [sys.executable, "-c", UNDER_GEVENT], capture_output=True, text=True, timeout=60
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == "(b'x', True)"  # read on another thread


def test_without_gevent_the_work_runs_in_the_calling_thread() -> None:
    def where(value: int, *, plus: int) -> tuple[int, int]:
        return value + plus, threading.get_ident()

    assert off_the_loop(where, 1, plus=2) == (3, threading.get_ident())
