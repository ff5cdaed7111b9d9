"""How an app says what must stop when its process stops serving.

An app factory registers each thing it starts with ``on_stop(app, service.stop)``; the server
running the app calls ``stop_all(app)`` once, as the worker exits (``cnnswarm.serve``). There is
no other shutdown path: no ``atexit`` hooks, no services looked up by name.

Guarantees: ``stop_all`` calls every registered callable once, last registered first (what was
started last stops first); one that raises is logged and the others still run; a second
``stop_all`` does nothing. This module imports no Flask: an app is anything with an
``extensions`` dict, as Flask apps have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

EXTENSION_KEY = "cnnswarm.stop_callables"

StopCallable = Callable[[], object]


class HasExtensions(Protocol):
    """What this module needs of an app (a Flask app qualifies)."""

    extensions: dict[str, Any]


def on_stop(app: HasExtensions, stop: StopCallable) -> None:
    """Have ``stop()`` called when the process serving ``app`` stops."""
    app.extensions.setdefault(EXTENSION_KEY, []).append(stop)


def stop_all(app: HasExtensions) -> None:
    """Call every callable registered for ``app``, last first, each once; log any failure."""
    callables: list[StopCallable] = app.extensions.pop(EXTENSION_KEY, [])
    for stop in reversed(callables):
        try:
            stop()
        except Exception:  # one failing service must not keep the others running
            log.exception("stopping %r failed", stop)
