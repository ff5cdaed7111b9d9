"""Prometheus metrics shared by both roles: ``GET /metrics`` and HTTP requests by route.

Metric work stays off the hot path: series that requests record are buffered
(``cnnswarm.metric_buffers``): a request appends to a queue, and the queues are written when
``/metrics`` is read and, in multiprocess mode, every second.

Each app builds its metric objects in a ``CollectorRegistry`` of its own (never at import time,
never in the global registry: two apps in one process, as in the tests, count apart).

Two kinds of series:
- *event* series (counters, histograms) that the process where the event happened records. In
  multiprocess mode (``cnnswarm.metrics_dir``, the controller under gunicorn) each worker writes
  them to files and ``/metrics``, whichever worker answers, adds up every worker's files;
- *scrape-time* series (``ScrapeCollector``): read when ``/metrics`` is asked (database counts, a
  trainer's running jobs), by the answering process alone, so they are never summed twice.

``/metrics`` follows the read routes' token policy: like every other ``GET``, it needs no token
(the API token guards actions). With metrics off (``METRICS_ENABLED=0``) neither the route nor the
request hooks exist: the app does no metric work at all.

Labels stay bounded: the route label is Flask's URL rule (``/api/v1/jobs/<job_id>``), never the
path; a request that matches no rule counts as ``<unmatched>``; an unknown method as ``OTHER``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from flask import Flask, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from cnnswarm.lifecycle import on_stop
from cnnswarm.metric_buffers import (
    Buffer,
    BufferedCounter,
    BufferedHistogram,
    Flusher,
    flush_all,
)
from cnnswarm.metrics_dir import ENV_VAR

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"


def multiprocess_mode() -> bool:
    """True when this process writes its values to a folder shared with sibling workers."""
    return bool(os.environ.get(ENV_VAR))


class ScrapeCollector:
    """A collector whose series are computed when ``/metrics`` is read (``collect`` yields
    ``prometheus_client`` metric families)."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


class AppMetrics:
    """An app's registry, its scrape-time collectors and its ``/metrics`` answer."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        # No ``*_created`` series: they double the output and multiprocess mode drops them anyway.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self.scrape_collectors: list[Collector] = []
        self.buffers: list[Buffer] = []
        self._requests_total: BufferedCounter | None = None

    def buffered_counter(self, counter: Counter) -> BufferedCounter:
        """``counter`` for hot paths: increments queued, written by ``flush``."""
        buffered = BufferedCounter(counter)
        self.buffers.append(buffered)
        return buffered

    def buffered_histogram(self, histogram: Histogram) -> BufferedHistogram:
        """``histogram`` (unlabelled) for hot paths: observations queued, written by ``flush``."""
        buffered = BufferedHistogram(histogram)
        self.buffers.append(buffered)
        return buffered

    def flush(self) -> None:
        """Write what this process's buffers hold."""
        flush_all(self.buffers)

    def start_flushing(self, app: Flask) -> None:
        """Flush every ``FLUSH_INTERVAL_S`` until ``app``'s process stops: sibling workers
        answer scrapes too, and the queues stay short when nobody scrapes."""
        if self.enabled:
            flusher = Flusher(self.buffers)
            flusher.start()
            on_stop(app, flusher.stop)

    def add_scrape_collector(self, collector: Collector) -> None:
        """Have ``collector`` read at every scrape (by the process that answers it)."""
        self.scrape_collectors.append(collector)
        if not multiprocess_mode():
            self.registry.register(collector)

    def exposition(self) -> bytes:
        """The text format of every series: this process's registry, or in multiprocess mode
        the sum over all workers' files plus this process's scrape-time collectors."""
        self.flush()
        if not multiprocess_mode():
            return generate_latest(self.registry)
        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for collector in self.scrape_collectors:
            registry.register(collector)
        return generate_latest(registry)

    def install(self, app: Flask) -> None:
        """Serve ``GET /metrics`` and count ``app``'s requests by route (nothing when off)."""
        if not self.enabled:
            return
        # A counter only: a per-route duration histogram would cost every request (predict
        # among them) more; predict has its own latency histogram.
        self._requests_total = self.buffered_counter(
            Counter(
                "cnnswarm_http_requests_total",
                "HTTP requests answered, by route template, method and status",
                ["route", "method", "status"],
                registry=self.registry,
            )
        )

        @app.after_request
        def _answered(response: Response) -> Response:
            rule = request.url_rule
            route = rule.rule if rule is not None else UNMATCHED_ROUTE
            self.count_request(route, request.method, response.status_code)
            return response

        @app.get("/metrics")
        def metrics() -> Response:
            return Response(self.exposition(), mimetype=None, content_type=CONTENT_TYPE_LATEST)

    def count_request(self, route: str, method: str, status: int) -> None:
        """Count one answered request (``route``: the URL rule it matched); a no-op until
        ``install`` (and with metrics off)."""
        if self._requests_total is not None:
            known = method if method in KNOWN_METHODS else "OTHER"
            self._requests_total.inc(route, known, str(status))
