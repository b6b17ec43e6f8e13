"""Reading a JSON request body into a pydantic model, with every failure a clear 4xx."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from quart import Request
from werkzeug.exceptions import RequestEntityTooLarge

from ..core.errors import InvalidJSON, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from .schemas import describe_validation_error

M = TypeVar("M", bound=BaseModel)


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


async def read_model(request: Request, model: type[M], context: Mapping[str, object] | None = None) -> M:
    """The body parsed and validated as `model`.

    Raises UnsupportedMediaType (415) for a non-JSON content type, PayloadTooLarge (413) past the
    app's MAX_CONTENT_LENGTH (checked against Content-Length before reading), InvalidJSON (400) for
    bytes that are not JSON (including invalid UTF-8 and lone surrogates), ValidationFailed (422).
    """
    check_content_type(request.mimetype)
    try:
        data = await request.get_data(cache=False, as_text=False)
    except RequestEntityTooLarge as error:
        raise PayloadTooLarge(f"the body exceeds {request.max_content_length} bytes") from error
    return parse_model(data, model, context)


def check_content_type(mimetype: str) -> None:
    """Raise UnsupportedMediaType unless `mimetype` (no parameters) is JSON."""
    if not _is_json(mimetype):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {mimetype or 'nothing'!r}")


def parse_model(data: bytes | str, model: type[M], context: Mapping[str, object] | None = None) -> M:
    """`data` parsed as JSON and validated as `model` with `context` (InvalidJSON 400, ValidationFailed
    422)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise InvalidJSON(f"the body is not valid JSON: {error.msg}") from error
    try:
        return model.model_validate(value, context=context)
    except ValidationError as error:
        detail, field = describe_validation_error(error)
        raise ValidationFailed(detail, param=field) from error
