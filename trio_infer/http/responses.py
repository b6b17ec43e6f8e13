"""Replies, and the one place where errors become HTTP responses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ..core.errors import ServiceError, Unauthorized

JSON = b"application/json"


@dataclass(slots=True)
class Reply:
    """What a handler answers: status, body bytes, content type and any further headers."""

    body: bytes
    status: int = 200
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def json_reply(body: Any, status: int = 200) -> Reply:
    """orjson, with numpy arrays serialised natively (a 384-float vector in ~20 us, not ~450 us)."""
    return Reply(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status)


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
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"  # RFC 9110: a 401 names the scheme it wants
    if error.close_connection:
        headers["Connection"] = "close"
    return headers


def error_reply(error: ServiceError, *, openai: bool) -> Reply:
    headers = [(name.lower().encode(), value.encode()) for name, value in error_headers(error).items()]
    return Reply(orjson.dumps(error_body(error, openai=openai)), error.status, headers=headers)
