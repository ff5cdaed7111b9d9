"""What every client command of `cnn-swarm` shares: its client, its JSON output, its type."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cnnswarm.config import load_client_settings

if TYPE_CHECKING:
    from cnnswarm.client import Client

Handler = Callable[[argparse.Namespace], int]


def client_from_args(args: argparse.Namespace) -> Client:
    """A client of the controller the flags name, else the one the environment names.
    (``requests`` is imported here, by client commands only: see ``cnnswarm.client_error``.)"""
    from cnnswarm.client import Client

    flags = {"CNN_SWARM_URL": args.url, "CNN_SWARM_API_TOKEN": args.token}
    settings = load_client_settings({**os.environ, **{k: v for k, v in flags.items() if v}})
    return Client(settings.url, token=settings.api_token or None)


def emit_json(value: Any) -> None:
    """Print ``value`` as the commands' ``--json`` output (indented, keys sorted)."""
    print(json.dumps(value, indent=2, sort_keys=True))
