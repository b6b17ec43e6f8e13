"""The documentation routes: `/openapi.json`, the Swagger UI (`/docs`) and ReDoc (`/redoc`) pages, and
the pages' assets under `/docs/assets/<version>/`.

`routes(document)` is the whole interface: the pages are ordinary routes of the table (open with
`--api-key`, metrics and access log like any other). The pages and their scripts come from this process
(`docs.py`), so they work with no network. Each asset is its own exact-path route: an open route never
matches a path pattern, and any other name under the asset folder is a 404 (401 with a key set).
"""

from __future__ import annotations

from typing import Any

import orjson

from . import docs
from .responses import Reply
from .routes import Handler, Request, Route

OPENAPI_PATH = "/openapi.json"
_HTML = b"text/html; charset=utf-8"


def _asset_handler(name: str) -> Handler:
    async def asset(request: Request) -> Reply:
        """One of the documentation pages' assets, cacheable for a year (its URL has the version)."""
        found = docs.asset(name)
        answer = docs.asset_headers(name, request.headers.get("if-none-match"))
        assert found is not None and answer is not None  # routes exist only for known names
        status, headers = answer
        body, content_type = found
        return Reply(
            body if status == 200 else b"",
            status,
            content_type=content_type.encode(),
            headers=[(key.lower().encode(), value.encode()) for key, value in headers.items()],
        )

    return asset


def routes(document: dict[str, Any]) -> list[Route]:
    spec = orjson.dumps(document)
    swagger_page = docs.docs_page(OPENAPI_PATH).encode()
    redoc_page = docs.redoc_page(OPENAPI_PATH).encode()

    async def openapi(request: Request) -> Reply:
        """The OpenAPI document."""
        return Reply(spec)

    async def swagger_ui(request: Request) -> Reply:
        """Swagger UI."""
        return Reply(swagger_page, content_type=_HTML)

    async def redoc(request: Request) -> Reply:
        """ReDoc."""
        return Reply(redoc_page, content_type=_HTML)

    prefix = docs.asset_prefix()
    return [
        Route(OPENAPI_PATH, "GET", openapi, open=True, documented=False),
        Route(docs.DOCS_PATH, "GET", swagger_ui, open=True, documented=False),
        Route(docs.REDOC_PATH, "GET", redoc, open=True, documented=False),
        *(
            Route(f"{prefix}/{name}", "GET", _asset_handler(name), open=True, documented=False)
            for name in docs.asset_names()
        ),
    ]
