"""cnnswarm.lifecycle: the stop callables each app factory registers, and what stop_all does."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from cnnswarm.config import Settings
from cnnswarm.controller.app import create_app as create_controller
from cnnswarm.lifecycle import on_stop, stop_all
from cnnswarm.store import db
from support import wait_until


def test_stop_all_runs_each_callable_once_last_first_past_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Flask("probe")
    calls: list[str] = []

    def fail() -> None:
        calls.append("fail")
        raise RuntimeError("boom")

    on_stop(app, lambda: calls.append("first"))
    on_stop(app, fail)
    on_stop(app, lambda: calls.append("last"))
    stop_all(app)
    assert calls == ["last", "fail", "first"]
    assert "RuntimeError: boom" in caplog.text  # the failure is logged with its traceback
    stop_all(app)  # a second call (atexit, a signal racing worker exit) stops nothing twice
    assert calls == ["last", "fail", "first"]


def test_the_controller_registers_its_scheduler_stop_only_when_started(tmp_path: Path) -> None:
    settings = Settings(home_dir=tmp_path, scheduler_interval_s=0.05)
    idle = create_controller(settings)
    assert not idle.extensions.get("cnnswarm.stop_callables")  # nothing started, nothing to stop
    idle.extensions["cnnswarm"].stores.close()

    app = create_controller(settings, start_background=True)
    context = app.extensions["cnnswarm"]
    scheduler = context.scheduler
    try:
        wait_until(lambda: scheduler.is_leader, 30, what="the scheduler to lead")
        stop_all(app)
        assert scheduler._thread is not None and not scheduler._thread.is_alive()
        with context.stores.engine.connect() as conn:  # the lease was handed over at once
            assert conn.execute(select(db.leader.c.expires_at)).scalar_one() == 0.0
    finally:
        scheduler.stop()
        context.stores.close()
