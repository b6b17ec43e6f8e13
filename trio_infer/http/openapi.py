"""The OpenAPI 3.1 document, generated from the route table: the routes that really answer, with their
pydantic request and response models (`model_json_schema`) and their handlers' docstrings."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel

from ..core.priority import LABELS
from .access import PRIORITY_HEADER
from .routes import Route

_REF = "#/components/schemas/{model}"
_PRIORITY_PARAMETER = {
    "name": PRIORITY_HEADER,
    "in": "header",
    "required": False,
    "description": "the request's class (case-insensitive); absent: the caller's default",
    "schema": {"type": "string", "enum": list(LABELS)},
}


def build(
    routes: Iterable[Route], *, title: str, version: str, description: str, bearer: bool
) -> dict[str, Any]:
    """The document for `routes` (those with `documented`). `bearer`: the server requires an API key,
    so every route that is not open declares the bearer scheme."""
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not route.documented:
            continue
        operation = _operation(route, schemas)
        if bearer and not route.open:
            operation["security"] = [{"bearer": []}]
        paths.setdefault(route.template, {})[route.method.lower()] = operation
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if bearer:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document


def _operation(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    doc = inspect.getdoc(route.handler) or ""
    summary, _, rest = doc.partition("\n")
    operation: dict[str, Any] = {
        "operationId": f"{route.method.lower()}_{route.handler.__name__}",
        "summary": route.summary or summary.strip(),
    }
    if route.description or rest.strip():
        operation["description"] = route.description or rest.strip()
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_parameters(route.template)
    ]
    if route.body is not None:  # the pipeline reads X-Priority on routes with a body
        parameters.append({**_PRIORITY_PARAMETER})
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            # No route accepts a request without its body (415 or 400): clients and fuzzers should know.
            "required": True,
            "content": {"application/json": {"schema": _schema(route.body, "validation", schemas)}},
        }
    responses: dict[str, Any] = {}
    for status, model in sorted({200: None, **route.responses}.items()):
        response: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if model is not None:
            response["content"] = {"application/json": {"schema": _schema(model, "serialization", schemas)}}
        elif status == 200:
            response["content"] = {route.content_type: {"schema": {"type": "string"}}}
        responses[str(status)] = response
    operation["responses"] = responses
    return operation


def _schema(model: type[BaseModel], mode: str, schemas: dict[str, Any]) -> dict[str, Any]:
    """The model's schema inline (with its title); the models it refers to go to components."""
    schema = model.model_json_schema(ref_template=_REF, mode=mode)  # type: ignore[arg-type]
    schemas.update(schema.pop("$defs", {}))
    return schema


def _path_parameters(template: str) -> list[str]:
    return [part[1:-1] for part in template.split("/") if part.startswith("{") and part.endswith("}")]
