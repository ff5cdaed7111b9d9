"""The `cnn-swarm` command (filled in by the services work)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cnn-swarm` console script."""
    print("cnn-swarm: not implemented yet")
    return 1
