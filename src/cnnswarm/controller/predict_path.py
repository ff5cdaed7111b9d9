"""JSON predict requests answered in front of Flask (issue 10).

Under load, most of a predict request's CPU time went to the machinery around the model, not
to the model: in a gevent worker at c=32 (``bench/serving_peers.py``'s request, py-spy), Flask's
request context, routing, hooks and response objects took as much of the worker as the predict
itself (decoding, queueing, the answer), and the forward passes a third. A JSON predict is the
request that clients send by the thousand, so this WSGI layer, which wraps the Flask app,
answers it without that machinery, when it is exactly the common case:

- ``POST`` to the predict route (the app's own URL map decides, so the rule is written once, in
  ``models_api``), no ``SCRIPT_NAME``, no query string but ``top_k=<digits>``;
- ``Content-Type: application/json``, a ``Content-Length`` within the JSON and upload limits,
  and a body that is a JSON object.

It runs what the Flask route runs (``models_api.load_model``, ``json_inputs``,
``predict_answer``) and counts the request in the same series: predict's own
(``ControllerMetrics.predict_request``) and ``cnnswarm_http_requests_total`` under the route's
rule.

Everything else is Flask's, answered exactly as before:

- a request of any other shape (multipart images, another query parameter, a chunked body, any
  other route) is passed on untouched;
- a request that fails before its forward pass (an unknown model, a body that is not JSON or
  breaks a rule) is passed on whole, its body re-wrapped: nothing ran and nothing was counted
  yet, so Flask checks it again and answers with its usual error;
- an error from the forward pass or its queue (``Overloaded``: 503 with ``Retry-After``) is
  answered by the app's error handlers, in a request context of its own, without running
  anything again.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import orjson
from flask import Flask
from werkzeug.exceptions import HTTPException
from werkzeug.routing import MapAdapter, RequestRedirect
from werkzeug.wsgi import get_content_length

from cnnswarm.controller.context import ControllerContext
from cnnswarm.controller.models_api import json_inputs, load_model, predict_answer
from cnnswarm.exposition import AppMetrics
from cnnswarm.http import MAX_JSON_BYTES

PREDICT_ENDPOINT = "models.predict"
_TOP_K_QUERY = re.compile(r"(?:top_k=(\d{1,6}))?")
_JSON_HEADERS = [("Content-Type", "application/json")]


def answer_json_predicts_first(
    app: Flask, context: ControllerContext, app_metrics: AppMetrics
) -> WSGIApplication:
    """``app.wsgi_app``, with JSON predict requests answered before Flask sees them (see the
    module docstring)."""
    flask_app = app.wsgi_app
    max_body = min(MAX_JSON_BYTES, context.settings.max_upload_bytes)
    routes: MapAdapter | None = None

    def predict_route(environ: WSGIEnvironment) -> tuple[str, str, str | None] | None:
        """(route rule, model id, top_k text) when ``environ`` is a predict request of the
        common shape, else None."""
        nonlocal routes
        if environ["REQUEST_METHOD"] != "POST" or environ.get("SCRIPT_NAME"):
            return None
        path: str = environ.get("PATH_INFO", "")
        content_type: str = environ.get("CONTENT_TYPE", "")
        if not path.endswith("/predict") or "HTTP_TRANSFER_ENCODING" in environ:
            return None
        if content_type.partition(";")[0].strip().lower() != "application/json":
            return None
        query = _TOP_K_QUERY.fullmatch(environ.get("QUERY_STRING", ""))
        if query is None:
            return None
        if routes is None:  # bound on first use: blueprints are registered after this wraps
            routes = app.url_map.bind("localhost")
        try:
            rule, args = routes.match(path, "POST", return_rule=True)
        except (HTTPException, RequestRedirect):
            return None
        if rule.endpoint != PREDICT_ENDPOINT:
            return None
        return rule.rule, str(args["model_id"]), query.group(1)

    def serve(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        route = predict_route(environ)
        length = get_content_length(environ)  # what Flask reads: None for chunked, 0 if invalid
        if route is None or length is None or not 0 < length <= max_body:
            return flask_app(environ, start_response)
        started = time.perf_counter()
        rule, model_id, top_k = route
        raw = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(raw)  # for Flask, should it take the request over
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                return flask_app(environ, start_response)
            loaded = load_model(context, model_id)
            inputs, k = json_inputs(loaded, body, {} if top_k is None else {"top_k": top_k})
        except Exception:
            return flask_app(environ, start_response)  # Flask answers with its usual error
        try:
            with context.metrics.predict_request(started) as observed:
                observed.model = loaded.model_id
                answer = predict_answer(context, loaded, inputs, k)
        except Exception as error:
            return _error_answer(app, environ, start_response, error)
        payload = orjson.dumps(answer) + b"\n"
        app_metrics.count_request(rule, "POST", 200)
        start_response("200 OK", [*_JSON_HEADERS, ("Content-Length", str(len(payload)))])
        return [payload]

    return serve


def _error_answer(
    app: Flask, environ: WSGIEnvironment, start_response: StartResponse, error: Exception
) -> Iterable[bytes]:
    """``error`` answered by the app's error handlers, as the Flask route's would be (its status
    counted under the route); called while the error is being handled, so that an unexpected
    one is logged with its traceback."""
    with app.request_context(environ):
        response = app.finalize_request(app.handle_user_exception(error))
    return response(environ, start_response)
