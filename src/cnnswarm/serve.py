"""Run the controller or a trainer under gunicorn, in the foreground.

Guarantees:
- The Flask app is built by its factory inside each gunicorn worker (never before the fork), so
  background threads (scheduler, heartbeats) live in the process that serves requests.
- Port 0 binds an ephemeral port; the bound URL is printed as ``listening on http://host:port``
  and, when asked, written atomically to a URL file before any worker starts. The worker's
  settings carry the real port, so a trainer announces an address that works.
- A role that would listen beyond loopback without an API token (and without
  ``CNN_SWARM_ALLOW_NO_TOKEN=1``) does not start: ``ConfigError`` before gunicorn binds.
- SIGTERM stops gracefully (in-flight requests finish, up to ``GRACEFUL_TIMEOUT_S``); SIGINT stops
  quickly. Either way the worker, as it exits, calls the stop callables its app's factory
  registered (``cnnswarm.lifecycle``), so jobs, threads and leases end before the process does.
  Access log goes to stdout, errors to stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from cnnswarm.atomic import write_text_atomically
from cnnswarm.config import Settings, check_token_policy
from cnnswarm.cpu import check_coordination_dir, torch_threads_for
from cnnswarm.lifecycle import stop_all
from cnnswarm.metrics_dir import mark_worker_dead, use_multiprocess_dir, use_single_process

# A worker that is silent this long is restarted. Workers keep notifying the arbiter while
# requests run (a gevent worker from its event loop, which CPU-heavy steps leave free:
# controller.event_loop), so this bounds a hung worker, not a long upload or a long SSE stream.
WORKER_TIMEOUT_S = 300
GRACEFUL_TIMEOUT_S = 30
# Successful requests to these paths are not access-logged (heartbeats, probes, scrapes).
QUIET_PATHS = frozenset({"/internal/v1/heartbeat", "/healthz", "/readyz", "/metrics"})

Role = Literal["controller", "trainer"]

# glibc's mallopt parameter for the number of malloc arenas, and the controller's value. glibc
# gives busy threads arenas of their own (up to 8 per core), each keeping its freed memory; with
# 16 request threads per worker, 2 workers and 10 cached models, the controller's PSS after load
# was 515 MB with glibc's default, 424-498 MB with 2 arenas and 406 MB with 1, at the same CPU
# time per answer (the GIL already serializes the request threads' Python).
_M_ARENA_MAX = -8
CONTROLLER_MALLOC_ARENAS = 1


def _set_torch_threads(threads: int) -> None:
    """Set torch's thread count in this (worker) process."""
    import torch  # Imported here: a trainer imports torch only in its job processes.

    torch.set_num_threads(threads)


def _limit_malloc_arenas(arenas: int) -> None:
    """Cap glibc's malloc arenas in this process (before its threads start), unless
    ``MALLOC_ARENA_MAX`` already set them; a no-op without glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas)


class QuietProbesLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger, with two changes to its access lines:

    - none for successful heartbeats and health probes, which arrive every second or so and
      would drown the requests worth reading;
    - the line (gunicorn's default "combined" format, unchanged) is built directly
      (``combined_log_line``) instead of through gunicorn's atoms, a dict of every header and
      environ entry built per request (23 µs a line instead of 77).
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if environ.get("PATH_INFO") in QUIET_PATHS and str(resp.status).startswith("2"):
            return
        if not self.cfg.accesslog:
            return
        user = self._get_user(environ) if "HTTP_AUTHORIZATION" in environ else None
        sent = getattr(resp, "sent", None)
        try:
            self.access_log.info(combined_log_line(environ, resp.status, sent, user, self.now()))
        except Exception:
            self.exception("could not write an access line")


def combined_log_line(
    environ: dict[str, Any], status: Any, sent: int | None, user: str | None, now: str
) -> str:
    """gunicorn's default access line (``%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s"
    "%(a)s"``), with the double quotes in its values escaped as gunicorn escapes them."""

    def quoted(value: str) -> str:
        return value.replace('"', '\\"')

    code = status.split(None, 1)[0] if isinstance(status, str) else status
    request_line = f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}"
    return (
        f"{environ.get('REMOTE_ADDR', '-')} - {quoted(user or '-')} {now} "
        f'"{quoted(request_line)}" {code} {"-" if sent is None else sent} '
        f'"{quoted(environ.get("HTTP_REFERER", "-"))}" '
        f'"{quoted(environ.get("HTTP_USER_AGENT", "-"))}"'
    )


class _GunicornApp(BaseApplication):  # type: ignore[misc]
    """Serve the app that ``factory(settings)`` builds; ``settings`` gets the bound port."""

    def __init__(
        self,
        factory: Callable[[Settings], Any],
        settings: Settings,
        *,
        role: Role,
        workers: int,
        torch_threads: int | None,
        url_file: Path | None,
    ) -> None:
        self.factory = factory
        self.settings = settings
        self.role = role
        self.workers = workers
        self.torch_threads = torch_threads
        self.url_file = url_file
        super().__init__()

    @property
    def host(self) -> str:
        return (
            self.settings.controller_host if self.role == "controller" else self.settings.train_host
        )

    @property
    def port(self) -> int:
        return (
            self.settings.controller_port if self.role == "controller" else self.settings.train_port
        )

    @property
    def worker_class(self) -> str:
        """gthread, or for the controller the class its settings name."""
        return self.settings.gunicorn_worker_class if self.role == "controller" else "gthread"

    def load_config(self) -> None:
        options: dict[str, Any] = {
            "bind": [f"{self.host}:{self.port}"],
            "workers": self.workers,
            "threads": self.settings.gunicorn_threads,
            "worker_class": self.worker_class,
            "timeout": WORKER_TIMEOUT_S,
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            "keepalive": 5,
            "accesslog": "-",
            "errorlog": "-",
            "logger_class": QuietProbesLogger,
            "preload_app": False,
            "proc_name": f"cnn-swarm-{self.role}",
            "when_ready": self._when_ready,
            "worker_exit": self._worker_exit,
            "child_exit": self._child_exit,
        }
        # gunicorn >= 25.1 opens one control socket per user by default; several servers on
        # one machine (`cnn-swarm up`) would fight over it, and nothing here uses it.
        if "control_socket_disable" in self.cfg.settings:
            options["control_socket_disable"] = True
        for key, value in options.items():
            self.cfg.set(key, value)

    def _when_ready(self, arbiter: Any) -> None:
        """In the master, after binding and before forking: learn the port, announce the URL."""
        bound_port = int(arbiter.LISTENERS[0].sock.getsockname()[1])
        port_field = "controller_port" if self.role == "controller" else "train_port"
        self.settings = self.settings.with_overrides(**{port_field: bound_port})
        url = f"http://{_reachable_host(self.host)}:{bound_port}"
        if self.url_file is not None:
            write_text_atomically(self.url_file, url + "\n")
        print(f"listening on {url}", flush=True)

    def load(self) -> Any:
        """In each worker: set torch's threads (when given) and, in the controller, malloc's
        arenas, then build the app (which may start threads)."""
        if self.torch_threads is not None:
            _set_torch_threads(self.torch_threads)
        if self.role == "controller":
            _limit_malloc_arenas(CONTROLLER_MALLOC_ARENAS)
        return self.factory(self.settings)

    def _worker_exit(self, arbiter: Any, worker: Any) -> None:
        """In the worker, as it exits: call the stop callables the app's factory registered."""
        app = getattr(worker, "wsgi", None)
        if app is not None:  # None when the factory itself failed: nothing was started
            stop_all(app)

    def _child_exit(self, arbiter: Any, worker: Any) -> None:
        """In the master, once a worker has exited: its live gauges leave the metric totals."""
        if self.role == "controller":
            mark_worker_dead(worker.pid)


def _reachable_host(host: str) -> str:
    """The host to put in a URL: a wildcard bind is reached through the loopback address."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def serve_app(
    factory: Callable[[Settings], Any],
    settings: Settings,
    *,
    role: Role,
    workers: int,
    torch_threads: int | None,
    url_file: Path | None = None,
) -> None:
    """Serve ``factory(settings)`` (built in each worker, ``settings`` carrying the bound port)
    on the role's host and port until stopped, each worker with ``torch_threads`` torch threads
    (None: the worker never imports torch); what the factory registered with
    ``lifecycle.on_stop`` runs when a worker exits. Raises ``ConfigError`` before binding when
    the role's host is beyond loopback and no API token is set (``check_token_policy``)."""
    check_token_policy(
        settings, settings.controller_host if role == "controller" else settings.train_host
    )
    _GunicornApp(
        factory,
        settings,
        role=role,
        workers=workers,
        torch_threads=torch_threads,
        url_file=url_file,
    ).run()


def _patch_for_gevent() -> None:
    """Patch the standard library for gevent in the gunicorn master, before it imports the app.

    The master imports the controller's modules before forking (workers share their pages), and
    a module creates locks, thread-locals and ``ssl`` references when it is imported: created
    unpatched, they stay unpatched in a gevent worker, where a greenlet blocking on such a lock
    stalls its whole event loop (and gevent warns for ``ssl``). The worker patches again (a
    no-op)."""
    from gevent import monkey

    monkey.patch_all()


def serve_controller(settings: Settings, *, url_file: Path | None = None) -> None:
    """Serve the controller with gunicorn until stopped: ``settings.gunicorn_workers`` workers of
    ``settings.gunicorn_threads`` threads, ``settings.predict_torch_threads`` torch threads each,
    their metrics added up through a folder of this instance (``cnnswarm.metrics_dir``)."""
    if settings.gunicorn_worker_class == "gevent":
        _patch_for_gevent()  # before the app's modules (and the locks they create) are imported
    metrics_dir = use_multiprocess_dir("controller")  # before prometheus_client is imported
    # One name for this instance's workers (``Scheduler.leads_here``).
    settings = settings.with_overrides(controller_instance=uuid.uuid4().hex[:12])
    from cnnswarm.controller.app import create_app
    from cnnswarm.ml.inference import warm_up_torchscript

    warm_up_torchscript()  # shared by the workers, not allocated in each (served models are TS)
    # The master's objects go to the collector's permanent generation: a worker's collections
    # never write to them, so their pages stay shared after the fork instead of being copied.
    gc.freeze()

    def build(worker_settings: Settings) -> Any:
        return create_app(worker_settings, start_background=True)

    # Several workers: one Python per core for parsing, decoding and Flask (the GIL would
    # serialize them in one process); the scheduler's leader lease keeps background work to one.
    # One torch thread each: inference batches under load instead of splitting each forward.
    try:
        serve_app(
            build,
            settings,
            role="controller",
            workers=settings.gunicorn_workers,
            torch_threads=settings.predict_torch_threads,
            url_file=url_file,
        )
    finally:
        metrics_dir.remove()


def serve_trainer(settings: Settings, *, url_file: Path | None = None) -> None:
    """Serve a trainer with gunicorn until stopped. Always one worker: the worker owns the job
    table and the heartbeat thread, and two would announce one trainer twice. Its metrics live
    in that worker (job processes report to it), so they need no multiprocess folder."""
    use_single_process()  # before prometheus_client is imported
    from cnnswarm.trainer.app import create_app

    def build(worker_settings: Settings) -> Any:
        return create_app(worker_settings, start_background=True)

    # Its jobs split this host's CPUs through this folder: refuse to start without it.
    check_coordination_dir(settings)
    threads = torch_threads_for(settings, sharers=settings.trainer_slots)
    # Job child processes read these when they import torch (each job then sets its share).
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    # The worker itself computes nothing with torch: importing it there only to set its thread
    # count cost every trainer 2.5 s of CPU and ~200 MB at boot.
    serve_app(
        build,
        settings,
        role="trainer",
        workers=1,
        torch_threads=None,
        url_file=url_file,
    )
