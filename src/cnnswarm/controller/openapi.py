"""The OpenAPI document of /api/v1, generated from the routes and the models that validate them.

Each v1 view carries its own description through ``@doc(...)``; ``build_openapi(app)`` walks
Flask's URL map, so a route that exists is documented and a documented route exists. Every
schema in the document is a pydantic model's ``model_json_schema()`` (``api_schemas``,
``job_requests.JobRequest``, ``model_import.ImportRequest``): a body or an answer is a
``$ref`` to its model under ``components/schemas``, where the models it refers to (``$defs``)
go too; a query string's or a header model's fields become parameters. Nothing is written by
hand, so the document says what the code checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from flask import Flask
from pydantic import BaseModel, Field, TypeAdapter

from cnnswarm.controller.api_schemas import ErrorBody
from cnnswarm.protocol import SafeId

F = TypeVar("F", bound=Callable[..., Any])

REF_TEMPLATE = "#/components/schemas/{model}"
# Statuses every operation may answer with an ErrorBody (a bad request, an unknown id).
ERROR_STATUSES = (400, 404)
# Path arguments: an id (of a job, model, alias or dataset) unless the rule converts them.
PATH_CONVERTERS: dict[str | None, Any] = {
    None: SafeId,
    "string": SafeId,
    "int": Annotated[int, Field(ge=0)],
}


def doc(
    summary: str,
    *,
    body: type[BaseModel] | None = None,
    form: type[BaseModel] | None = None,
    responses: Mapping[int, type[BaseModel] | None] | None = None,
    query: type[BaseModel] | None = None,
    headers: type[BaseModel] | None = None,
) -> Callable[[F], F]:
    """Attach an OpenAPI description to a view: the models of its JSON body and of its
    multipart form (either or both), the answer's model by status (None = no JSON answer) and
    the models of its query string and headers."""

    def decorate(view: F) -> F:
        view._openapi = {  # type: ignore[attr-defined]
            "summary": summary,
            "body": body,
            "form": form,
            "responses": dict(responses or {200: None}),
            "query": query,
            "headers": headers,
        }
        return view

    return decorate


def model_schemas(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """``model``'s schema and those it refers to, by component name, with refs pointing into
    ``components/schemas``."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    referred: dict[str, dict[str, Any]] = schema.pop("$defs", {})
    return {**referred, model.__name__: schema}


class _Components:
    """The document's ``components/schemas``, filled as operations refer to models."""

    def __init__(self) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}

    def ref(self, model: type[BaseModel]) -> dict[str, Any]:
        """A reference to ``model``'s schema, registered with those it refers to."""
        self._register(model_schemas(model))
        return {"$ref": REF_TEMPLATE.format(model=model.__name__)}

    def fields(self, model: type[BaseModel]) -> dict[str, Any]:
        """``model``'s own schema, unregistered (its fields become parameters); the schemas
        it refers to are registered."""
        schemas = model_schemas(model)
        schema = schemas.pop(model.__name__)
        self._register(schemas)
        return schema

    def _register(self, schemas: dict[str, dict[str, Any]]) -> None:
        for name, schema in schemas.items():
            if self.schemas.setdefault(name, schema) != schema:
                raise ValueError(f"two different schemas are named {name!r}")


def _absent_not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's ``X | None`` as ``X``: an optional parameter is absent, never null."""
    options = schema.get("anyOf", [])
    rest = [option for option in options if option != {"type": "null"}]
    if len(rest) != 1 or len(rest) == len(options):
        return schema
    simplified = {k: v for k, v in schema.items() if k != "anyOf"}
    if simplified.get("default", 0) is None:
        del simplified["default"]
    return {**rest[0], **simplified}


def _parameters(
    model: type[BaseModel] | None, where: str, components: _Components
) -> list[dict[str, Any]]:
    if model is None:
        return []
    schema = components.fields(model)
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": where,
            "required": name in required,
            "schema": _absent_not_null(field_schema),
        }
        for name, field_schema in schema["properties"].items()
    ]


_PATH_ARGUMENT = re.compile(r"<(?:([^:<>]+):)?([^<>]+)>")


def _path_arguments(rule: str) -> list[tuple[str | None, str]]:
    """``(converter or None, name)`` of each argument in a Flask rule."""
    return [(match[1], match[2]) for match in _PATH_ARGUMENT.finditer(rule)]


def _response(schema: dict[str, Any] | None, description: str) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def build_openapi(app: Flask, prefix: str = "/api/v1") -> dict[str, Any]:
    """The OpenAPI 3.1 document for every documented route under ``prefix``."""
    paths: dict[str, dict[str, Any]] = {}
    components = _Components()
    path_schemas = {name: TypeAdapter(kind).json_schema() for name, kind in PATH_CONVERTERS.items()}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.rule.startswith(prefix):
            continue
        view = app.view_functions[rule.endpoint]
        spec: dict[str, Any] | None = getattr(view, "_openapi", None)
        if spec is None:
            continue
        path = _PATH_ARGUMENT.sub(r"{\2}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            parameters: list[dict[str, Any]] = [
                {"name": arg, "in": "path", "required": True, "schema": path_schemas[converter]}
                for converter, arg in sorted(_path_arguments(rule.rule), key=lambda c: c[1])
            ]
            parameters += _parameters(spec["query"], "query", components)
            parameters += _parameters(spec["headers"], "header", components)
            answers: dict[int, type[BaseModel] | None] = dict(spec["responses"])
            for status in ERROR_STATUSES:
                answers.setdefault(status, ErrorBody)
            responses = {
                str(status): _response(
                    None if model is None else components.ref(model),
                    "success" if status < 400 else "error",
                )
                for status, model in answers.items()
            }
            operation: dict[str, Any] = {
                "summary": spec["summary"],
                "operationId": f"{method.lower()}_{rule.endpoint.replace('.', '_')}",
                "parameters": parameters,
                "responses": responses,
            }
            content = {
                media: {"schema": components.ref(model)}
                for media, model in (
                    ("application/json", spec["body"]),
                    ("multipart/form-data", spec["form"]),
                )
                if model is not None
            }
            if content:
                operation["requestBody"] = {"required": True, "content": content}
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "cnn-swarm controller API", "version": "1"},
        "paths": paths,
        "components": {"schemas": dict(sorted(components.schemas.items()))},
    }
