"""A server started by ``cnn-swarm up`` ends with it: ``up`` names itself in ``PARENT_PID_ENV``.

Its own module, free of ``requests``: ``cnn-swarm controller`` calls ``die_with_parent`` in the
gunicorn master, which must not import ``requests`` (and ``urllib3`` and ``ssl``) before a gevent
worker patches them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PARENT_PID_ENV = "CNN_SWARM_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child started by ``up``: get SIGTERM when ``up`` dies (Linux only), and exit now if
    it is already gone. A no-op unless ``CNN_SWARM_PARENT_PID`` is set."""
    expected_parent = os.environ.get(PARENT_PID_ENV)
    if not expected_parent or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if str(os.getppid()) != expected_parent:
        raise SystemExit("cnn-swarm: the `up` process that started this server is gone")
