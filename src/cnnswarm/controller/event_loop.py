"""Forward passes and other CPU-heavy work under gevent workers (the controller's default).

A gevent worker runs all its requests as greenlets on one OS thread: parsing, decoding and
Flask never compete for the GIL with other request threads, which is what makes it faster than
threads under concurrency. A forward pass run on that thread would stop the event loop for its
whole length, and no other request of the worker could even reach the model's queue, so nothing
would ever batch. So a forward pass runs in the event loop's thread pool: torch computes on
another thread (it releases the GIL) while the other requests go on parsing and decoding and
queue up for the next batch (``controller.inference_queue``). The hand-off costs a lone client
a little latency (``bench/serving_peers.py`` measures both classes; README, Serving).

The same holds for every other CPU-heavy step of a request: decoding an uploaded dataset,
materialising or loading a dataset's arrays, recalibrating an imported model, exporting
TorchScript, loading a model into the cache. Each runs through ``off_the_loop``, so a worker's
other requests (predicts, health probes, heartbeats) go on while it runs. Work handed off must
not touch Flask's request context (it runs on another thread): the callers pass it what it
needs.

Under gthread workers (``GUNICORN_WORKER_CLASS=gthread``) it runs in the request's own thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]
ForwardRunner = Callable[[Forward, torch.Tensor], torch.Tensor]
P = ParamSpec("P")
T = TypeVar("T")


def run_inline(forward: Forward, inputs: torch.Tensor) -> torch.Tensor:
    """Run the forward pass in the calling thread."""
    return forward(inputs)


def run_off_the_event_loop(forward: Forward, inputs: torch.Tensor) -> torch.Tensor:
    """Run the forward pass in the gevent hub's thread pool; the calling greenlet waits."""
    return _in_the_thread_pool(forward, inputs)


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
    return run_off_the_event_loop if under_gevent() else run_inline
