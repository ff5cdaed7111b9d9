"""A pytest-xdist scheduler that runs one ``xdist_group`` first, alone, on a worker of its own.

The Docker tier mostly waits (image builds, containers booting, Swarm converging: about a fifth of
a core on average here), while every other tier keeps a worker's core busy. Under plain
``--dist loadgroup`` the Docker group takes one of the two workers for five minutes and leaves
most of a core idle. With ``--aside-group=docker`` and one worker more (``make test``: ``-n 3``
for two cores), the first worker takes the Docker group, and nothing else until it is done; the
others share the rest as ``loadgroup`` shares it, and the first joins them afterwards. Without
that group in the run, every worker takes tests from the start.

An xdist worker runs a test only once it knows the next one (pytest's ``nextitem``), so the
group's last test waits until the worker is sent more: the scheduler sends it more as soon as
that last test is all the group has left. (Holding back until the group was done kept the last
Docker test, 49 s, waiting for the end of the whole run.)
"""

from __future__ import annotations

from typing import Any

import pytest
from xdist.scheduler import LoadGroupScheduling
from xdist.workermanage import WorkerController


class AsideGroupScheduling(LoadGroupScheduling):
    """``loadgroup``, except that the group named ``aside`` goes first to a worker of its own,
    which takes nothing else until the group is done."""

    def __init__(self, config: pytest.Config, log: Any, aside: str) -> None:
        super().__init__(config, log)
        self.aside = aside
        self.aside_node: WorkerController | None = None

    def _assign_work_unit(self, node: WorkerController) -> None:
        if self.aside_node is None and self.aside in self.workqueue:
            self.aside_node = node  # the first worker served: the group is its first unit
            self.workqueue.move_to_end(self.aside, last=False)
        super()._assign_work_unit(node)

    def _reschedule(self, node: WorkerController) -> None:
        # A worker runs a test only once it knows the next one (pytest's ``nextitem``), so the
        # group's last test waits for more work: it gets some then, after the whole group; from
        # then on the worker is served as the others are.
        if node is self.aside_node and self._group_pending(node) > 1:
            return  # the aside group first, alone
        super()._reschedule(node)

    def _group_pending(self, node: WorkerController) -> int:
        """How many of the aside group's tests ``node`` has not run yet."""
        return self._pending_of({self.aside: self.assigned_work[node].get(self.aside, {})})
