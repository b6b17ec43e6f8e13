"""The ASGI application: the route table, run by the one request pipeline, inside a quart-trio app.

`create_app(service)` builds a fresh app around a running `EmbeddingService`. Every HTTP request is
answered by `Pipeline` (`pipeline.py`) from the table assembled here; quart-trio is the container that
speaks the ASGI lifespan. The app owns no tasks and runs nothing in `app.nursery` (the batcher's lifetime
belongs to `serve.main`).
"""

from __future__ import annotations

from quart_trio import QuartTrio

from ..core.service import EmbeddingService
from . import doc_pages, index, native_api, openai_api, openapi, probes
from .callers import Callers, key_ring
from .pipeline import Pipeline
from .routes import RouteTable

TITLE = "trio-infer"
DESCRIPTION = "Embedding inference with dynamic batching"


def create_app(service: EmbeddingService, callers: Callers | None = None) -> QuartTrio:
    """`callers`: the key ring in force, which the runtime reloads; None: the one the settings
    configure, read now (`--api-keys-file` is read in the calling thread)."""
    callers = Callers(key_ring(service.settings)) if callers is None else callers
    api = [
        *native_api.routes(service),
        *openai_api.routes(service),
        *probes.routes(service),
        *index.routes(service),
    ]
    document = openapi.build(
        api,
        title=TITLE,
        version=index.version(),
        description=DESCRIPTION,
        bearer=callers.ring.guarded,
    )
    table = RouteTable([*api, *doc_pages.routes(document)])
    service.metrics.prepare_http(table.labels())
    app = QuartTrio(__name__)
    app.extensions["route_table"] = table
    app.asgi_app = Pipeline(app.asgi_app, service, table, callers)  # type: ignore[method-assign]
    return app


__all__ = ["create_app"]
