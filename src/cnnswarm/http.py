"""What both Flask apps share at the HTTP boundary: JSON errors, the API token, JSON bodies.

Every ``CnnSwarmError`` becomes its status and JSON body here; an unexpected exception logs
its traceback and answers a generic 500 with a request id, never a traceback.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

import orjson
from flask import Flask, Response, jsonify, request
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import HTTPException

from cnnswarm.errors import (
    CnnSwarmError,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
)

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# JSON bodies are parsed in memory; larger payloads (datasets) go as multipart files.
MAX_JSON_BYTES = 64 * 1024 * 1024


def error_response(error: CnnSwarmError) -> Response:
    """The JSON response for a known error (with ``Retry-After`` when it asks for one)."""
    response = jsonify(error.to_json())
    response.status_code = error.status
    if isinstance(error, Overloaded):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def register_error_handlers(app: Flask) -> None:
    """Map every exception to JSON: known errors keep their status, the rest become 500."""

    @app.errorhandler(CnnSwarmError)
    def _known(error: CnnSwarmError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        response = jsonify(
            {"exception": error.name.replace(" ", ""), "error": error.description or error.name}
        )
        response.status_code = error.code or 500
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        request_id = uuid.uuid4().hex[:12]
        log.exception(
            "unhandled error (request id %s) on %s %s", request_id, request.method, request.path
        )
        response = jsonify(
            {
                "exception": "InternalError",
                "error": "internal server error; the request id is in the server log",
                "request_id": request_id,
            }
        )
        response.status_code = 500
        return response


def json_body() -> dict[str, Any]:
    """The request's JSON object, or ``InvalidInput`` saying why it is not one."""
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise PayloadTooLarge(
            f"JSON bodies are limited to {MAX_JSON_BYTES // (1024 * 1024)} MB; "
            "send images as multipart files"
        )
    raw = request.get_data(cache=True)
    if not raw:
        raise InvalidInput("the request needs a JSON object body")
    try:
        # orjson parses large numeric arrays (predict examples) several times faster.
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # The standard parser decides the rest (it also reads NaN and huge integers, which
        # the routes then refuse by field name).
        data = request.get_json(silent=True, force=True)
    if data is None:
        raise InvalidInput("the request body is not valid JSON")
    if not isinstance(data, dict):
        raise InvalidInput(f"the JSON body must be an object, got {type(data).__name__}")
    return data


def uploaded_file(limit_bytes: int, what: str) -> FileStorage:
    """This request's multipart field ``file``: 413 past ``limit_bytes`` (checked before the
    body is read), 400 naming ``what`` should be sent when the field is missing."""
    if request.content_length is not None and request.content_length > limit_bytes:
        raise PayloadTooLarge(f"uploads are limited to {limit_bytes // (1024 * 1024)} MB")
    upload = request.files.get("file")
    if upload is None:
        raise InvalidInput(f"send {what} as multipart field 'file'", field="file")
    return upload


def token_matches(expected: str, header: str | None) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header."""
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer ") :].encode(), expected.encode())


def require_token(get_token: Callable[[], str]) -> Callable[[F], F]:
    """Decorator: when a token is configured, the route needs ``Authorization: Bearer <token>``."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            expected = get_token()
            if expected and not token_matches(expected, request.headers.get("Authorization")):
                raise Unauthorized("this route needs the header 'Authorization: Bearer <token>'")
            return view(*args, **kwargs)

        return cast(F, wrapped)

    return decorate


def auth_headers(token: str) -> dict[str, str]:
    """Headers for calls between roles (empty when no token is configured)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
