"""`cnn-swarm up`: a controller and N trainers as local child processes, one command.

Guarantees: every child is a ``cnn-swarm controller|trainer`` process in its own process group;
whatever happens (Ctrl-C, SIGTERM, a child dying, a start-up failure), every child group gets
SIGTERM, then SIGKILL after a grace period, before ``run_local_cluster`` returns. Children also
ask the kernel for SIGTERM when this process dies (Linux), so even ``kill -9`` of ``up`` leaves
no servers behind. Each child's output is copied to stdout prefixed with its name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import requests

from cnnswarm.atomic import write_text_atomically
from cnnswarm.parent_process import PARENT_PID_ENV

STOP_GRACE_S = 15.0


class StopRequested(Exception):
    """SIGTERM reached ``up``: stop the children and return."""


class StartupFailed(Exception):
    """A child exited or did not become ready in time; the message says which."""


@dataclass
class Child:
    """One child server: its name, process and the file where it writes its URL."""

    name: str
    process: subprocess.Popen[bytes]
    url_file: Path
    pump: threading.Thread | None = field(default=None)


def _pump_output(name: str, stream: IO[bytes], lock: threading.Lock) -> None:
    """Copy a child's output to our stdout, one prefixed line at a time."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        with lock:
            print(f"[{name}] {line}", flush=True)
    stream.close()


def _start(
    name: str, args: list[str], url_file: Path, lock: threading.Lock, token: str = ""
) -> Child:
    """Start ``cnn-swarm <args> --url-file <url_file>`` as a child in its own process group."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if token:
        env["CNN_SWARM_API_TOKEN"] = token
    env[PARENT_PID_ENV] = str(os.getpid())
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnswarm.cli", *args, "--url-file", str(url_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # Ctrl-C reaches only `up`, which stops children in order.
    )
    assert process.stdout is not None
    pump = threading.Thread(
        target=_pump_output, args=(name, process.stdout, lock), name=f"pump-{name}", daemon=True
    )
    pump.start()
    return Child(name, process, url_file, pump)


def _wait_ready(child: Child, deadline: float) -> str:
    """Wait for the child's URL file and a 2xx ``/readyz``; return its URL."""
    url = ""
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise StartupFailed(f"{child.name} exited with status {child.process.returncode}")
        if not url and child.url_file.exists():
            url = child.url_file.read_text().strip()
        if url:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/readyz", timeout=2).ok:
                    return url
        time.sleep(0.1)
    raise StartupFailed(f"{child.name} was not ready in time")


def _stop(children: list[Child]) -> None:
    """SIGTERM every child (trainers first), SIGKILL the process groups still alive after
    ``STOP_GRACE_S``, and reap everything."""
    for child in reversed(children):
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in reversed(children):
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
    for child in children:
        # The group also holds gunicorn workers and job processes, which may outlive a master.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait()
        if child.pump is not None:
            child.pump.join(timeout=2)


def run_local_cluster(
    *,
    trainers: int,
    port: int,
    home: Path,
    host: str = "127.0.0.1",
    url_file: Path | None = None,
    token: str = "",
    startup_timeout_s: float = 120.0,
) -> int:
    """Run a controller on ``host:port`` (0: ephemeral) and ``trainers`` trainers on ephemeral
    ports until Ctrl-C, SIGTERM or a child's death; print (and write to ``url_file``) the
    controller URL once everything answers ``/readyz``; ``token`` (when set) is the API token
    of every child. Returns the exit status for the CLI."""
    home.mkdir(parents=True, exist_ok=True)
    runtime_dir = Path(tempfile.mkdtemp(prefix="cnn-swarm-up-"))
    lock = threading.Lock()
    children: list[Child] = []

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise StopRequested

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        deadline = time.monotonic() + startup_timeout_s
        controller = _start(
            "controller",
            ["controller", "--host", host, "--port", str(port), "--home", str(home)],
            runtime_dir / "controller.url",
            lock,
            token,
        )
        children.append(controller)
        controller_url = _wait_ready(controller, deadline)
        for index in range(1, trainers + 1):
            trainer_args = [
                "trainer",
                "--host",
                host,
                "--port",
                "0",
                "--home",
                str(home / f"trainer-{index}"),
                "--controller-url",
                controller_url,
            ]
            name = f"trainer-{index}"
            children.append(_start(name, trainer_args, runtime_dir / f"{name}.url", lock, token))
        for child in children[1:]:
            _wait_ready(child, deadline)
        if url_file is not None:
            write_text_atomically(url_file, controller_url + "\n")
        with lock:
            print(f"cnn-swarm is up: controller at {controller_url} with {trainers} trainer(s)")
            print("Press Ctrl-C to stop.", flush=True)
        while True:
            for child in children:
                if child.process.poll() is not None:
                    with lock:
                        print(
                            f"cnn-swarm: {child.name} exited with status "
                            f"{child.process.returncode}; stopping",
                            file=sys.stderr,
                        )
                    return 1
            time.sleep(0.2)
    except StartupFailed as exc:
        print(f"cnn-swarm: could not start: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, StopRequested):
        with lock:
            print("cnn-swarm: stopping", flush=True)
        return 0
    finally:
        # Stopping must not be interrupted half-way by a second Ctrl-C or SIGTERM.
        previous_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            _stop(children)
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            signal.signal(signal.SIGINT, previous_sigint)
            shutil.rmtree(runtime_dir, ignore_errors=True)
            if url_file is not None:
                url_file.unlink(missing_ok=True)
