"""The controller app factory.

``create_app(settings)`` opens the stores and wires the routes (and ``/metrics``, see
``controller.metrics``); it starts nothing.
``create_app(settings, start_background=True)`` (what gunicorn runs in each worker) also
starts the scheduler thread and registers its stop (``lifecycle.on_stop``: the leader lease is
handed over when the worker exits). ``/readyz`` answers 503 until the database answered and,
with ``start_background``, the scheduler runs.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from sqlalchemy import text

from cnnswarm.config import Settings, load_settings
from cnnswarm.controller import (
    api_docs,
    dataset_samples_api,
    datasets_api,
    internal,
    jobs_api,
    model_files_api,
    models_api,
    seed_routes,
    sweeps_api,
    ui,
)
from cnnswarm.controller.context import ControllerContext, ctx
from cnnswarm.controller.datasets import DatasetService
from cnnswarm.controller.event_loop import count_requests
from cnnswarm.controller.metrics import ControllerMetrics, database_collector
from cnnswarm.controller.openapi import build_openapi
from cnnswarm.controller.predict_path import answer_json_predicts_first
from cnnswarm.controller.predictor import Predictor
from cnnswarm.controller.scheduler import Scheduler
from cnnswarm.exposition import AppMetrics
from cnnswarm.http import register_error_handlers
from cnnswarm.lifecycle import on_stop
from cnnswarm.store import open_stores

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, start_background: bool = False) -> Flask:
    """Build a controller app (``settings`` default: from the environment)."""
    settings = settings if settings is not None else load_settings()
    if settings.subnet_train:
        log.info("SUBNET_TRAIN is set but unused: trainers register themselves, nothing scans")
    stores = open_stores(settings.resolved_database_url, settings.home_dir)
    swept = stores.artifacts.sweep_temp_files()
    if swept:
        log.info("removed %d temp file(s) left by interrupted writes", swept)
    app_metrics = AppMetrics(enabled=settings.metrics_enabled)
    metrics = ControllerMetrics(app_metrics)
    app_metrics.add_scrape_collector(database_collector(stores, settings.lease_timeout_s))
    context = ControllerContext(
        settings=settings,
        stores=stores,
        datasets=DatasetService(settings, stores),
        scheduler=Scheduler(settings, stores, metrics),
        predictor=Predictor(settings, metrics),
        metrics=metrics,
    )
    app = Flask(__name__)
    app.wsgi_app = count_requests(  # type: ignore[method-assign,assignment]
        answer_json_predicts_first(app, context, app_metrics)
    )
    # Larger bodies get 413 from werkzeug before they are read.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.extensions["cnnswarm"] = context
    register_error_handlers(app)
    app_metrics.install(app)
    for blueprint in (
        seed_routes.bp,
        jobs_api.bp,
        sweeps_api.bp,
        models_api.bp,
        model_files_api.bp,
        datasets_api.bp,
        dataset_samples_api.bp,
        internal.bp,
        api_docs.bp,
        ui.bp,
    ):
        app.register_blueprint(blueprint)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "alive", "role": "controller"}

    @app.get("/readyz")
    def readyz() -> Response:
        current = ctx()
        ready = current.ready and _database_answers(current)
        leader = ready and current.scheduler.leads_here()
        response = jsonify({"ready": ready, "role": "controller", "leader": leader})
        response.status_code = 200 if ready else 503
        return response

    @app.get("/api/v1/openapi.json")
    def openapi() -> dict[str, Any]:
        return build_openapi(app)

    if start_background:
        context.scheduler.start()
        on_stop(app, context.scheduler.stop)
        app_metrics.start_flushing(app)
    context.ready = True
    return app


def _database_answers(context: ControllerContext) -> bool:
    try:
        with context.stores.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        log.exception("readiness check: the database does not answer")
        return False
    return True
