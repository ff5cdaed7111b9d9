"""Fixtures shared by every tier: a private PostgreSQL server and the database URLs to test
the stores against (SQLite file and PostgreSQL, the same code). Also the per-tier time table
printed at the end of every run (``TierTimes``), with the figures a tier measured, and the
``--aside-group`` option that runs one xdist group on a worker of its own (``xdist_aside``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from support import FIGURES_PROPERTY, free_port

torch.set_num_threads(1)


def tier_of(nodeid: str) -> str:
    """The tier of a test: its top-level directory under ``tests/`` (``unit`` for the files
    directly in ``tests/``)."""
    parts = nodeid.split("::", 1)[0].split("/")
    if parts[0] == "tests":
        parts = parts[1:]
    return parts[0] if len(parts) > 1 else "unit"


class TierTimes:
    """Seconds spent per tier (setup, call and teardown of its tests, fixtures included: on one
    worker, the tier's wall time less collection) and its test count by outcome, printed as one
    table at the end of the run (the README's Tests table quotes it)."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.outcomes: defaultdict[str, dict[str, str]] = defaultdict(dict)
        self.figures: defaultdict[str, dict[str, float]] = defaultdict(dict)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        tier = tier_of(report.nodeid)
        self.seconds[tier] += report.duration
        for name, value in report.user_properties:
            if name == FIGURES_PROPERTY:
                self.figures[tier].update(value)
        outcomes = self.outcomes[tier]
        # A test's outcome is its call's, unless setup or teardown failed or it was skipped.
        settled = outcomes.get(report.nodeid) in ("failed", "error")
        if settled or (report.when != "call" and report.passed):
            return
        failed = "failed" if report.when == "call" else "error"
        outcomes[report.nodeid] = failed if report.failed else report.outcome

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.seconds:
            return
        write = terminalreporter.write_line
        terminalreporter.section("time per tier")
        write(f"{'tier':<12} {'tests':>6} {'passed':>7} {'skipped':>8} {'failed':>7} {'s':>8}")
        total_tests, total_s = 0, 0.0
        for tier in sorted(self.seconds, key=lambda name: -self.seconds[name]):
            results = list(self.outcomes[tier].values())
            count = len(results)
            failed = sum(result in ("failed", "error") for result in results)
            write(
                f"{tier:<12} {count:>6} {results.count('passed'):>7} "
                f"{results.count('skipped'):>8} {failed:>7} {self.seconds[tier]:>8.1f}"
            )
            total_tests += count
            total_s += self.seconds[tier]
        write(f"{'all':<12} {total_tests:>6} {'':>7} {'':>8} {'':>7} {total_s:>8.1f}")
        for tier, figures in sorted(self.figures.items()):
            write(f"{tier} tier figures: {json.dumps(figures)}")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(TierTimes(), "cnnswarm-tier-times")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--aside-group",
        metavar="GROUP",
        help="with --dist loadgroup: run xdist_group GROUP alone on one worker of its own "
        "(give -n one worker more); see tests/xdist_aside.py. Write it in one word, "
        "--aside-group=GROUP: before it knows this option, pytest takes a separate GROUP for "
        "a path to test, and then skips the testpaths' conftest that declares the option",
    )


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--aside-group``'s scheduler (``xdist_aside.AsideGroupScheduling``); else xdist's."""
    aside = config.getoption("aside_group")
    if not aside or config.getvalue("dist") != "loadgroup":
        return None
    from xdist_aside import AsideGroupScheduling

    return AsideGroupScheduling(config, log, aside)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (``make test``), fail the run if pytest-xdist did not tag a
    grouped test's id with its group: the groups would be ignored without a word (xdist 3.8
    with pytest 9 does that), splitting the Docker tier and the module-scoped clusters."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
            raise pytest.UsageError(
                f"pytest-xdist's loadgroup did not group {item.nodeid}: "
                "use the pytest and pytest-xdist versions pyproject.toml allows"
            )


def _pg_bindir() -> Path | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    bindir = Path(out.stdout.strip())
    return bindir if (bindir / "initdb").exists() else None


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; Debian's package ships a 'postgres' user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A private PostgreSQL cluster in a temp dir on a free port; yields a server URL (no db).

    In CI (``CI=true``) a missing server is an error, elsewhere a skip.
    """
    bindir = _pg_bindir()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL server binaries not found (pg_config --bindir)")
        pytest.skip("PostgreSQL server binaries not found (pg_config --bindir)")
    root = Path(tempfile.mkdtemp(prefix="cnnswarm-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres_user(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        capture_output=True,
    )
    log = root / "log.txt"
    subprocess.run(
        _as_postgres_user(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c max_connections=300",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_postgres_user(
                [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
            ),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the private server."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(
        postgres_server.replace("+psycopg", "") + "/postgres", autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_server}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs against an SQLite file and a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))
