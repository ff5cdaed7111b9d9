"""Small helpers every test tier imports (``tests/`` is on pytest's python path)."""

from __future__ import annotations

import io
import json
import random
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import WSGIRequestHandler, make_server

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

T = TypeVar("T")

# A test report's user property under this name holds figures its tier measured (a dict of
# numbers); they travel with the report from a pytest-xdist worker, and the root conftest prints
# them at the end of the run.
FIGURES_PROPERTY = "tier_figures"


def csp_directives(header: str) -> dict[str, list[str]]:
    """A Content-Security-Policy header as {directive: its sources}."""
    directives = (part.split() for part in header.split(";") if part.strip())
    return {words[0]: words[1:] for words in directives}


class PageReferences(HTMLParser):
    """What an HTML page references and runs: the URLs in its ``src``, ``href``, ``action`` and
    ``data-*-url`` attributes, the text of its inline scripts, and its inline styles and event
    handlers (``tag name='value'``), which a strict Content-Security-Policy would block."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self.inline_attributes: list[str] = []
        self._in_script = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            is_url = name in ("src", "href", "action") or (
                name.startswith("data-") and name.endswith("-url")
            )
            if is_url and value:
                self.urls.append(value)
            if name == "style" or name.startswith("on"):
                self.inline_attributes.append(f"{tag} {name}={value!r}")
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


def free_port() -> int:
    """An ephemeral TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_below_ephemeral_range() -> int:
    """A TCP port free on every address a moment ago, below the kernel's ephemeral range: for a
    port that must stay free for minutes while other tests run, as no socket they open on port 0
    (a server, or the local end of a connection) can be given it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(low // 2, low), 100):
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {low // 2} and {low}")


class _QuietHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: object) -> None:
        """No access log: it would land in the captured stderr some tests read."""


@contextmanager
def serve_in_thread(app: WSGIApplication) -> Iterator[str]:
    """``app`` served by werkzeug in a thread on 127.0.0.1:<ephemeral> until the block ends;
    yields its URL. The server is shut down and its socket closed even if the block raises."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    # A short poll interval: shutdown() waits for the loop to notice, once per test.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


class ManualClock:
    """A clock for code that takes ``clock=``: time passes only when the test says so
    (``advance``), so a test lets minutes go by without sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward; return the new time."""
        self.now += seconds
        return self.now


class WaitTimedOut(AssertionError):
    """``wait_until``'s condition did not hold before its deadline."""


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str | Callable[[], str] = "it",
    *,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; raise
    ``WaitTimedOut`` naming ``what`` (a callable is asked at the deadline, so it can describe
    the state then) after ``timeout`` seconds. Exceptions of the ``ignoring`` types count as
    "not yet", and the last one is named in the failure."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        value: T | None
        try:
            value = predicate()
        except ignoring as exc:
            last_error, value = exc, None
        if value:
            return value
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise WaitTimedOut(f"timed out after {timeout}s waiting for {described}{detail}")
        time.sleep(interval)


def drive_until(
    step: Callable[[], object],
    condition: Callable[[], T | None],
    timeout: float = 30.0,
    what: str | Callable[[], str] = "it",
) -> T:
    """``wait_until(condition)`` running ``step`` before each check: the test drives one round
    of the loop under test itself (``JobRunner.poll``, as rq's burst mode)."""

    def stepped() -> T | None:
        step()
        return condition()

    return wait_until(stepped, timeout, what=what)


def png_bytes(array: np.ndarray) -> bytes:
    """A PNG file of a uint8 HxW or HxWx3 array."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def digits_png(index: int) -> tuple[bytes, int]:
    """Digit ``index`` of scikit-learn's set as an ordinary 8-bit PNG, and its label."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(digits.images[index] * 16, 0, 255).astype(np.uint8)
    return png_bytes(pixels), int(digits.target[index])


def image_folder_zip(classes: dict[str, list[bytes]]) -> bytes:
    """A zip of ``class_name/<i>.png`` folders."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, images in classes.items():
            for i, data in enumerate(images):
                archive.writestr(f"{name}/{i}.png", data)
    return buffer.getvalue()


class MarkerPayload:
    """A hostile pickle payload: unpickling it creates the file ``marker`` (a test proves a
    loader safe by showing the marker never appears)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def metric_value(exposition: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with exactly ``labels`` in a Prometheus text exposition
    (``None`` when there is no such sample)."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def metric_samples(exposition: str, name: str) -> list[dict[str, str]]:
    """The label sets of every sample named ``name`` in a Prometheus text exposition."""
    return [
        sample.labels
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name
    ]


GRAFANA_DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "cnn-swarm.json"


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the Grafana dashboard's panels (deploy/grafana)."""
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


class _StubTrainer(BaseHTTPRequestHandler):
    """Answers every POST with ``status`` (202: a dispatch accepted) after ``delay_s``, and
    records each request's JSON body, with the raw request path under ``"path"``."""

    status = 202
    delay_s = 0.0
    received: list[dict[str, object]]

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append({**(json.loads(raw) if raw else {}), "path": self.path})
        time.sleep(self.delay_s)
        payload = json.dumps({"status": {"initiated": True}}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


def serve_stub_trainer(
    status: int = 202, delay_s: float = 0.0
) -> tuple[ThreadingHTTPServer, list[dict[str, object]]]:
    """A trainer's ``POST`` routes reduced to one answer (``_StubTrainer``), served on an
    ephemeral loopback port in a daemon thread; the server (shut it down) and what it received."""
    received: list[dict[str, object]] = []
    handler = type(
        "Handler", (_StubTrainer,), {"status": status, "delay_s": delay_s, "received": received}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received
