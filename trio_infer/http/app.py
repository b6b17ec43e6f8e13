"""The quart-trio application: routes, request ids, access control, per-request logs and metrics.

`create_app(service)` builds a fresh app around a running `EmbeddingService`; it owns no tasks and
runs nothing in `app.nursery` (the batcher's lifetime belongs to `serve.main`).
"""

from __future__ import annotations

import time

from quart import Response, g, request
from quart_schema import Info, QuartSchema, document_request, document_response, hide
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..core import errors
from ..core.service import EmbeddingService
from . import access, docs
from .embed_endpoint import EmbedEndpoint
from .openapi_provider import RequiredBodyOpenAPIProvider
from .probes import ProbeMiddleware, health_body, ready_body
from .responses import error_response, json_response
from .schemas import EmbedRequest, EmbedResponse, ErrorResponse, HealthResponse, ReadyResponse
from .throttle import WORK_LIMIT, WorkLimitMiddleware

_HTTP_ERRORS: dict[int, type[errors.ServiceError]] = {
    400: errors.BadRequest,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
}


def _is_openai(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


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
        swagger_ui_path=None,  # docs.install serves /docs and /redoc with local assets
        redoc_ui_path=None,
        scalar_ui_path=None,
        openapi_provider_class=RequiredBodyOpenAPIProvider,
    )
    docs.install(app, openapi_url="/openapi.json")
    app.extensions["embedding_service"] = service
    api_key = settings.api_key.encode() if settings.api_key else None

    @app.before_request
    async def start_request() -> None:
        g.started = time.perf_counter()
        g.request_id = access.request_id(request.headers.get(access.REQUEST_ID_HEADER))
        access.check_api_key(request.path, request.headers.get("Authorization"), api_key)

    @app.after_request
    async def finish_request(response: Response) -> Response:
        request_id = getattr(g, "request_id", "")
        response.headers[access.REQUEST_ID_HEADER] = request_id
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        elapsed = time.perf_counter() - getattr(g, "started", time.perf_counter())
        service.metrics.count_http(route, request.method, response.status_code, elapsed)
        if service.lifecycle.closing:
            response.headers["Connection"] = "close"
        access.log_access(request.method, request.path, response.status_code, elapsed, request_id)
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
        access.log.exception("unhandled error (request %s)", getattr(g, "request_id", ""))
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
        # Requests are answered by EmbedEndpoint ahead of Quart (embed_endpoint.py); this declaration
        # documents the route and lets Quart answer its other methods with 405.
        raise errors.ServiceError("POST /embed reached Quart: EmbedEndpoint is not installed")

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

    limited = WorkLimitMiddleware(EmbedEndpoint(app.asgi_app, service), WORK_LIMIT, settings.max_body_size)
    app.asgi_app = ProbeMiddleware(limited, service)  # type: ignore[method-assign]
    return app


__all__ = ["create_app"]
