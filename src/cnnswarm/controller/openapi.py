"""The OpenAPI document of /api/v1, generated from the routes themselves.

Each v1 view carries its own description through ``@doc(...)``; ``build_openapi(app)`` walks
Flask's URL map, so a route that exists is documented and a documented route exists. A request
body declared as a pydantic model is documented by its ``model_json_schema()``: the schema and
the validation are one declaration.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask
from pydantic import BaseModel

from cnnswarm.store.job_records import JobState

F = TypeVar("F", bound=Callable[..., Any])

# A request body: a pydantic model (its model_json_schema) or, not yet migrated, a schema dict.
Body = type[BaseModel] | dict[str, Any]

ERROR = {
    "type": "object",
    "required": ["exception", "error"],
    "properties": {
        "exception": {"type": "string"},
        "error": {"type": "string"},
        "field": {"type": "string"},
    },
}

METRICS = {"type": "array", "items": {"type": "object"}}

JOB = {
    "type": "object",
    "required": ["id", "state", "progress", "attempt", "model_id", "metrics"],
    "properties": {
        "id": {"type": "string"},
        "model_id": {"type": "string"},
        "dataset": {"type": "string"},
        "model_type": {"type": "string"},
        "state": {"type": "string", "enum": [state.value for state in JobState]},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "epoch": {"type": "integer"},
        "metrics": METRICS,
        "trainer": {"type": ["string", "null"]},
        "attempt": {"type": "integer"},
        "error": {"type": ["string", "null"]},
        "queue_position": {"type": ["integer", "null"]},
        "waiting_reason": {"type": ["string", "null"]},
        "created_at": {"type": "number"},
        "started_at": {"type": ["number", "null"]},
        "finished_at": {"type": ["number", "null"]},
    },
}

MODEL = {
    "type": "object",
    "required": ["id", "model_type", "classes"],
    "properties": {
        "id": {"type": "string"},
        "model_type": {"type": "string"},
        "dataset": {"type": "string"},
        "classes": {"type": "array", "items": {"type": "string"}},
        "metrics": METRICS,
        "train_opts": {"type": "object"},
        "created": {"type": "number"},
        "aliases": {"type": "array", "items": {"type": "string"}},
    },
}

DATASET = {
    "type": "object",
    "required": ["id", "name"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "builtin": {"type": "boolean"},
        "classes": {"type": "array", "items": {"type": "string"}},
        "num_train": {"type": "integer"},
        "num_test": {"type": "integer"},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}

CLASS_SCORE = {
    "type": "object",
    "required": ["class_idx", "class_tag", "probability"],
    "properties": {
        "class_idx": {"type": "integer"},
        "class_tag": {"type": "string"},
        "probability": {"type": "number"},
    },
}

PREDICTIONS = {
    "type": "object",
    "required": ["predictions"],
    "properties": {
        "predictions": {
            "type": "array",
            "items": {
                **CLASS_SCORE,
                "properties": {
                    **CLASS_SCORE["properties"],  # type: ignore[dict-item]
                    "top_k": {"type": "array", "items": CLASS_SCORE},
                },
            },
        }
    },
}

PREDICT_REQUEST = {
    "type": "object",
    "properties": {
        "instances": {"type": "array", "items": {"type": "string"}},
        "examples": {"type": "array"},
        "top_k": {"type": "integer", "minimum": 1},
    },
}

TRAINER = {
    "type": "object",
    "required": ["id", "url", "state", "slots"],
    "properties": {
        "id": {"type": "string"},
        "url": {"type": "string"},
        "state": {"type": "string"},
        "slots": {"type": "integer"},
        "running_jobs": {"type": "array", "items": {"type": "string"}},
        "last_heartbeat": {"type": "number"},
    },
}


def doc(
    summary: str,
    *,
    body: Body | None = None,
    body_type: str = "application/json",
    responses: dict[int, dict[str, Any] | None] | None = None,
    query: dict[str, dict[str, Any]] | None = None,
    headers: dict[str, dict[str, Any]] | None = None,
) -> Callable[[F], F]:
    """Attach an OpenAPI description to a view: request body schema, response schemas by
    status (None = no body), query parameters and headers."""

    def decorate(view: F) -> F:
        view._openapi = {  # type: ignore[attr-defined]
            "summary": summary,
            "body": body,
            "body_type": body_type,
            "responses": responses or {200: None},
            "query": query or {},
            "headers": headers or {},
        }
        return view

    return decorate


def _response(schema: dict[str, Any] | None, description: str) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body_schema(body: Body, components: dict[str, Any]) -> dict[str, Any]:
    """``body``'s JSON schema; the models it refers to go to ``components``."""
    if isinstance(body, dict):
        return body
    schema = body.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    return schema


def build_openapi(app: Flask, prefix: str = "/api/v1") -> dict[str, Any]:
    """The OpenAPI 3.1 document for every documented route under ``prefix``."""
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.rule.startswith(prefix):
            continue
        view = app.view_functions[rule.endpoint]
        spec: dict[str, Any] | None = getattr(view, "_openapi", None)
        if spec is None:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            parameters: list[dict[str, Any]] = [
                {"name": arg, "in": "path", "required": True, "schema": {"type": "string"}}
                for arg in sorted(rule.arguments)
            ]
            parameters += [
                {"name": name, "in": "query", "required": False, "schema": schema}
                for name, schema in spec["query"].items()
            ]
            parameters += [
                {"name": name, "in": "header", "required": False, "schema": schema}
                for name, schema in spec["headers"].items()
            ]
            responses = {
                str(status): _response(schema, "success" if status < 400 else "error")
                for status, schema in spec["responses"].items()
            }
            for status in (400, 404):
                responses.setdefault(str(status), _response(ERROR, "error"))
            operation: dict[str, Any] = {
                "summary": spec["summary"],
                "operationId": f"{method.lower()}_{rule.endpoint.replace('.', '_')}",
                "parameters": parameters,
                "responses": responses,
            }
            if spec["body"] is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        spec["body_type"]: {"schema": _body_schema(spec["body"], components)}
                    },
                }
            paths.setdefault(path, {})[method.lower()] = operation
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "cnn-swarm controller API", "version": "1"},
        "paths": paths,
    }
    if components:
        document["components"] = {"schemas": components}
    return document
