"""Forward passes under gevent workers (``GUNICORN_WORKER_CLASS=gevent``).

A gevent worker runs all its requests as greenlets on one OS thread: parsing, decoding and
Flask never compete for the GIL with other request threads, which is what makes it faster than
threads under concurrency. A forward pass run on that thread would stop the event loop for its
whole length, and no other request of the worker could even reach the model's queue, so nothing
would ever batch. So a forward pass runs in the event loop's thread pool: torch computes on
another thread (it releases the GIL) while the other requests go on parsing and decoding and
queue up for the next batch (``controller.inference_queue``). The hand-off costs a lone client
a little latency (``bench/serving_peers.py`` measures both classes; README, Serving).

Under gthread workers (the default) a forward pass runs in its request's own thread.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]
ForwardRunner = Callable[[Forward, torch.Tensor], torch.Tensor]


def run_inline(forward: Forward, inputs: torch.Tensor) -> torch.Tensor:
    """Run the forward pass in the calling thread."""
    return forward(inputs)


def run_off_the_event_loop(forward: Forward, inputs: torch.Tensor) -> torch.Tensor:
    """Run the forward pass in the gevent hub's thread pool; the calling greenlet waits."""
    from gevent import get_hub

    outputs: torch.Tensor = get_hub().threadpool.apply(forward, (inputs,))
    return outputs


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
