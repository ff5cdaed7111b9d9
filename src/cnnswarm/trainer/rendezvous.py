"""Rank 0's side of a gang's rendezvous: the port the other members connect to.

The controller dispatches rank 0 of a data-parallel job without a port; this trainer picks a
free TCP port, hands it to the job's process (which opens ``torch.distributed``'s store on it)
and answers it to the controller, which dispatches ranks 1.. with it. Members connect to each
other directly: no shared filesystem, nothing published by Docker (trainers of one network
reach each other's ports). The port was free when picked; another process could take it
before the job's process binds it, in which case the rendezvous fails within its timeout and
the attempt is retried on a new gang.
"""

from __future__ import annotations

import socket

from cnnswarm.protocol import Dispatch


def free_port() -> int:
    """A TCP port free on every interface a moment ago."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def with_rendezvous_port(dispatch: Dispatch) -> Dispatch:
    """``dispatch`` with a port for its gang to meet on, when it is rank 0 of a gang that has
    none yet; otherwise ``dispatch`` itself."""
    if not dispatch.is_gang or dispatch.rank != 0 or dispatch.master_port is not None:
        return dispatch
    return dispatch.model_copy(update={"master_port": free_port()})
