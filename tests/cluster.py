"""A real cnn-swarm cluster for end-to-end and chaos tests: controller and trainer processes.

Every server is ``python -m cnnswarm.cli controller|trainer`` (gunicorn, as in production) on an
ephemeral port (``--port 0 --url-file``), configured only through environment variables, in its
own process group, with its output in a log file. Each process gets its own ``HOME_DIR``:
trainers share no filesystem with the controller (datasets, checkpoints and models travel over
HTTP); controllers may share one (``Cluster.start_controller(home=...)``) as replicas would share
an artifact volume.

Guarantees:
- ``with Cluster(tmp_path) as cluster:`` kills every process group it started (SIGKILL) when the
  block ends, whatever happened; children also get SIGTERM if the test process dies
  (``CNN_SWARM_PARENT_PID``, see ``cnnswarm.parent_process.die_with_parent``).
- ``start_*`` returns only once the server answers ``/readyz`` (or raises with its log tail).
- ``ServerProcess.kill()`` is ``kill -9`` of the whole group: the gunicorn master, its worker and a
  trainer's job children die together, as when a machine is lost.

Typical use::

    with Cluster(tmp_path) as cluster:
        controller = cluster.start_controller()
        cluster.start_trainers(2)
        client = cluster.client()
        ...
        victim = cluster.trainer_running(job_id)
        victim.kill()                     # kill -9 of its process group
        controller.kill()
        cluster.restart(controller)       # same port, same database, same HOME_DIR
        victim.kill(signal.SIGSTOP)       # a frozen (partitioned) trainer; SIGCONT thaws it

Two controllers on one database: ``Cluster(root, database_url=pg_url)`` and
``start_controller(name, home=shared_home)`` twice; ``start_trainer(controller=a)`` picks the
controller a trainer reports to. On failure the servers' log tails are printed (logs live
under ``root/logs``).

Timings are short (``FAST_TIMINGS``) so that lost trainers are noticed in a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import requests

from cnnswarm.client import Client
from support import WaitTimedOut, wait_until

Role = Literal["controller", "trainer"]

# Short heartbeat, lease and scheduling periods: a killed trainer loses its job within seconds.
FAST_TIMINGS: dict[str, str] = {
    "HEARTBEAT_INTERVAL_S": "0.5",
    "LEASE_TIMEOUT_S": "4",
    "SCHEDULER_INTERVAL_S": "0.25",
}
# Two shared cores: one torch thread per process, and few request threads.
QUIET_ENV: dict[str, str] = {
    "TORCH_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "GUNICORN_THREADS": "8",
    "PYTHONUNBUFFERED": "1",
}
STARTUP_TIMEOUT_S = 90.0
STOP_GRACE_S = 10.0


class ClusterError(AssertionError):
    """A server did not start, did not become ready, or died; the message has its log tail."""


@dataclass
class ServerProcess:
    """One controller or trainer process (the leader of its own process group)."""

    role: Role
    name: str
    home: Path
    env: dict[str, str]
    log_path: Path
    url_file: Path
    port: int = 0  # the port asked for; 0 until it first bound, then the bound one
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    history: list[int] = field(default_factory=list)  # pids of earlier incarnations

    @property
    def pid(self) -> int:
        """The gunicorn master's pid (also the process group id)."""
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def alive(self) -> bool:
        """Whether the master process is still running."""
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default: ``kill -9``) to the whole process group and, for SIGKILL,
        reap the master. Idempotent."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)
        if sig == signal.SIGKILL:
            self.process.wait()
            _wait_group_gone(self.process.pid)

    def terminate(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the master (a graceful gunicorn stop), wait up to ``grace_s``, then SIGKILL the
        group whatever is left; return the master's exit status (None if it had to be killed)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace_s)
        status = self.process.poll()
        self.kill(signal.SIGKILL)  # workers or job children that outlived the master
        return status

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of this server's output (all incarnations)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def client(self, timeout: float = 30.0) -> Client:
        """A ``cnnswarm.client.Client`` of this server (meaningful for a controller)."""
        return Client(self.url, timeout=timeout)

    def get(self, path: str, timeout: float = 10.0) -> Any:
        """``GET path`` on this server, decoded JSON; raises for a non-2xx answer."""
        response = requests.get(self.url + path, timeout=timeout)
        response.raise_for_status()
        return response.json()


def living_group_members(group: int) -> list[int]:
    """Pids in process group ``group`` that are not zombies (dead but not yet reaped by init,
    which here can take seconds). Reads /proc; without it, any answer to ``killpg`` counts."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [group]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _wait_group_gone(group: int, timeout: float = 5.0) -> None:
    """Wait until no living process of ``group`` is left (SIGKILL is not instantaneous)."""
    try:
        wait_until(lambda: not living_group_members(group), timeout, interval=0.02)
    except WaitTimedOut:
        raise ClusterError(
            f"process group {group} is still alive {timeout}s after SIGKILL"
        ) from None


class Cluster:
    """Starts and always stops controller and trainer processes under ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        database_url: str = "",
        env: Mapping[str, str] | None = None,
        timings: Mapping[str, str] | None = None,
    ) -> None:
        """``database_url`` empty: each controller uses an SQLite file under its HOME_DIR (so a
        restarted controller with the same home finds the same database). ``env`` is added to
        every process's environment (after ``timings`` and the quiet defaults)."""
        self.root = root
        self.database_url = database_url
        self.base_env = {**QUIET_ENV, **(timings or FAST_TIMINGS), **(env or {})}
        self.servers: list[ServerProcess] = []
        root.mkdir(parents=True, exist_ok=True)

    # -- context manager ---------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and exc_type is not KeyboardInterrupt:
            self.print_logs()
        self.stop_all()

    def stop_all(self) -> None:
        """SIGKILL every process group this cluster started (tests need no graceful stop);
        raise ``ClusterError`` afterwards if a group would not die."""
        failures = []
        for server in reversed(self.servers):
            try:
                server.kill(signal.SIGKILL)
            except ClusterError as exc:
                failures.append(str(exc))
        if failures:
            raise ClusterError("; ".join(failures))

    def print_logs(self, lines: int = 40) -> None:
        """Print each server's log tail (pytest shows it for a failing test)."""
        for server in self.servers:
            print(f"----- {server.name} ({server.log_path}) -----\n{server.log_tail(lines)}")

    # -- starting servers --------------------------------------------------------------------

    @property
    def controllers(self) -> list[ServerProcess]:
        return [s for s in self.servers if s.role == "controller"]

    @property
    def trainers(self) -> list[ServerProcess]:
        return [s for s in self.servers if s.role == "trainer"]

    @property
    def controller(self) -> ServerProcess:
        """The first controller that is alive."""
        for server in self.controllers:
            if server.alive():
                return server
        raise ClusterError("no controller is running")

    def client(self, timeout: float = 30.0) -> Client:
        """A client of the first live controller."""
        return self.controller.client(timeout)

    def start_controller(
        self,
        name: str | None = None,
        *,
        home: Path | None = None,
        database_url: str | None = None,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> ServerProcess:
        """Start a controller (own HOME_DIR under ``root`` unless ``home`` is given; the
        cluster's database URL unless ``database_url``); return once ``/readyz`` answers."""
        name = name or f"controller-{len(self.controllers) + 1}"
        server_env = dict(self.base_env)
        db = self.database_url if database_url is None else database_url
        if db:
            server_env["DATABASE_URL"] = db
        server_env.update(env or {})
        return self._launch("controller", name, home or self.root / name, server_env, wait)

    def start_trainer(
        self,
        name: str | None = None,
        *,
        controller: ServerProcess | str | None = None,
        slots: int = 1,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> ServerProcess:
        """Start a trainer with its own HOME_DIR, reporting to ``controller`` (a server or a URL;
        default: the first live controller); return once ``/readyz`` answers."""
        name = name or f"trainer-{len(self.trainers) + 1}"
        target = controller if controller is not None else self.controller
        controller_url = target if isinstance(target, str) else target.url
        server_env = {
            **self.base_env,
            "CONTROLLER_URL": controller_url,
            "TRAINER_SLOTS": str(slots),
            "TRAINER_ID": name,
            **(env or {}),
        }
        return self._launch("trainer", name, self.root / name, server_env, wait)

    def start_trainers(self, count: int, **kwargs: Any) -> list[ServerProcess]:
        """Start ``count`` trainers at once (they boot in parallel), then wait for each."""
        started = [self.start_trainer(wait=False, **kwargs) for _ in range(count)]
        for server in started:
            self.wait_ready(server)
        return started

    def restart(self, server: ServerProcess, *, wait: bool = True) -> ServerProcess:
        """Start ``server`` again on the same port with the same HOME_DIR and environment (the
        old process must be dead: ``kill()`` or ``terminate()`` it first)."""
        if server.alive():
            raise ClusterError(f"{server.name} is still running; kill it before restarting")
        if server.process is not None:
            server.history.append(server.process.pid)
        self._spawn(server)
        if wait:
            self.wait_ready(server)
        return server

    def _launch(
        self, role: Role, name: str, home: Path, env: dict[str, str], wait: bool
    ) -> ServerProcess:
        home.mkdir(parents=True, exist_ok=True)
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        server = ServerProcess(
            role=role,
            name=name,
            home=home,
            env=env,
            log_path=logs / f"{name}.log",
            url_file=self.root / "run" / f"{name}.url",
        )
        self.servers.append(server)
        self._spawn(server)
        if wait:
            self.wait_ready(server)
        return server

    def _spawn(self, server: ServerProcess) -> None:
        """Start (or restart) the server's process on ``server.port`` (0: ephemeral)."""
        server.url_file.parent.mkdir(parents=True, exist_ok=True)
        server.url_file.unlink(missing_ok=True)
        server.url = ""
        env = {
            **os.environ,
            **server.env,
            "HOME_DIR": str(server.home),
            # Children SIGTERM themselves if this test process dies.
            "CNN_SWARM_PARENT_PID": str(os.getpid()),
        }
        port_var = "FLASK_CONTROLLER_PORT" if server.role == "controller" else "FLASK_TRAIN_PORT"
        host_var = "FLASK_CONTROLLER_HOST" if server.role == "controller" else "FLASK_TRAIN_HOST"
        env[port_var] = str(server.port)
        env[host_var] = "127.0.0.1"
        with server.log_path.open("ab") as log:
            log.write(f"===== start {server.name} port={server.port} =====\n".encode())
            log.flush()
            server.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cnnswarm.cli",
                    server.role,
                    "--url-file",
                    str(server.url_file),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: killpg reaches its children
            )

    def wait_ready(self, server: ServerProcess, timeout: float = STARTUP_TIMEOUT_S) -> str:
        """Wait for the server's URL file and a 2xx ``/readyz``; return its URL."""

        def ready() -> bool:
            if not server.alive():
                raise ClusterError(
                    f"{server.name} exited with status {server.process and server.process.poll()}"
                    f"\n{server.log_tail()}"
                )
            if not server.url and server.url_file.exists():
                server.url = server.url_file.read_text().strip()
                server.port = int(server.url.rsplit(":", 1)[1])
            if server.url:
                with contextlib.suppress(requests.RequestException):
                    return requests.get(f"{server.url}/readyz", timeout=2).ok
            return False

        try:
            wait_until(ready, timeout)
        except WaitTimedOut:
            raise ClusterError(
                f"{server.name} was not ready after {timeout}s\n{server.log_tail()}"
            ) from None
        return server.url

    def top_up(self, trainers: int) -> None:
        """For a cluster that tests share and some of them kill servers in: restart the first
        controller when none is alive, start trainers until ``trainers`` are alive, and wait until
        every live trainer is registered idle with every slot free."""
        if not any(server.alive() for server in self.controllers):
            self.restart(self.controllers[0])
        missing = trainers - len(list(self.live_trainers()))
        if missing > 0:
            self.start_trainers(missing)
        self.wait_trainers_idle()

    def wait_trainers_idle(self, timeout: float = 60.0) -> None:
        """Wait until every live trainer is registered idle at the controller and has every
        slot free (a job cancelled or ended a moment ago has left it)."""
        client = self.client()

        def idle() -> bool:
            registered = {t["url"].rstrip("/"): t for t in client.list_trainers()}
            for server in self.live_trainers():
                entry = registered.get(server.url.rstrip("/"))
                if entry is None or entry["state"] != "idle":
                    return False
                status = server.get("/status")
                if status["free_slots"] != status["slots"]:
                    return False
            return True

        wait_until(idle, timeout, interval=0.1, what="every live trainer registered and idle")

    # -- looking things up -------------------------------------------------------------------

    def trainer_by_url(self, url: str) -> ServerProcess:
        """The trainer process serving ``url``."""
        wanted = url.rstrip("/")
        for server in self.trainers:
            if server.url.rstrip("/") == wanted:
                return server
        raise ClusterError(f"no trainer of this cluster serves {url}")

    def trainer_running(self, job_id: str, via: ServerProcess | None = None) -> ServerProcess:
        """The trainer process that runs ``job_id`` now, as the controller sees it: the job's
        ``trainer`` id, looked up in ``/api/v1/trainers`` for its URL."""
        controller = via or self.controller
        job = controller.get(f"/api/v1/jobs/{job_id}")
        if job["state"] != "running" or not job["trainer"]:
            raise ClusterError(f"job {job_id} is not running: {job['state']}")
        for trainer in controller.get("/api/v1/trainers")["trainers"]:
            if trainer["id"] == job["trainer"]:
                return self.trainer_by_url(trainer["url"])
        raise ClusterError(f"trainer {job['trainer']} of job {job_id} is not registered")

    def live_trainers(self) -> Iterator[ServerProcess]:
        """Trainer processes that are still running."""
        return (server for server in self.trainers if server.alive())
