"""The inference queue with real threads and a real small model: an idle request runs inline, a
busy model merges the requests that queue, every request gets its own rows (as if alone), and
load is shed by queue time only past the bound.

A forward pass is held open with an ``Event`` (``GatedForward``), so queues are built
deterministically; nothing asserts on timing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from cnnswarm.controller.event_loop import Forward
from cnnswarm.controller.inference_queue import CONTENTION_MEMORY_S, InferenceQueue
from cnnswarm.errors import Overloaded
from cnnswarm.ml.models import ModelConfig
from support import ManualClock, wait_until

CLASSES = 10


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return ModelConfig("SmallConvNet", 1, 8, 8, CLASSES).build().eval()


def random_inputs(sizes: list[int], seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.normal(size=(n, 1, 8, 8)).astype(np.float32)) for n in sizes]


def probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(model(x).float(), dim=1)


class GatedForward:
    """A real model's forward pass that, while the gate is closed, waits for it to open before
    computing; it records each call's rows and thread."""

    def __init__(self, model: nn.Module, *, open_gate: bool = True) -> None:
        self.model = model
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.entered = threading.Event()  # set once a forward pass has begun
        self.batch_rows: list[int] = []
        self.threads: list[int] = []

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        self.batch_rows.append(len(inputs))
        self.threads.append(threading.get_ident())
        self.entered.set()
        assert self.gate.wait(timeout=60), "the test never opened the gate"
        return probabilities(self.model, inputs)


class Requests:
    """Requests sent from their own threads; each thread's one outcome is recorded."""

    def __init__(self, queue: InferenceQueue) -> None:
        self.queue = queue
        self.outcomes: dict[int, torch.Tensor | BaseException] = {}
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def send(self, index: int, inputs: torch.Tensor) -> None:
        def ask() -> None:
            try:
                outcome: torch.Tensor | BaseException = self.queue.run(inputs)
            except BaseException as exc:  # recorded, and asserted on by the test
                outcome = exc
            with self._lock:
                assert index not in self.outcomes, f"request {index} answered twice"
                self.outcomes[index] = outcome

        thread = threading.Thread(target=ask, name=f"request-{index}")
        self.threads.append(thread)
        thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), f"{thread.name} got no answer"


def hold_a_forward(queue: InferenceQueue, forward: GatedForward, requests: Requests) -> None:
    """Request 0 starts a forward pass that stays open until ``forward.gate`` is set."""
    requests.send(0, random_inputs([1], seed=99)[0])
    wait_until(forward.entered.is_set, timeout=30, what="the first forward pass to begin")


def queued(queue: InferenceQueue, count: int) -> Callable[[], bool]:
    return lambda: queue.queued_requests == count


def test_an_idle_model_runs_the_request_inline_in_its_own_thread() -> None:
    forward = GatedForward(small_model())
    queue = InferenceQueue(forward, max_batch=16, max_queue_s=2.0)
    for x in random_inputs([1, 3, 2]):
        queue.run(x)  # one after another: the model is idle every time
    assert forward.threads == [threading.get_ident()] * 3  # no hand-off to another thread
    assert forward.batch_rows == [1, 3, 2]  # nothing waited to be merged with anything
    assert queue.queued_requests == 0


def test_the_runner_is_told_whether_requests_queued_for_the_model_lately() -> None:
    """A gevent worker runs a forward pass inline only for a model that is not contended
    (``controller.event_loop``): the queue says whether a request queued within
    ``CONTENTION_MEMORY_S``."""
    forward = GatedForward(small_model())
    told: list[bool] = []

    def runner(work: Forward, inputs: torch.Tensor, contended: bool) -> torch.Tensor:
        told.append(contended)
        return work(inputs)

    clock = ManualClock()
    queue = InferenceQueue(forward, max_batch=64, max_queue_s=60.0, clock=clock, run_forward=runner)
    queue.run(random_inputs([1])[0])
    assert told == [False]  # nothing ever queued

    forward.gate.clear()
    requests = Requests(queue)
    hold_a_forward(queue, forward, requests)
    requests.send(1, random_inputs([2])[0])
    wait_until(queued(queue, 1), timeout=30, what="a request to queue")
    forward.gate.set()
    requests.join()
    assert told == [False, False, True]  # the held pass began alone; the queued one ran after

    queue.run(random_inputs([1])[0])
    clock.advance(CONTENTION_MEMORY_S + 0.1)
    queue.run(random_inputs([1])[0])
    assert told[3:] == [True, False]  # contended until the memory of the queue passes


def test_requests_that_arrive_while_busy_are_merged_into_one_batch() -> None:
    forward = GatedForward(small_model(), open_gate=False)
    queue = InferenceQueue(forward, max_batch=64, max_queue_s=60.0)
    requests = Requests(queue)
    hold_a_forward(queue, forward, requests)
    for index, x in enumerate(random_inputs([1, 2, 1, 3, 1, 1]), start=1):
        requests.send(index, x)
    wait_until(queued(queue, 6), timeout=30, what="six requests to queue")
    forward.gate.set()
    requests.join()

    assert all(isinstance(o, torch.Tensor) for o in requests.outcomes.values()), requests.outcomes
    assert forward.batch_rows == [1, 9]  # 7 requests, 2 forward passes
    assert queue.forward_calls == 2
    # The batch ran in one of the waiting requests' threads, not in a thread of its own.
    assert forward.threads[1] in {t.ident for t in requests.threads[1:]}


def test_batched_requests_get_the_same_answers_as_alone() -> None:
    model = small_model()
    # Distinct inputs of different sizes, one of them larger than a whole batch.
    sizes = [1 + i % 7 for i in range(23)] + [20]
    inputs = random_inputs(sizes)
    alone = [probabilities(model, x) for x in inputs]

    forward = GatedForward(model, open_gate=False)
    queue = InferenceQueue(forward, max_batch=16, max_queue_s=60.0)
    requests = Requests(queue)
    hold_a_forward(queue, forward, requests)
    for index, x in enumerate(inputs, start=1):
        requests.send(index, x)
    wait_until(queued(queue, len(inputs)), timeout=30, what="the requests to queue")
    forward.gate.set()
    requests.join()

    for index, x in enumerate(inputs, start=1):
        batched = requests.outcomes[index]
        assert isinstance(batched, torch.Tensor), batched
        assert batched.shape == (len(x), CLASSES)
        torch.testing.assert_close(batched, alone[index - 1], rtol=0, atol=1e-5)
        top3 = torch.topk(batched, 3, dim=1).indices
        assert torch.equal(top3, torch.topk(alone[index - 1], 3, dim=1).indices)
    # 24 waiting requests of 108 rows in batches of at most 16 rows (the 20-row one alone).
    assert max(forward.batch_rows[1:]) == 20
    assert 2 < queue.forward_calls < len(inputs)


def test_below_the_queue_time_bound_every_request_is_served() -> None:
    forward = GatedForward(small_model(), open_gate=False)
    queue = InferenceQueue(forward, max_batch=8, max_queue_s=60.0)
    requests = Requests(queue)
    hold_a_forward(queue, forward, requests)
    for index, x in enumerate(random_inputs([1] * 40), start=1):
        requests.send(index, x)  # far more than a batch, far less than a minute of work
    wait_until(queued(queue, 40), timeout=30, what="40 requests to queue")
    forward.gate.set()
    requests.join()
    assert len(requests.outcomes) == 41
    assert all(isinstance(o, torch.Tensor) for o in requests.outcomes.values())


def test_past_the_queue_time_bound_a_queued_request_gets_overloaded_with_retry_after() -> None:
    forward = GatedForward(small_model(), open_gate=False)
    queue = InferenceQueue(forward, max_batch=8, max_queue_s=0.2)
    requests = Requests(queue)
    hold_a_forward(queue, forward, requests)
    for index, x in enumerate(random_inputs([1, 1, 1]), start=1):
        requests.send(index, x)
    # The forward pass stays open: each queued request leaves when its wait reaches the bound.
    wait_until(lambda: len(requests.outcomes) == 3, timeout=30, what="the queued requests")
    assert queue.queued_requests == 0, requests.outcomes
    for index in (1, 2, 3):
        refused = requests.outcomes[index]
        assert isinstance(refused, Overloaded), refused
        assert refused.retry_after >= 1
        assert "PREDICT_MAX_QUEUE_S" in str(refused)

    forward.gate.set()  # the request in the forward pass is always answered
    requests.join()
    assert isinstance(requests.outcomes[0], torch.Tensor)
    # And the model serves normally again, inline.
    assert queue.run(random_inputs([2])[0]).shape == (2, CLASSES)
    assert forward.batch_rows == [1, 2]


def test_an_arrival_behind_a_queue_already_past_the_bound_is_refused_at_once() -> None:
    clock = ManualClock()
    forward = GatedForward(small_model(), open_gate=False)
    queue = InferenceQueue(forward, max_batch=8, max_queue_s=30.0, clock=clock)
    requests = Requests(queue)
    hold_a_forward(queue, forward, requests)
    requests.send(1, random_inputs([1])[0])
    wait_until(queued(queue, 1), timeout=30, what="a request to queue")
    clock.advance(31.0)  # the queued request has now waited past the bound
    with pytest.raises(Overloaded) as refused:
        queue.run(random_inputs([1])[0])
    assert refused.value.retry_after >= 1
    assert queue.queued_requests == 1  # the refused one never joined the queue
    forward.gate.set()
    requests.join()
    assert all(isinstance(o, torch.Tensor) for o in requests.outcomes.values())


def test_a_failing_forward_fails_every_request_of_its_batch_once_and_the_queue_goes_on() -> None:
    model = small_model()
    calls = 0
    gate = threading.Event()

    def failing_second_forward(inputs: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            assert gate.wait(timeout=60)
        if calls == 2:
            raise RuntimeError("forward failed")
        return probabilities(model, inputs)

    queue = InferenceQueue(failing_second_forward, max_batch=8, max_queue_s=60.0)
    requests = Requests(queue)
    requests.send(0, random_inputs([1])[0])
    wait_until(lambda: calls == 1, timeout=30, what="the first forward pass")
    for index, x in enumerate(random_inputs([1, 1, 1]), start=1):
        requests.send(index, x)
    wait_until(queued(queue, 3), timeout=30, what="three requests to queue")
    gate.set()
    requests.join()
    assert isinstance(requests.outcomes[0], torch.Tensor)
    assert all(isinstance(requests.outcomes[i], RuntimeError) for i in (1, 2, 3))
    assert queue.run(random_inputs([1])[0]).shape == (1, CLASSES)  # idle again, inline


def test_a_request_whose_wait_runs_out_inside_a_running_batch_gets_that_batchs_answer() -> None:
    """The wait bound applies to the queue only: a request taken into a batch just as its wait
    ran out is answered by that batch (it was once refused with a 500: gone from the queue,
    it could not be removed from it)."""
    model = small_model()
    clock = ManualClock()
    first_gate = threading.Event()
    calls = 0

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            assert first_gate.wait(timeout=60)
        else:  # the batch of the two queued requests outlasts their wait bound
            clock.advance(10.0)
            time.sleep(0.3)  # their threads wake on the bound (0.05 s) meanwhile
        return probabilities(model, inputs)

    queue = InferenceQueue(forward, max_batch=8, max_queue_s=0.05, clock=clock)
    requests = Requests(queue)
    requests.send(0, random_inputs([1], seed=99)[0])
    wait_until(lambda: calls == 1, timeout=30, what="the first forward pass")
    inputs = random_inputs([1, 2])
    for index, x in enumerate(inputs, start=1):
        requests.send(index, x)
    wait_until(queued(queue, 2), timeout=30, what="two requests to queue")
    first_gate.set()
    requests.join()

    assert calls == 2  # requests 1 and 2 ran as one batch
    for index, x in enumerate(inputs, start=1):
        outcome = requests.outcomes[index]
        assert isinstance(outcome, torch.Tensor), outcome
        torch.testing.assert_close(outcome, probabilities(model, x), atol=1e-5, rtol=1e-5)
