"""Reading a JSON request body into a pydantic model, with every failure a clear 4xx."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from ..core.errors import InvalidJSON, UnsupportedMediaType, ValidationFailed
from .schemas import describe_validation_error

M = TypeVar("M", bound=BaseModel)


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header value, lower-case, without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_content_type(content_type: str | None) -> None:
    """Raise UnsupportedMediaType (415) unless the Content-Type header value is JSON."""
    mimetype = media_type(content_type)
    if not _is_json(mimetype):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {mimetype or 'nothing'!r}")


def parse_model(data: bytes, model: type[M], context: Mapping[str, object] | None = None) -> M:
    """`data` parsed as JSON and validated as `model` (with pydantic's validation `context`, if any).

    Raises InvalidJSON (400) for an empty body, bytes that are not UTF-8, and text that is not JSON
    (including lone surrogates, nesting or numbers beyond the parser); ValidationFailed (422) for JSON
    that is not a valid `model`.
    """
    return validate_model(load_json(data), model, context)


def load_json(data: bytes) -> object:
    """`data` parsed as JSON; raises InvalidJSON (400) as `parse_model` says."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise InvalidJSON(_json_problem(data, error)) from error


def validate_model(value: object, model: type[M], context: Mapping[str, object] | None = None) -> M:
    """Parsed JSON `value` validated as `model`; raises ValidationFailed (422)."""
    try:
        return model.model_validate(value, context=context)
    except ValidationError as error:
        detail, field = describe_validation_error(error)
        raise ValidationFailed(detail, param=field) from error


def _json_problem(data: bytes, error: orjson.JSONDecodeError) -> str:
    if not data.strip():
        return "the body is empty: send a JSON object"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "the body is not valid UTF-8"
    return f"the body is not valid JSON: {error.msg}"
