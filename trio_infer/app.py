"""The quart-trio application: routes, request ids, access control, per-request logs and metrics.

`create_app(service)` builds a fresh app around a running `EmbeddingService`; it owns no tasks and
runs nothing in `app.nursery` (the batcher's lifetime belongs to `serve.main`).
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from typing import Any

from quart import Response, g, request
from quart_schema import Info, QuartSchema, document_request, document_response, hide
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from . import errors
from .bodies import read_model
from .openapi_provider import RequiredBodyOpenAPIProvider
from .probes import ProbeMiddleware
from .responses import error_response, json_response
from .schemas import EmbedRequest, EmbedResponse, ErrorResponse, HealthResponse, ReadyResponse
from .service import EmbeddingService
from .throttle import WORK_LIMIT, WorkLimitMiddleware

log = logging.getLogger("trio_infer.access")

REQUEST_ID_HEADER = "X-Request-ID"
TIMEOUT_HEADER = "X-Request-Timeout"
_MAX_REQUEST_ID = 128
_OPEN_PATHS = ("/health", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json")

_HTTP_ERRORS: dict[int, type[errors.ServiceError]] = {
    400: errors.BadRequest,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
}


def _is_openai(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def request_timeout() -> float | None:
    """The caller's own deadline in seconds from the `X-Request-Timeout` header, if valid."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise errors.BadRequest(f"{TIMEOUT_HEADER} must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value != value:
        raise errors.BadRequest(f"{TIMEOUT_HEADER} must be positive")
    return value


def _request_id(supplied: str | None) -> str:
    """The caller's id when it is a short printable ASCII token (it goes into headers and logs),
    else a fresh one."""
    if supplied and len(supplied) <= _MAX_REQUEST_ID and supplied.isascii() and supplied.isprintable():
        return supplied
    return uuid.uuid4().hex


def create_app(service: EmbeddingService) -> QuartTrio:
    settings = service.settings
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_size
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    QuartSchema(
        app,
        info=Info(
            title="trio-infer", version="0.1.0", description="Embedding inference with dynamic batching"
        ),
        swagger_ui_path="/docs",
        redoc_ui_path="/redoc",
        scalar_ui_path=None,
        openapi_provider_class=RequiredBodyOpenAPIProvider,
    )
    app.extensions["embedding_service"] = service
    api_key = settings.api_key.encode() if settings.api_key else None

    @app.before_request
    async def start_request() -> None:
        g.started = time.perf_counter()
        g.request_id = _request_id(request.headers.get(REQUEST_ID_HEADER))
        if api_key is not None and not request.path.startswith(_OPEN_PATHS):
            supplied = request.headers.get("Authorization", "")
            scheme, _, token = supplied.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key):
                raise errors.Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")

    @app.after_request
    async def finish_request(response: Response) -> Response:
        request_id = getattr(g, "request_id", "")
        response.headers[REQUEST_ID_HEADER] = request_id
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        elapsed = time.perf_counter() - getattr(g, "started", time.perf_counter())
        service.metrics.http_requests.labels(
            route=route, method=request.method, status=str(response.status_code)
        ).inc()
        service.metrics.http_duration.labels(route=route).observe(elapsed)
        if service.lifecycle.closing:
            response.headers["Connection"] = "close"
        log.info(
            "%s %s %d %.1fms",
            request.method,
            request.path,
            response.status_code,
            elapsed * 1e3,
            extra={
                "request_id": request_id,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1e3, 2),
            },
        )
        return response

    @app.errorhandler(errors.ServiceError)
    async def handle_service_error(error: errors.ServiceError) -> Response:
        return error_response(error, openai=_is_openai(request.path))

    @app.errorhandler(HTTPException)
    async def handle_http_error(error: HTTPException) -> Response:
        kind = _HTTP_ERRORS.get(error.code or 500, errors.BadRequest)
        detail = error.description or error.name
        if error.code == 404:
            detail = f"no route {request.path}"
        elif error.code == 405:
            detail = f"{request.method} is not allowed on {request.path}"
        response = error_response(kind(detail), openai=_is_openai(request.path))
        allowed = getattr(error, "valid_methods", None)
        if error.code == 405 and allowed:
            response.headers["Allow"] = ", ".join(sorted(allowed))  # required with a 405 (RFC 9110)
        return response

    @app.errorhandler(Exception)
    async def handle_unexpected(error: Exception) -> Response:
        log.exception("unhandled error (request %s)", getattr(g, "request_id", ""))
        return error_response(errors.ServiceError("internal server error"), openai=_is_openai(request.path))

    @app.post("/embed")
    @document_request(EmbedRequest)
    @document_response(EmbedResponse, 200)
    @document_response(ErrorResponse, 400)
    @document_response(ErrorResponse, 401)
    @document_response(ErrorResponse, 413)
    @document_response(ErrorResponse, 415)
    @document_response(ErrorResponse, 422)
    @document_response(ErrorResponse, 500)
    @document_response(ErrorResponse, 503)
    @document_response(ErrorResponse, 504)
    async def embed() -> Response:
        """Embed one text.

        Errors are JSON `{"error", "detail"}`. 503 (overloaded, not ready, shutting down) carries
        `Retry-After` when retrying later can help. `X-Request-Timeout: <seconds>` shortens the deadline.
        """
        body = await read_model(request, EmbedRequest)
        jobs = await service.embed([body.input_text], time_limit=request_timeout(), request_id=g.request_id)
        return json_response({"embedding": jobs[0].vector, "model": service.model_name})

    @app.get("/health")
    @document_response(HealthResponse, 200)
    @document_response(HealthResponse, 503)
    async def health() -> Response:
        """Liveness: 503 when the batcher is down or a forward pass hangs past the watchdog limit."""
        return json_response(*health_body(service))

    @app.get("/ready")
    @document_response(ReadyResponse, 200)
    @document_response(ReadyResponse, 503)
    async def ready() -> Response:
        """Readiness: 503 during start-up and from the first moment of shutdown."""
        return json_response(*ready_body(service))

    @app.get("/metrics")
    @hide
    async def metrics() -> Response:
        """Prometheus exposition of every metric (all workers' with --workers > 1)."""
        body, content_type = service.metrics.exposition()
        return Response(body, 200, content_type=content_type)

    from .openai_api import blueprint as openai_blueprint

    app.register_blueprint(openai_blueprint)

    limited = WorkLimitMiddleware(app.asgi_app, WORK_LIMIT, settings.max_body_size)
    app.asgi_app = ProbeMiddleware(limited, service)  # type: ignore[method-assign]
    return app


def health_body(service: EmbeddingService) -> tuple[dict[str, Any], int]:
    body = service.health()
    return body, 200 if body["status"] == "healthy" else 503


def ready_body(service: EmbeddingService) -> tuple[dict[str, Any], int]:
    if service.ready():
        return {"status": "ready"}, 200
    return {"status": "not ready"}, 503


def current_service() -> EmbeddingService:
    from quart import current_app

    service: EmbeddingService = current_app.extensions["embedding_service"]
    return service


__all__ = ["create_app", "current_service", "health_body", "ready_body", "request_timeout"]
