"""Import what a cnn-swarm server runs, so Python writes bytecode for those modules only.

The images install packages with ``pip --no-compile`` (bytecode for all of torch and sympy
would add ~200 MB) and run this at build time: the modules a server imports get their ``.pyc``
(fast start-up for a non-root user who cannot write them), the rest stay source only.

Usage: ``python warm_imports.py deps`` (third-party stack) or ``python warm_imports.py app``
(every ``cnnswarm`` module as well). A missing third-party module fails the build.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys


def warm_dependencies() -> None:
    """Exercise the third-party code paths of training, predict and serving once."""
    import flask  # noqa: F401
    import gunicorn.app.base  # noqa: F401
    import gunicorn.workers.gthread  # noqa: F401
    import numpy  # noqa: F401
    import optuna  # noqa: F401
    import PIL.Image  # noqa: F401
    import prometheus_client  # noqa: F401
    import psycopg  # noqa: F401
    import requests  # noqa: F401
    import sqlalchemy
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401
    import sqlalchemy.dialects.sqlite  # noqa: F401
    import torch
    sqlalchemy.create_engine("sqlite://").connect().close()
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten()
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1])
    loss = torch.nn.functional.cross_entropy(model(torch.zeros(2, 1, 8, 8)), torch.zeros(2).long())
    loss.backward()
    optimizer.step()
    scheduler.step()
    with torch.inference_mode():
        model.eval()(torch.zeros(1, 1, 8, 8))


def warm_app() -> None:
    """Import every ``cnnswarm`` module (a module that fails to import is reported, not fatal)."""
    import cnnswarm

    for module in pkgutil.walk_packages(cnnswarm.__path__, "cnnswarm."):
        try:
            importlib.import_module(module.name)
        except Exception as exc:  # noqa: BLE001 - reported; the build goes on
            print(f"warm_imports: {module.name}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    warm_dependencies()
    if sys.argv[1:] == ["app"]:
        warm_app()
