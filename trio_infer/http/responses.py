"""Replies, and the one place where errors become HTTP responses."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..core import errors
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


class ErrorShape(enum.Enum):
    """Which API's error body a request gets: the pipeline picks it by route, and on `POST /embed` by
    the body's shape."""

    NATIVE = "native"  # {"error": kind, "detail"}
    OPENAI = "openai"  # {"error": {"message", "type", "param", "code"}}
    TEI = "tei"  # {"error": message, "error_type"}, with TEI's statuses


def tei_status(error: ServiceError) -> tuple[int, str]:
    """TEI's status and `error_type` for `error` (router/src/http/server.rs): overload is 429
    Overloaded, a failed forward pass 424 Backend, a text over the token limit 422 Validation, an
    empty input 400 Empty, not ready or draining 503 Unhealthy. Other client errors keep their status
    as Validation (TEI has no 401/404/408/413/504 of its own), other server errors as Backend."""
    if isinstance(error, errors.Overloaded):
        return 429, "Overloaded"
    if isinstance(error, errors.Unavailable):
        return 503, "Unhealthy"
    if isinstance(error, errors.InferenceFailed):
        return 424, "Backend"
    if isinstance(error, errors.InputTooLong):
        return 422, "Validation"
    if isinstance(error, errors.EmptyInput):
        return 400, "Empty"
    if error.status >= 500:
        return error.status, "Backend"
    return error.status, "Validation"


def error_body(error: ServiceError, *, shape: ErrorShape) -> dict[str, Any]:
    """`{"error", "detail"}` for the native API; OpenAI's nested shape for `/v1` routes; TEI's
    `{"error", "error_type"}` on TEI's routes and bodies."""
    if shape is ErrorShape.TEI:
        return {"error": error.detail, "error_type": tei_status(error)[1]}
    if shape is ErrorShape.OPENAI:
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


def error_reply(error: ServiceError, *, shape: ErrorShape) -> Reply:
    """The one place an error becomes a response: its body in `shape`, its status (TEI's own on TEI's
    shape), and its headers (Retry-After on every shape, TEI's 429 included)."""
    headers = [(name.lower().encode(), value.encode()) for name, value in error_headers(error).items()]
    status = tei_status(error)[0] if shape is ErrorShape.TEI else error.status
    return Reply(orjson.dumps(error_body(error, shape=shape)), status, headers=headers)
