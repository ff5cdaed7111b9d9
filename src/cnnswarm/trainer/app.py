"""The trainer's Flask app: the seed's trainer routes plus dispatch, cancel, health and
``/metrics`` (``trainer.metrics``).

``create_app(settings)`` builds the app and its ``TrainerService`` (``app.extensions
["trainer_service"]``) and starts nothing; ``create_app(settings, start_background=True)`` (what
gunicorn runs, one worker) also starts the service: the heartbeat agent and the job watcher.

Readiness: ``/readyz`` is 200 once the service has started its job fork server and announces
itself, i.e. once the trainer can accept jobs. It does not wait for the controller: an
orchestrator that restarts "unready" trainers would otherwise kill running jobs whenever the
controller is away; ``controller_reachable`` in the body (and in ``/status``) says whether the
last heartbeat got through.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Flask, Response, jsonify, request

from cnnswarm.config import Settings, load_settings
from cnnswarm.errors import InvalidInput, NotFound
from cnnswarm.exposition import AppMetrics
from cnnswarm.http import json_body, register_error_handlers, require_token
from cnnswarm.lifecycle import on_stop
from cnnswarm.protocol import Dispatch, DispatchAnswer, parse
from cnnswarm.trainer.agent import HeartbeatAgent, announced_url, make_trainer_id
from cnnswarm.trainer.controller_api import ControllerClient
from cnnswarm.trainer.metrics import TrainerMetrics, service_collector
from cnnswarm.trainer.outcome import StopReason
from cnnswarm.trainer.runner import JobRunner

log = logging.getLogger(__name__)

# How often the watcher drains progress and reaps finished children.
WATCH_INTERVAL_S = 0.2

INDEX_HTML = (
    "<!doctype html><title>cnn-swarm trainer</title>"
    "<h1>cnn-swarm trainer is running</h1>"
    '<p>See <a href="/status">/status</a>.</p>'
)


class TrainerService:
    """A trainer's moving parts: the job runner, the heartbeat agent and the watcher thread."""

    def __init__(self, settings: Settings, metrics: TrainerMetrics | None = None) -> None:
        self.settings = settings
        self.trainer_id = make_trainer_id(settings)
        self.url = announced_url(settings)
        self.client = ControllerClient(settings.resolved_controller_url, settings.api_token)
        self.runner = JobRunner(settings, self.client, metrics=metrics)
        self.agent = HeartbeatAgent(
            settings, self.runner, self.client, trainer_id=self.trainer_id, url=self.url
        )
        self.started = False
        self.ready = False
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        """Start the job watcher, then (in the background) the job fork server and the
        heartbeat agent; ``ready`` turns true once this trainer announces itself
        (idempotent)."""
        if self.started:
            return
        self.started = True
        self._watcher = threading.Thread(target=self._watch, name="job-watcher", daemon=True)
        self._watcher.start()
        threading.Thread(target=self._boot, name="trainer-boot", daemon=True).start()

    def _boot(self) -> None:
        # Announce this trainer only once its fork server has imported torch: a dispatch is
        # then answered in milliseconds, where a slow answer would cost the job a lease.
        try:
            self.runner.warm_up()
        except Exception:
            log.exception("the job fork server did not start; jobs will start it themselves")
        if self._stop.is_set():
            return
        self.agent.start()
        self.ready = True
        log.info(
            "trainer %s at %s serving %d slot(s); controller %s",
            self.trainer_id,
            self.url,
            self.runner.slots,
            self.settings.resolved_controller_url,
        )

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                self.runner.poll()
            except Exception:  # the watcher must outlive any one bad round
                log.exception("job watcher round failed")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the agent, every job and the watcher."""
        self.agent.stop(timeout)
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout)
        self.runner.shutdown(timeout)
        self.started = self.ready = False

    def status(self) -> dict[str, Any]:
        """The seed's ``/status`` body plus this trainer's identity and capacity."""
        return {
            "jobs": self.runner.status(),
            "trainer_id": self.trainer_id,
            "url": self.url,
            "slots": self.runner.slots,
            "free_slots": self.runner.free_slots(),
            "controller_reachable": self.agent.controller_reachable,
        }


def create_app(settings: Settings | None = None, *, start_background: bool = False) -> Flask:
    """Build the trainer app (``settings`` default: from the environment).

    With ``start_background`` the service's threads start now; run it under one gunicorn
    worker without ``--preload`` (threads do not survive a fork).
    """
    settings = settings if settings is not None else load_settings()
    app_metrics = AppMetrics(enabled=settings.metrics_enabled)
    metrics = TrainerMetrics(app_metrics.registry, enabled=settings.metrics_enabled)
    service = TrainerService(settings, metrics)
    app_metrics.add_scrape_collector(service_collector(service))
    app = Flask(__name__)
    app.extensions["trainer_service"] = service
    register_error_handlers(app)
    app_metrics.install(app)
    token_required = require_token(lambda: settings.api_token)

    @app.get("/")
    def index() -> Response:
        return Response(INDEX_HTML, mimetype="text/html")

    @app.get("/type")
    def type_() -> Response:
        return jsonify({"type": "train"})

    @app.get("/status")
    def status() -> Response:
        return jsonify(service.status())

    @app.post("/train")
    @token_required
    def train() -> tuple[Response, int]:
        try:
            body = json_body()
        except InvalidInput:
            body = {}  # not a JSON object: the controller says what is wrong with it
        if "job_id" not in body:
            return _forward_seed_train(service)
        dispatch = parse(Dispatch, body)
        started = service.runner.start(dispatch).dispatch
        answer = DispatchAnswer(
            status={"initiated": True},
            job_id=started.job_id,
            rendezvous_port=started.master_port if started.is_gang and started.rank == 0 else None,
        )
        return jsonify(answer.model_dump(mode="json", exclude_none=True)), 202

    @app.post("/jobs/<job_id>/cancel")
    @token_required
    def cancel(job_id: str) -> Response:
        job = service.runner.job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} is not running on this trainer")
        stopping = service.runner.stop(job_id, StopReason.CANCELLED)
        return jsonify({"job_id": job_id, "cancelled": stopping, "state": job.phase.value})

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "alive"})

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        body = {
            "ready": service.ready,
            "free_slots": service.runner.free_slots(),
            "controller_reachable": service.agent.controller_reachable,
        }
        return jsonify(body), 200 if service.ready else 503

    if start_background:
        service.start()
        on_stop(app, service.stop)
        app_metrics.start_flushing(app)
    return app


def _forward_seed_train(service: TrainerService) -> tuple[Response, int]:
    """A seed ``/train`` body sent to a trainer goes, byte for byte, to the controller's seed
    ``/train``, which judges it by its one rule set; its answer comes back as it is."""
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower() in ("content-type", "idempotency-key")
    }
    answer = service.client.forward_seed_train(request.get_data(cache=True), headers)
    forwarded = Response(answer.content, content_type=answer.headers.get("Content-Type"))
    return forwarded, answer.status_code
