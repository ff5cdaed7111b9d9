"""cnnswarm.serve: real gunicorn on an ephemeral port, the app built after the fork, and the
stop callables its factory registered run in the worker as it exits."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import requests

from support import wait_until

SERVER_SCRIPT = textwrap.dedent(
    """
    import os, sys, threading
    from pathlib import Path
    from flask import Flask
    from cnnswarm.config import Settings
    from cnnswarm.lifecycle import on_stop
    from cnnswarm.serve import serve_app

    def broken_stop():
        raise RuntimeError("this stop fails")

    def factory(settings):
        import torch
        app = Flask("probe")
        on_stop(app, lambda: Path(sys.argv[2]).write_text(str(os.getpid())))
        on_stop(app, broken_stop)  # runs first (last registered); must not skip the other
        @app.get("/info")
        def info():
            return {"port": settings.train_port, "pid": os.getpid(),
                    "torch_threads": torch.get_num_threads()}
        return app

    settings = Settings(train_host="127.0.0.1", train_port=0, gunicorn_threads=2)
    serve_app(factory, settings, role="trainer", workers=1, torch_threads=1,
              url_file=Path(sys.argv[1]))
    """
)


def test_serve_app_binds_port_0_builds_the_app_in_the_worker_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    script = tmp_path / "server.py"
    script.write_text(SERVER_SCRIPT)
    url_file = tmp_path / "url"
    stopped_marker = tmp_path / "stopped"
    process = subprocess.Popen(
        [sys.executable, str(script), str(url_file), str(stopped_marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def answered() -> dict[str, Any] | None:
            assert process.poll() is None, process.communicate()
            if url_file.exists():
                with contextlib.suppress(requests.RequestException):
                    info_url = f"{url_file.read_text().strip()}/info"
                    answer: dict[str, Any] = requests.get(info_url, timeout=2).json()
                    return answer
            return None

        info = wait_until(answered, 60, what="the server to answer")
        url = url_file.read_text().strip()
        assert url == f"http://127.0.0.1:{info['port']}" and info["port"] > 0
        assert info["pid"] != process.pid  # built in the worker, after the fork
        assert info["torch_threads"] == 1
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=40)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert f"listening on {url}" in stdout
    assert "Booting worker" in stderr and "Control socket" not in stderr
    assert '"GET /info HTTP/1.1" 200' in stdout  # the access log goes to stdout
    assert stopped_marker.read_text() == str(info["pid"])  # stopped in the worker
    assert "RuntimeError: this stop fails" in stderr  # a failing stop is logged, not fatal


def test_the_controller_hands_over_its_leader_lease_when_its_worker_exits(tmp_path: Path) -> None:
    """The real controller factory under real gunicorn: SIGTERM runs the scheduler's stop, which
    its factory registered, so the lease row is expired at once, not after its time to live."""
    url_file = tmp_path / "url"
    # The default two workers: the SIGTERM may land while the second is still building its app
    # (the first already leads).
    env = dict(os.environ, TORCH_THREADS="1", SCHEDULER_INTERVAL_S="0.1")
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnswarm.cli", "controller", "--host", "127.0.0.1",
         "--port", "0", "--home", str(tmp_path / "home"), "--url-file", str(url_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    try:

        def leading() -> bool:
            assert process.poll() is None, process.communicate()
            if not url_file.exists():
                return False
            with contextlib.suppress(requests.RequestException):
                answer = requests.get(f"{url_file.read_text().strip()}/readyz", timeout=2)
                return bool(answer.ok and answer.json()["leader"])
            return False

        wait_until(leading, 90, what="the controller to lead")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    with sqlite3.connect(tmp_path / "home" / "cnn-swarm.sqlite3") as db:
        assert db.execute("SELECT expires_at FROM leader").fetchall() == [(0.0,)]
