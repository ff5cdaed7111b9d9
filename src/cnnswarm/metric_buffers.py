"""Metric recording off the hot path: observations queued per request, written in batches.

A ``prometheus_client`` increment in multiprocess mode takes a lock and writes a memory-mapped
file; a histogram observation does that twice. On a predict request, which records five of them,
that was a few percent of its CPU. Here a request only appends to a ``deque`` (atomic under the
GIL, no lock); ``flush`` drains the queues and writes each label set's count, and each histogram
bucket's, once.

Guarantees: nothing recorded is lost while the process lives; ``flush`` runs before this process
answers ``/metrics`` (so a single-process app's scrape is exact) and every ``FLUSH_INTERVAL_S`` in
a background thread of a served app (so a scrape answered by a sibling worker lags by at most that
much, and the queues stay short when nobody scrapes). A worker killed outright loses what it had
not flushed (at most that interval).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter as Tally
from collections import deque
from collections.abc import Iterator
from typing import Protocol, TypeVar

from prometheus_client import Counter, Histogram

FLUSH_INTERVAL_S = 1.0

T = TypeVar("T")


def _drain(queue: deque[T]) -> Iterator[T]:
    """Pop what ``queue`` holds now (items appended meanwhile are popped too, or next time)."""
    while True:
        try:
            yield queue.popleft()
        except IndexError:
            return


class Buffer(Protocol):
    def flush(self) -> None: ...


class BufferedCounter:
    """A counter (labelled or not) whose increments by one are queued, then written per label
    set by ``flush``."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._labelled = bool(counter._labelnames)
        self._pending: deque[tuple[str, ...]] = deque()

    def inc(self, *labels: str) -> None:
        """Count one (with these label values)."""
        self._pending.append(labels)

    def flush(self) -> None:
        for labels, count in Tally(_drain(self._pending)).items():
            target = self._counter.labels(*labels) if self._labelled else self._counter
            target.inc(count)


class BufferedHistogram:
    """An unlabelled histogram whose observations are queued, then written by ``flush``: one
    write per bucket touched and one for the sum, however many observations."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._pending: deque[float] = deque()

    def observe(self, value: float) -> None:
        """Record one observation."""
        self._pending.append(value)

    def flush(self) -> None:
        values = list(_drain(self._pending))
        if not values:
            return
        # What Histogram.observe does per value, per bucket: the value lands in the first
        # bucket whose upper bound is >= it (the last bound is +Inf); the exposition sums them.
        histogram = self._histogram
        bounds = histogram._upper_bounds
        for index, count in Tally(bisect_left(bounds, value) for value in values).items():
            histogram._buckets[index].inc(count)
        histogram._sum.inc(sum(values))


class Flusher:
    """Flushes buffers every ``FLUSH_INTERVAL_S`` in a daemon thread until ``stop``."""

    def __init__(self, buffers: list[Buffer]) -> None:
        self._buffers = buffers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            flush_all(self._buffers)

    def stop(self) -> None:
        """Stop the thread, then flush what is left."""
        self._stop.set()
        self._thread.join(timeout=5)
        flush_all(self._buffers)


def flush_all(buffers: list[Buffer]) -> None:
    """Write what every buffer holds."""
    for buffer in buffers:
        buffer.flush()
