"""``--aside-group``'s scheduler (``tests/xdist_aside.py``) on pytest-xdist's own scheduling code,
with stand-in workers that run what they are sent in order: the aside group runs alone on one
worker, which then stops; every other test runs once on the others; without the group the extra
worker stops at once, unless it is the only one. A pytest-xdist upgrade that changes the internals
the scheduler relies on fails here."""

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
        self.shutting_down = False

    def send_runtest_some(self, indexes: list[int]) -> None:
        assert not self.shutting_down, "work sent to a worker shutting down"
        self.sent += indexes

    def shutdown(self) -> None:
        self.shutting_down = True


def _run(config: pytest.Config, collection: list[str], workers: int) -> list[list[str]]:
    """Schedule ``collection`` on ``workers`` stand-ins and run it to the end; what each ran."""
    scheduler = AsideGroupScheduling(config, None, "docker")
    scheduler.numnodes = workers
    nodes = [StandInWorker(number) for number in range(workers)]
    for node in nodes:
        scheduler.add_node(node)  # type: ignore[arg-type]
    for node in nodes:
        scheduler.add_node_collection(node, collection)  # type: ignore[arg-type]
    scheduler.schedule()
    while any(node.done < len(node.sent) for node in nodes):
        for node in nodes:  # each runs one test in turn
            if node.done < len(node.sent):
                scheduler.mark_test_complete(node, node.sent[node.done])  # type: ignore[arg-type]
                node.done += 1
    assert not scheduler.has_pending
    assert all(node.shutting_down for node in nodes)
    return [[collection[i] for i in node.sent] for node in nodes]


@pytest.fixture
def config(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> pytest.Config:
    """This run's config, with what the scheduler reads as ``-n`` and xdist's defaults give it
    (whether this run is distributed or not; ``_run`` sets the worker count itself)."""
    monkeypatch.setattr(request.config.option, "tx", ["1*popen"], raising=False)
    monkeypatch.setattr(request.config.option, "loadscopereorder", True, raising=False)
    return request.config


def test_the_aside_group_runs_alone_on_one_worker(config: pytest.Config) -> None:
    collection = SINGLES[:2] + DOCKER + FLOWS + SINGLES[2:]
    aside, *others = _run(config, collection, workers=3)
    assert aside == DOCKER
    ran = [nodeid for worker in others for nodeid in worker]
    assert sorted(ran) == sorted(FLOWS + SINGLES)
    assert all(worker for worker in others)  # both share the rest
    assert any(worker[: len(FLOWS)] == FLOWS for worker in others)  # a group stays together


def test_without_the_group_the_extra_worker_stops_at_once(config: pytest.Config) -> None:
    idle, *others = _run(config, FLOWS + SINGLES, workers=3)
    assert idle == []
    assert sorted(nodeid for worker in others for nodeid in worker) == sorted(FLOWS + SINGLES)


def test_a_lone_worker_runs_everything(config: pytest.Config) -> None:
    assert _run(config, SINGLES, workers=1) == [SINGLES]
    assert _run(config, DOCKER, workers=1) == [DOCKER]
