"""Command-line options of the test run. They live here, at the root, because a bare ``pytest``
loads this file before it collects ``tests/``; the fixtures live in ``tests/conftest.py``."""

from __future__ import annotations

from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--aside-group",
        metavar="GROUP",
        help="with --dist loadgroup: run xdist_group GROUP alone on one worker of its own "
        "(give -n one worker more); see tests/xdist_aside.py",
    )


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--aside-group``'s scheduler (``xdist_aside.AsideGroupScheduling``); else xdist's."""
    aside = config.getoption("aside_group")
    if not aside or config.getvalue("dist") != "loadgroup":
        return None
    from xdist_aside import AsideGroupScheduling

    return AsideGroupScheduling(config, log, aside)
