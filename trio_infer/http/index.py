"""`GET /`: what this server is and where to look next."""

from __future__ import annotations

from importlib import metadata

from pydantic import BaseModel, Field

from ..core.service import EmbeddingService
from .responses import Reply, json_reply
from .routes import Request, Route


class IndexResponse(BaseModel):
    name: str = Field(examples=["trio-infer"])
    version: str
    models: list[str] = Field(description="Every served model, the default first")
    links: dict[str, str] = Field(description="Where the documentation, metrics and probes are")


def version() -> str:
    try:
        return metadata.version("trio-infer")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def routes(service: EmbeddingService) -> list[Route]:
    index = {
        "name": "trio-infer",
        "version": version(),
        "models": [model.name for model in service.models],
        "links": {
            "docs": "/docs",
            "redoc": "/redoc",
            "openapi": "/openapi.json",
            "metrics": "/metrics",
            "health": "/health",
            "ready": "/ready",
        },
    }

    async def root(request: Request) -> Reply:
        """The server's name, version, models, and links to its documentation and metrics."""
        return json_reply(index)

    # Documented: POST / (TEI's) shares the path, and an Allow header lists every method it has.
    return [Route("/", "GET", root, open=True, responses={200: IndexResponse})]
