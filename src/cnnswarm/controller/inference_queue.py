"""One model's forward passes: inline when idle, batched under contention, shed by queue time.

Guarantees:
- An idle model runs a request's forward pass in the request's own thread, at once: no hand-off
  to another thread, no wait for company.
- While a forward pass runs, arriving requests queue. When it ends, the thread that ran it hands
  the queue to the oldest waiting request's thread (the *driver*), which takes everything queued
  (up to ``max_batch`` rows, FIFO) as one batch, so a busy model turns many small forwards into
  few large ones while the other request threads keep parsing and decoding.
- Each request gets exactly its own rows of the batch's output, and exactly one outcome: its
  outputs, the forward's exception, or ``Overloaded``.
- Load is shed by queue time, not by a count: a request whose expected wait (the rows queued
  ahead of it at the recent seconds per row) would pass ``max_queue_s`` is refused on arrival,
  and one still queued (not yet in a batch) when its wait reaches ``max_queue_s`` leaves the
  queue; both get ``Overloaded`` (503 with ``Retry-After``). A request taken into a batch is
  always answered.

Observation points (metrics): ``_run_batch`` runs every forward pass and knows its rows and each
request's queue wait (``Ticket.waited_s``); ``_shed`` is the one place a request is refused.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from cnnswarm.controller.event_loop import Forward, ForwardRunner, run_inline
from cnnswarm.errors import Overloaded

# Weight of the newest batch in the running seconds-per-row estimate.
_ESTIMATE_WEIGHT = 0.2
# A model is contended while a request queued for it less than this long ago (its runner then
# keeps forward passes off a gevent worker's event loop: ``controller.event_loop``).
CONTENTION_MEMORY_S = 1.0


class QueueObserver(Protocol):
    """What a queue reports as it works (``controller.metrics.ControllerMetrics`` records it)."""

    def observe_batch(self, rows: int) -> None: ...

    def observe_queue_wait(self, seconds: float) -> None: ...

    def count_rejected(self) -> None: ...


@dataclass(eq=False)  # compared by identity: the queue removes exactly this request
class Ticket:
    """One request's place in the queue and, once answered, its outcome."""

    inputs: torch.Tensor
    enqueued_at: float
    answered: threading.Event = field(default_factory=threading.Event)
    drives: bool = False  # set when this request's thread is handed the queue
    in_batch: bool = False  # set when a driver takes it off the queue into its batch
    waited_s: float = 0.0  # from arrival until its batch started
    outputs: torch.Tensor | None = None
    error: BaseException | None = None

    @property
    def rows(self) -> int:
        return len(self.inputs)

    def outcome(self) -> torch.Tensor:
        if self.error is not None:
            raise self.error
        assert self.outputs is not None
        return self.outputs


class InferenceQueue:
    """Runs ``forward`` for one model's requests (see the module docstring)."""

    def __init__(
        self,
        forward: Forward,
        *,
        max_batch: int,
        max_queue_s: float,
        clock: Callable[[], float] = time.monotonic,
        observer: QueueObserver | None = None,
        run_forward: ForwardRunner = run_inline,
    ) -> None:
        self.forward = forward
        self._run_forward = run_forward  # inline, or off a gevent worker's event loop
        self._observer = observer
        self.max_batch = max_batch
        self.max_queue_s = max_queue_s
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: deque[Ticket] = deque()
        self._queued_rows = 0
        self._busy = False  # a forward pass is running or a driver is on its way
        self._seconds_per_row = 0.0  # 0 until the first batch is measured
        self._queued_at = -math.inf  # when a request last had to queue
        self.forward_calls = 0  # how many forward passes ran (a measure of batching)

    @property
    def queued_requests(self) -> int:
        """Requests waiting for a batch (not the one running)."""
        with self._lock:
            return len(self._queue)

    def run(self, inputs: torch.Tensor) -> torch.Tensor:
        """``forward(inputs)``, maybe computed as part of a larger batch; ``Overloaded`` when
        the wait in this model's queue would pass ``max_queue_s``."""
        ticket = Ticket(inputs, enqueued_at=self._clock())
        with self._lock:
            idle = not self._busy
            if idle:
                self._busy = True
            else:
                self._admit(ticket)
        if idle:
            batch = [ticket]
        else:
            batch = self._wait_for_turn(ticket)
            if not batch:  # answered by another request's batch
                return ticket.outcome()
        self._drive(batch)
        return ticket.outcome()

    def _admit(self, ticket: Ticket) -> None:
        """Queue ``ticket`` unless its expected wait passes the bound (lock held)."""
        oldest_wait = self._clock() - self._queue[0].enqueued_at if self._queue else 0.0
        expected_wait = (self._queued_rows + ticket.rows) * self._seconds_per_row
        if max(oldest_wait, expected_wait) > self.max_queue_s:
            raise self._shed(max(oldest_wait, expected_wait))
        self._queue.append(ticket)
        self._queued_rows += ticket.rows
        self._queued_at = ticket.enqueued_at

    def _wait_for_turn(self, ticket: Ticket) -> list[Ticket]:
        """Wait until ``ticket`` is answered ([]) or handed the queue (the batch to run). Its
        wait is bounded only while it is queued: once in a running batch, that batch answers it
        (its wait may run out while the batch runs: it is not refused then)."""
        deadline = ticket.enqueued_at + self.max_queue_s
        while not ticket.answered.wait(timeout=max(0.0, deadline - self._clock())):
            with self._lock:
                if ticket.drives or ticket.answered.is_set() or ticket.in_batch:
                    break
                if self._clock() >= deadline:
                    self._queue.remove(ticket)
                    self._queued_rows -= ticket.rows
                    raise self._shed(self._clock() - ticket.enqueued_at)
        if ticket.drives:
            with self._lock:
                return self._take()
        ticket.answered.wait()  # set by its batch, however long that batch runs
        return []

    def _take(self) -> list[Ticket]:
        """The oldest queued requests, up to ``max_batch`` rows (at least one) (lock held)."""
        batch = [self._queue.popleft()]
        rows = batch[0].rows
        while self._queue and rows + self._queue[0].rows <= self.max_batch:
            rows += self._queue[0].rows
            batch.append(self._queue.popleft())
        self._queued_rows -= rows
        for ticket in batch:
            ticket.in_batch = True
        return batch

    def _drive(self, batch: list[Ticket]) -> None:
        """Run ``batch``, then hand the queue to the oldest waiting request (or go idle)."""
        try:
            self._run_batch(batch)
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.drives = True
                    successor.answered.set()
                else:
                    self._busy = False

    def _run_batch(self, batch: list[Ticket]) -> None:
        """One forward pass for every request in ``batch``; each gets its rows or the error."""
        started = self._clock()
        for ticket in batch:
            ticket.waited_s = started - ticket.enqueued_at
        rows = sum(ticket.rows for ticket in batch)
        if self._observer is not None:
            self._observer.observe_batch(rows)
            for ticket in batch:
                self._observer.observe_queue_wait(ticket.waited_s)
        computing_s = 0.0

        def timed_forward(inputs: torch.Tensor) -> torch.Tensor:
            # Timed where it runs: under gevent the result waits for the event loop to pick it
            # up, and that wait is no cost of the model's rows.
            nonlocal computing_s
            began = self._clock()
            outputs = self.forward(inputs)
            computing_s = self._clock() - began
            return outputs

        try:
            inputs = batch[0].inputs if len(batch) == 1 else torch.cat([t.inputs for t in batch])
            contended = started - self._queued_at < CONTENTION_MEMORY_S
            outputs = self._run_forward(timed_forward, inputs, contended)
            start = 0
            for ticket in batch:
                ticket.outputs = outputs[start : start + ticket.rows]
                start += ticket.rows
        except BaseException as exc:
            for ticket in batch:
                ticket.error = exc
        else:
            self._learn(computing_s / rows)
        finally:
            self.forward_calls += 1
        for ticket in batch:
            if not ticket.drives:  # the driver's own ticket needs no wake-up
                ticket.answered.set()

    def _learn(self, seconds_per_row: float) -> None:
        """Fold one batch's measured cost into the running estimate."""
        with self._lock:
            if self._seconds_per_row == 0.0:
                self._seconds_per_row = seconds_per_row
            else:
                self._seconds_per_row += _ESTIMATE_WEIGHT * (
                    seconds_per_row - self._seconds_per_row
                )

    def _shed(self, wait_s: float) -> Overloaded:
        """The refusal of a request whose queue wait is (or would be) ``wait_s``."""
        if self._observer is not None:
            self._observer.count_rejected()
        return Overloaded(
            f"this model's predict queue is {wait_s:.1f} s deep, past the "
            f"{self.max_queue_s:g} s bound (PREDICT_MAX_QUEUE_S); retry shortly",
            retry_after=max(1, math.ceil(min(wait_s, self.max_queue_s))),
        )
