"""``--aside-group``'s scheduler (``tests/xdist_aside.py``) on pytest-xdist's own scheduling code,
with stand-in workers that run what they are sent in order, as xdist's workers do: a test runs
only once the worker knows the next one, or is shutting down. The aside group runs first, alone,
on one worker, which is sent more work when only the group's last test is left (not at the end of
the run); every test runs once; without the group every worker shares the tests. A pytest-xdist
upgrade that changes the internals the scheduler relies on fails here."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from xdist_aside import AsideGroupScheduling

DOCKER = ["tests/docker/test_a.py::test_one@docker", "tests/docker/test_b.py::test_two@docker"]
FLOWS = ["tests/e2e/test_flows.py::test_one@flows", "tests/e2e/test_flows.py::test_two@flows"]
SINGLES = [f"tests/test_{name}.py::test_it" for name in ("a", "b", "c", "d", "e")]


class StandInWorker:
    """What the scheduler sees of a worker: its gateway's id, the item indexes it is sent, and
    whether it was told to shut down."""

    def __init__(self, number: int) -> None:
        self.gateway = SimpleNamespace(id=f"gw{number}")
        self.sent: list[int] = []
        self.done = 0
        self.sent_after: list[int] = []  # for each send, how many tests it had run by then
        self.shutting_down = False

    def can_run(self) -> bool:
        """Whether the worker runs a test now: xdist's worker needs the next test (pytest's
        ``nextitem``) before it runs one, unless it is shutting down."""
        return self.done < len(self.sent) - (0 if self.shutting_down else 1)

    def send_runtest_some(self, indexes: list[int]) -> None:
        assert not self.shutting_down, "work sent to a worker shutting down"
        self.sent += indexes
        self.sent_after.append(self.done)

    def shutdown(self) -> None:
        self.shutting_down = True


def _run(
    config: pytest.Config, collection: list[str], workers: int
) -> tuple[list[list[str]], list[StandInWorker]]:
    """Schedule ``collection`` on ``workers`` stand-ins and run it to the end; what each ran, and
    the stand-ins."""
    scheduler = AsideGroupScheduling(config, None, "docker")
    scheduler.numnodes = workers
    nodes = [StandInWorker(number) for number in range(workers)]
    for node in nodes:
        scheduler.add_node(node)  # type: ignore[arg-type]
    for node in nodes:
        scheduler.add_node_collection(node, collection)  # type: ignore[arg-type]
    scheduler.schedule()
    while any(node.done < len(node.sent) for node in nodes):
        if not any(node.can_run() for node in nodes):
            assert scheduler.tests_finished, "every worker waits for work that never comes"
            for node in nodes:  # what xdist's session does once the tests are finished
                node.shutdown()
        for node in nodes:  # each runs one test in turn
            if node.can_run():
                node.done += 1
                scheduler.mark_test_complete(node, node.sent[node.done - 1])  # type: ignore[arg-type]
    assert not scheduler.has_pending
    assert all(node.shutting_down for node in nodes)
    ran = [collection[i] for node in nodes for i in node.sent]
    assert sorted(ran) == sorted(collection)  # every test once
    return [[collection[i] for i in node.sent] for node in nodes], nodes


@pytest.fixture
def config(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> pytest.Config:
    """This run's config, with what the scheduler reads as ``-n`` and xdist's defaults give it
    (whether this run is distributed or not; ``_run`` sets the worker count itself)."""
    monkeypatch.setattr(request.config.option, "tx", ["1*popen"], raising=False)
    monkeypatch.setattr(request.config.option, "loadscopereorder", True, raising=False)
    return request.config


def test_the_aside_group_runs_first_and_alone_on_one_worker(config: pytest.Config) -> None:
    collection = SINGLES[:2] + DOCKER + FLOWS + SINGLES[2:]
    (aside, *others), (first, *_) = _run(config, collection, workers=3)
    assert aside[: len(DOCKER)] == DOCKER
    # Then it joins: sent its next unit while the group's last test waits for one (not when the
    # others are done).
    assert first.sent_after[1:2] == [len(DOCKER) - 1], first.sent_after
    assert len(aside) > len(DOCKER)
    assert all(worker for worker in others)  # the others share the rest
    assert any(worker[: len(FLOWS)] == FLOWS for worker in [aside, *others])  # kept together


def test_without_the_group_every_worker_shares_the_tests(config: pytest.Config) -> None:
    workers, _ = _run(config, FLOWS + SINGLES, workers=3)
    assert all(workers)


def test_a_lone_worker_runs_the_group_first_then_the_rest(config: pytest.Config) -> None:
    assert _run(config, SINGLES, workers=1)[0] == [SINGLES]
    assert _run(config, SINGLES[:2] + DOCKER + SINGLES[2:], workers=1)[0][0][:2] == DOCKER
