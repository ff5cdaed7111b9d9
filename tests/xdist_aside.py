"""A pytest-xdist scheduler that runs one ``xdist_group`` on a worker of its own.

The Docker tier mostly waits (image builds, containers booting, Swarm converging: about a fifth of
a core on average here), while every other tier keeps a worker's core busy. Under plain
``--dist loadgroup`` the Docker group takes one of the two workers for five minutes and leaves a
core idle. With ``--aside-group docker`` and one worker more (``make test``: ``-n 3`` for two
cores), the first worker takes the Docker group and nothing else, and shuts down when it is done;
the others share every other test as ``loadgroup`` shares them. Without that group in the run
(a subset of the tests), the extra worker shuts down at once.
"""

from __future__ import annotations

from typing import Any

import pytest
from xdist.scheduler import LoadGroupScheduling
from xdist.workermanage import WorkerController


class AsideGroupScheduling(LoadGroupScheduling):
    """``loadgroup``, except that the group named ``aside`` gets a worker to itself."""

    def __init__(self, config: pytest.Config, log: Any, aside: str) -> None:
        super().__init__(config, log)
        self.aside = aside
        self.aside_node: WorkerController | None = None
        self.aside_decided = False

    def _assign_work_unit(self, node: WorkerController) -> None:
        if not self.aside_decided:  # the first worker served
            self.aside_decided = True
            if self.aside in self.workqueue:
                self.aside_node = node
                self._send(node, self.aside, self.workqueue.pop(self.aside))
                return
            if len(self.nodes) > 1:  # no such group in this run: the extra worker is not needed
                node.shutdown()
                return
        if node is self.aside_node:
            return
        if not self.workqueue:
            node.shutdown()
            return
        scope, work_unit = self.workqueue.popitem(last=False)
        self._send(node, scope, work_unit)

    def _reschedule(self, node: WorkerController) -> None:
        if node is not self.aside_node:
            super()._reschedule(node)
        elif not node.shutting_down and not self._pending_of(self.assigned_work[node]):
            node.shutdown()

    def _send(self, node: WorkerController, scope: str, work_unit: dict[str, bool]) -> None:
        """What ``LoadScopeScheduling._assign_work_unit`` does with the unit it pops."""
        self.assigned_work.setdefault(node, {})[scope] = work_unit
        collection = self.registered_collections[node]
        node.send_runtest_some(
            [collection.index(nodeid) for nodeid, done in work_unit.items() if not done]
        )
