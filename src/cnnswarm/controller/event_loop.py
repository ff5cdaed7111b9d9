"""Forward passes and other CPU-heavy work under gevent workers (the controller's default).

A gevent worker runs all its requests as greenlets on one OS thread: parsing, decoding and
Flask never compete for the GIL with other request threads, which is what makes it faster than
threads under concurrency. A forward pass run on that thread would stop the event loop for its
whole length, and no other request of the worker could even reach the model's queue, so nothing
would ever batch. So a forward pass runs in the event loop's thread pool: torch computes on
another thread (it releases the GIL) while the other requests go on parsing and decoding and
queue up for the next batch (``controller.inference_queue``).

Except for a lone request: when it is the only request the worker is handling
(``count_requests`` counts them at the WSGI boundary) and its model has had no request queued
lately (the queue says so: ``contended``), no other request needs the loop while its forward
pass runs, and the hand-off would only add two thread wake-ups to its answer. It runs inline,
then lets the loop read what arrived meanwhile, which waited at most that forward pass (about
1 ms for one image). The model's recent contention matters because requests still being parsed
are not counted yet: under load a worker often has one counted request and thirty unread, and
those must batch, not run one by one on the loop (c=64 lost 15-20 % that way).

The same holds for every other CPU-heavy step of a request: decoding an uploaded dataset,
materialising or loading a dataset's arrays, recalibrating an imported model, exporting
TorchScript, loading a model into the cache. Each runs through ``off_the_loop``, so a worker's
other requests (predicts, health probes, heartbeats) go on while it runs. Work handed off must
not touch Flask's request context (it runs on another thread): the callers pass it what it
needs.

Under gthread workers (``GUNICORN_WORKER_CLASS=gthread``) it runs in the request's own thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import ParamSpec, TypeVar
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]
# (forward, inputs, contended): contended says the model has had requests queued lately.
ForwardRunner = Callable[[Forward, torch.Tensor, bool], torch.Tensor]
P = ParamSpec("P")
T = TypeVar("T")


def run_inline(forward: Forward, inputs: torch.Tensor, contended: bool) -> torch.Tensor:
    """Run the forward pass in the calling thread, contended or not."""
    return forward(inputs)


# Requests this process's app is handling now (``count_requests``). Read only under gevent,
# where every request runs on the one event-loop thread, so a plain int is exact.
_requests_in_flight = 0
# The longest a request waits for its worker's event loop to go idle after an inline forward.
_IDLE_WAIT_BOUND_S = 0.002


def count_requests(wsgi_app: WSGIApplication) -> WSGIApplication:
    """``wsgi_app``, counting the requests it is handling (see the module docstring)."""

    def counted(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        global _requests_in_flight
        _requests_in_flight += 1
        try:
            return wsgi_app(environ, start_response)
        finally:
            _requests_in_flight -= 1

    return counted


def run_off_the_loop_unless_alone(
    forward: Forward, inputs: torch.Tensor, contended: bool
) -> torch.Tensor:
    """Run the forward pass in the gevent hub's thread pool (the calling greenlet waits), or
    inline when the calling request is the only one this worker is handling and the model is
    not ``contended``."""
    if contended or _requests_in_flight > 1:
        return _in_the_thread_pool(forward, inputs)
    outputs = forward(inputs)
    _let_the_loop_read()
    return outputs


def _let_the_loop_read() -> None:
    """Let the event loop handle what arrived meanwhile before this greenlet goes on. A
    greenlet that never blocks keeps the loop: its connection's next request is often read at
    once, and requests on other connections were never even counted (measured at c=4 without
    this: p50 4 ms, p90 309 ms, the other connections starved). ``gevent.sleep(0)`` resumes it
    before the loop polls its sockets; waiting for the loop to go idle is what polls them, and
    it is bounded, because a busy loop is never idle (unbounded, it held answers up to 200 ms)."""
    import gevent

    with gevent.Timeout(_IDLE_WAIT_BOUND_S, False):
        gevent.idle()


def off_the_loop(work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``work(*args, **kwargs)``, CPU-heavy: in the event loop's thread pool under gevent (the
    calling greenlet waits; the worker's other requests go on), else in the calling thread."""
    if under_gevent():
        return _in_the_thread_pool(work, *args, **kwargs)
    return work(*args, **kwargs)


def _in_the_thread_pool(work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    from gevent import get_hub

    result: T = get_hub().threadpool.apply(work, args, kwargs)
    return result


def under_gevent() -> bool:
    """Whether this process runs on gevent's monkey-patched threads (a gevent worker)."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("threading"))


def forward_runner() -> ForwardRunner:
    """How this process runs forward passes (see the module docstring)."""
    return run_off_the_loop_unless_alone if under_gevent() else run_inline
