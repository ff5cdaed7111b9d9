"""CPU-heavy work of a request leaves a gevent worker's event loop free (``off_the_loop``), and
a lone request's forward pass runs inline (``run_off_the_loop_unless_alone``).

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


LONE_REQUESTS = """
from gevent import monkey
monkey.patch_all()
import socket, threading
import gevent
from cnnswarm.controller import event_loop

loop_thread = threading.get_ident()


def off_the_loop(inputs):
    return threading.get_ident() != loop_thread


def predict(environ, start_response):  # one WSGI request: one forward pass
    return [event_loop.run_off_the_loop_unless_alone(off_the_loop, None, environ["contended"])]


def request(contended=False):
    return event_loop.count_requests(predict)({"contended": contended}, None)[0]


print("alone", request())
print("contended", request(contended=True))
release = gevent.event.Event()


def slow(environ, start_response):
    release.wait()
    return []


other = gevent.spawn(event_loop.count_requests(slow), {}, None)
gevent.sleep(0)  # now in flight
print("beside another", request())
release.set()
other.join()
print("alone again", request())

# A request that arrives while a lone forward pass blocks the loop is read right after it.
sender, receiver = socket.socketpair()
read = []
reader = gevent.spawn(lambda: read.append(receiver.recv(1)))
gevent.sleep(0)  # the reader waits on its socket
sender.send(b"x")
request()
print("read right after", read)
"""


def test_under_gevent_a_lone_request_runs_its_forward_inline_then_lets_the_loop_read() -> None:
    answer = subprocess.run(
        [sys.executable, "-c", LONE_REQUESTS], capture_output=True, text=True, timeout=60
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.splitlines() == [
        "alone False",  # inline, on the loop's thread
        "contended True",  # the model's queue had company lately: off the loop
        "beside another True",  # another request of this worker needs the loop
        "alone again False",
        "read right after [b'x']",
    ]
