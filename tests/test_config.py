"""Settings from the environment: the token policy (a role listening beyond loopback needs an
API token unless opted out), predict shedding, the gang timeouts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnswarm.config import (
    ConfigError,
    Settings,
    check_token_policy,
    is_loopback_host,
    load_client_settings,
    load_settings,
)
from cnnswarm.trainer.controller_api import ControllerClient
from cnnswarm.trainer.runner import JobRunner

LOOPBACK_HOSTS = ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LocalHost"]
BEYOND_LOOPBACK_HOSTS = ["0.0.0.0", "::", "", "192.168.1.20", "10.0.0.7", "example.org"]


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_loopback_hosts_need_no_token(host: str) -> None:
    assert is_loopback_host(host)
    check_token_policy(Settings(), host)


@pytest.mark.parametrize("host", BEYOND_LOOPBACK_HOSTS)
def test_hosts_beyond_loopback_need_a_token(host: str) -> None:
    assert not is_loopback_host(host)
    with pytest.raises(ConfigError) as raised:
        check_token_policy(Settings(), host)
    message = str(raised.value)
    assert "(beyond loopback) needs an API token" in message
    assert "CNN_SWARM_API_TOKEN or CNN_SWARM_API_TOKEN_FILE" in message
    assert "CNN_SWARM_ALLOW_NO_TOKEN=1" in message


def test_the_message_names_the_host() -> None:
    with pytest.raises(ConfigError, match=r"^listening on 192\.168\.1\.20 \(beyond loopback\)"):
        check_token_policy(Settings(), "192.168.1.20")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20"])
def test_a_token_or_the_opt_out_allows_hosts_beyond_loopback(host: str) -> None:
    check_token_policy(Settings(api_token="s3cret"), host)
    check_token_policy(Settings(allow_no_token=True), host)


def test_a_token_file_counts_as_a_token(tmp_path: Path) -> None:
    token_file = tmp_path / "api_token"
    token_file.write_text("from-a-file\n")
    settings = load_settings({"CNN_SWARM_API_TOKEN_FILE": str(token_file)})
    assert settings.api_token == "from-a-file"
    check_token_policy(settings, "0.0.0.0")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, False), ("", False), ("0", False), ("no", False), ("1", True), ("true", True)],
)
def test_allow_no_token_is_read_from_the_environment(raw: str | None, expected: bool) -> None:
    env = {} if raw is None else {"CNN_SWARM_ALLOW_NO_TOKEN": raw}
    assert load_settings(env).allow_no_token is expected


def test_a_malformed_allow_no_token_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="CNN_SWARM_ALLOW_NO_TOKEN"):
        load_settings({"CNN_SWARM_ALLOW_NO_TOKEN": "maybe"})


def test_controller_beyond_loopback_without_a_token_exits_2(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in ("CNN_SWARM_API_TOKEN", "CNN_SWARM_API_TOKEN_FILE", "CNN_SWARM_ALLOW_NO_TOKEN")
    }
    env.update(HOME_DIR=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "cnnswarm.cli", "controller", "--host", "0.0.0.0", "--port", "0"]
    # A regression would start a server; the timeout turns that into a failure, not a hang.
    finished = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2, finished.stdout + finished.stderr
    assert "listening on 0.0.0.0 (beyond loopback) needs an API token" in finished.stderr
    assert "listening on http" not in finished.stdout


def test_client_settings_read_the_token_as_the_servers_do(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert load_client_settings({}).url == "http://127.0.0.1:48515"
    assert load_client_settings({"FLASK_CONTROLLER_PORT": "5000"}).url == "http://127.0.0.1:5000"
    settings = load_client_settings(
        {"CNN_SWARM_URL": "http://ctl:8080/", "CNN_SWARM_API_TOKEN_FILE": str(token_file)}
    )
    assert (settings.url, settings.api_token) == ("http://ctl:8080", "from-file")
    assert "from-file" not in repr(settings)
    both = {"CNN_SWARM_API_TOKEN": "from-env", "CNN_SWARM_API_TOKEN_FILE": str(token_file)}
    assert load_client_settings(both).api_token == load_settings(both).api_token == "from-env"
    with pytest.raises(ConfigError, match="CNN_SWARM_API_TOKEN_FILE"):
        load_client_settings({"CNN_SWARM_API_TOKEN_FILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="FLASK_CONTROLLER_PORT"):
        load_client_settings({"FLASK_CONTROLLER_PORT": "http"})


def test_predict_is_shed_by_queue_time_and_the_retired_count_is_ignored_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = load_settings({"PREDICT_MAX_QUEUE_S": "0.5", "PREDICT_TORCH_THREADS": "2"})
    assert (settings.predict_max_queue_s, settings.predict_torch_threads) == (0.5, 2)
    with caplog.at_level("WARNING", logger="cnnswarm.config"):
        load_settings({"PREDICT_MAX_INFLIGHT": "24"})
    assert "'PREDICT_MAX_INFLIGHT' is ignored" in caplog.text
    assert "PREDICT_MAX_QUEUE_S" in caplog.text
    with pytest.raises(ConfigError, match="PREDICT_MAX_QUEUE_S"):
        load_settings({"PREDICT_MAX_QUEUE_S": "0"})


def test_gang_timeouts_are_settings_that_reach_the_job_processes(tmp_path: Path) -> None:
    settings = load_settings(
        {"GANG_INIT_TIMEOUT_S": "7.5", "GANG_COLLECTIVE_TIMEOUT_S": "30", "HOME_DIR": str(tmp_path)}
    )
    runner = JobRunner(settings, ControllerClient(settings.resolved_controller_url))
    try:
        config = runner.child_config
        assert (config.gang_init_timeout_s, config.gang_collective_timeout_s) == (7.5, 30.0)
    finally:
        runner.shutdown(1.0)
    defaults = load_settings({})
    assert (defaults.gang_init_timeout_s, defaults.gang_collective_timeout_s) == (60.0, 120.0)
    with pytest.raises(ConfigError, match="GANG_INIT_TIMEOUT_S"):
        load_settings({"GANG_INIT_TIMEOUT_S": "0"})


def test_the_controller_worker_class_is_gevent_or_gthread() -> None:
    assert load_settings({}).gunicorn_worker_class == "gevent"
    assert load_settings({"GUNICORN_WORKER_CLASS": "GThread"}).gunicorn_worker_class == "gthread"
    with pytest.raises(ConfigError, match=r"GUNICORN_WORKER_CLASS.*gthread, gevent"):
        load_settings({"GUNICORN_WORKER_CLASS": "sync"})
