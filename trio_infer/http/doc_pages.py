"""The documentation routes: `/openapi.json` and the Swagger UI (`/docs`) and ReDoc (`/redoc`) pages.

`routes(document)` is the whole interface: the pages are ordinary routes of the table (open with
`--api-key`, exact paths, metrics and access log like any other). The pages load their scripts from a
CDN.
"""

from __future__ import annotations

from typing import Any

import orjson

from .responses import Reply
from .routes import Request, Route

OPENAPI_PATH = "/openapi.json"
_HTML = b"text/html; charset=utf-8"

_SWAGGER = f"""<!doctype html>
<html>
<head>
  <meta charset="utf-8">
  <title>trio-infer</title>
  <link rel="stylesheet" href="https://cdnjs.cloudflare.com/ajax/libs/swagger-ui/5.4.2/swagger-ui.min.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="https://cdnjs.cloudflare.com/ajax/libs/swagger-ui/5.4.2/swagger-ui-bundle.js"></script>
  <script>
    SwaggerUIBundle({{url: "{OPENAPI_PATH}", dom_id: "#swagger-ui", deepLinking: true}});
  </script>
</body>
</html>
""".encode()

_REDOC = f"""<!doctype html>
<html>
<head>
  <meta charset="utf-8">
  <title>trio-infer</title>
</head>
<body>
  <redoc spec-url="{OPENAPI_PATH}"></redoc>
  <script src="https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js"></script>
</body>
</html>
""".encode()


def routes(document: dict[str, Any]) -> list[Route]:
    spec = orjson.dumps(document)

    async def openapi(request: Request) -> Reply:
        """The OpenAPI document."""
        return Reply(spec)

    async def swagger_ui(request: Request) -> Reply:
        """Swagger UI."""
        return Reply(_SWAGGER, content_type=_HTML)

    async def redoc(request: Request) -> Reply:
        """ReDoc."""
        return Reply(_REDOC, content_type=_HTML)

    return [
        Route(OPENAPI_PATH, "GET", openapi, open=True, documented=False),
        Route("/docs", "GET", swagger_ui, open=True, documented=False),
        Route("/redoc", "GET", redoc, open=True, documented=False),
    ]
