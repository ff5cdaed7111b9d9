"""The error every client call raises when the server refuses a request or cannot be reached.

Its own module, free of ``requests``: the CLI catches it in every command, and a server started
by the CLI (``cnn-swarm controller``) must not import ``requests`` (and with it ``urllib3`` and
``ssl``) in the gunicorn master, before a gevent worker patches them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ClientError(Exception):
    """The server answered with an error (or could not be reached: ``status == 0``)."""

    def __init__(self, status: int, body: Mapping[str, Any] | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = dict(body or {})
        self.message = message

    @property
    def exception(self) -> str | None:
        """The server's machine-readable error name (``NotFound``, ``InvalidInputArg``, ...)."""
        value = self.body.get("exception")
        return str(value) if value is not None else None

    @property
    def error(self) -> str | None:
        """The server's human-readable message."""
        value = self.body.get("error")
        return str(value) if value is not None else None

    @property
    def field(self) -> str | None:
        """The request field the error is about, when the server named one."""
        value = self.body.get("field")
        return str(value) if value is not None else None
