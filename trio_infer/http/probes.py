"""Cheap answers to `/health` and `/ready` ahead of the framework.

Kubernetes probes must answer within their timeout even while the event loop is busy taking in a
burst of requests; skipping Quart's request machinery keeps each probe to a few microseconds of
loop time. The routes in `app.py` document the same bodies (and serve them if this is bypassed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from hypercorn.typing import (
        ASGIReceiveCallable,
        ASGISendCallable,
        HTTPResponseBodyEvent,
        HTTPResponseStartEvent,
        Scope,
    )

    from ..core.service import EmbeddingService

ASGIApp = Any


class ProbeMiddleware:
    def __init__(self, app: ASGIApp, service: EmbeddingService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and scope["path"] in ("/health", "/ready")
        ):
            body, status = (health_body if scope["path"] == "/health" else ready_body)(self.service)
            payload = orjson.dumps(body)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ]
            for name, value in scope.get("headers", ()):
                if name == b"x-request-id":
                    headers.append((b"x-request-id", value))
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": status,
                "headers": headers,
                "trailers": False,
            }
            await send(start)
            body_event: HTTPResponseBodyEvent = {
                "type": "http.response.body",
                "body": payload if scope["method"] == "GET" else b"",
                "more_body": False,
            }
            await send(body_event)
            return
        await self.app(scope, receive, send)


def health_body(service: EmbeddingService) -> tuple[dict[str, Any], int]:
    body = service.health()
    return body, 200 if body["status"] == "healthy" else 503


def ready_body(service: EmbeddingService) -> tuple[dict[str, Any], int]:
    if service.ready():
        return {"status": "ready"}, 200
    return {"status": "not ready"}, 503
