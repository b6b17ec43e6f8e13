"""JSON responses, and the one place where errors become HTTP responses."""

from __future__ import annotations

from typing import Any

import orjson
from quart import Response

from ..core.errors import ServiceError

_JSON = "application/json"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """orjson, with numpy arrays serialised natively (a 384-float vector in ~20 us, not ~450 us)."""
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, mimetype=_JSON)


def error_body(error: ServiceError, *, openai: bool) -> dict[str, Any]:
    """`{"error", "detail"}` for the native API; OpenAI's nested shape for `/v1` routes."""
    if openai:
        return {
            "error": {
                "message": error.detail,
                "type": error.openai_type,
                "param": error.param,
                "code": error.code or error.kind,
            }
        }
    return {"error": error.kind, "detail": error.detail}


def error_headers(error: ServiceError) -> dict[str, str]:
    headers = {}
    if error.retry_after_header is not None:
        headers["Retry-After"] = error.retry_after_header
    if error.close_connection:
        headers["Connection"] = "close"
    return headers


def error_response(error: ServiceError, *, openai: bool = False) -> Response:
    return json_response(error_body(error, openai=openai), error.status, error_headers(error))
