"""What orchestrators and scrapers call: `/health`, `/ready` (probes: never refused for load) and
`/metrics`. All three are open with `--api-key`."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from ..core.service import EmbeddingService
from .responses import Reply, json_reply
from .routes import Request, Route
from .schemas import HealthResponse, ReadyResponse


def health_body(service: EmbeddingService) -> tuple[dict[str, Any], int]:
    body = service.health()
    return body, 200 if body["status"] == "healthy" else 503


def ready_body(service: EmbeddingService) -> tuple[dict[str, Any], int]:
    if service.ready():
        return {"status": "ready"}, 200
    return {"status": "not ready"}, 503


def routes(service: EmbeddingService) -> list[Route]:
    async def health(request: Request) -> Reply:
        """Liveness: 503 when the batcher is down or a forward pass hangs past the watchdog limit."""
        return json_reply(*health_body(service))

    async def ready(request: Request) -> Reply:
        """Readiness: 503 during start-up and from the first moment of shutdown."""
        return json_reply(*ready_body(service))

    async def metrics(request: Request) -> Reply:
        """Prometheus exposition of every metric (all workers' with --workers > 1)."""
        body, content_type = service.metrics.exposition()
        return Reply(body, content_type=content_type.encode())

    return [
        Route(
            "/health",
            "GET",
            health,
            responses={200: HealthResponse, 503: HealthResponse},
            open=True,
            capped=False,
            probe=True,
        ),
        Route(
            "/ready",
            "GET",
            ready,
            responses={200: ReadyResponse, 503: ReadyResponse},
            open=True,
            capped=False,
            probe=True,
        ),
        Route(
            "/metrics",
            "GET",
            metrics,
            open=True,
            capped=False,
            documented=False,
            content_type=CONTENT_TYPE_LATEST.split(";")[0],
        ),
    ]
