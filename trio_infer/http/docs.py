"""`/docs` (Swagger UI) and `/redoc` (ReDoc), served with their scripts from this process, so they work
with no network (an air-gapped cluster is a common home for an embedding server).

The assets come from the `fastapi-offline` package's static folder: it ships both Swagger UI 5 (which
renders OpenAPI 3.1, unlike the 4.x of `swagger-ui-bundle`) and ReDoc's standalone bundle. The folder is
found with `find_spec` and read as files; the package itself (and FastAPI, its dependency) is never
imported.

The page builders and `asset` are plain functions, free of the web framework; `doc_pages.routes` puts
them in the route table. Assets are read once, on first use, and kept in memory (about 2.8 MB).
"""

from __future__ import annotations

import functools
import hashlib
import html
import importlib.metadata
import importlib.util
from pathlib import Path

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
_ASSET_PACKAGE = "fastapi_offline"
_ASSET_DISTRIBUTION = "fastapi-offline"

# The files a page may load, with their media types. Anything else is a 404: the asset route never
# maps a client-chosen path onto the file system.
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}

# The asset URLs carry the package's version, so a cached copy can be kept for a year: a new release
# changes the URL, never the content behind an old one.
CACHE_CONTROL = "public, max-age=31536000, immutable"


_IMAGE_POLICY = "img-src 'self' data:"


class AssetsMissing(RuntimeError):
    """The package that ships the UI assets is not installed."""


@functools.cache
def _asset_dir() -> Path:
    spec = importlib.util.find_spec(_ASSET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AssetsMissing(f"the {_ASSET_DISTRIBUTION!r} package (Swagger UI and ReDoc assets) is missing")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@functools.cache
def asset_version() -> str:
    """The asset package's version: part of every asset URL."""
    return importlib.metadata.version(_ASSET_DISTRIBUTION)


def asset_prefix() -> str:
    """The URL folder the assets are served under, e.g. `/docs/assets/1.7.7`."""
    return f"{DOCS_PATH}/assets/{asset_version()}"


@functools.cache
def asset(name: str) -> tuple[bytes, str] | None:
    """The asset's bytes and Content-Type, or None for a name that is not one of the UI's assets."""
    content_type = _ASSETS.get(name)
    if content_type is None:
        return None
    return (_asset_dir() / name).read_bytes(), content_type


@functools.cache
def asset_etag(name: str) -> str | None:
    """A strong ETag (quoted) for the asset's content, or None for an unknown name."""
    found = asset(name)
    if found is None:
        return None
    return '"' + hashlib.sha256(found[0]).hexdigest()[:32] + '"'


def _page(title: str, head: str, body: str) -> str:
    # The charset must be declared: without it a browser may decode the UTF-8 bundles as another
    # encoding, and Swagger UI's bundle then fails to parse ("Invalid or unexpected token").
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n'
        "<head>\n"
        '  <meta charset="utf-8">\n'
        '  <meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # Images only from here: ReDoc's sidebar otherwise fetches its vendor's logo from a CDN (it hides
        # the image when that fails), which would also tell a third party who reads these docs.
        f'  <meta http-equiv="Content-Security-Policy" content="{_IMAGE_POLICY}">\n'
        f"  <title>{html.escape(title)}</title>\n"
        f'  <link rel="icon" type="image/png" href="{asset_prefix()}/favicon.png">\n'
        f"{head}"
        "  <style>body { margin: 0; padding: 0; }</style>\n"
        "</head>\n"
        "<body>\n"
        f"{body}"
        "  <noscript>This page needs JavaScript.</noscript>\n"
        "</body>\n"
        "</html>\n"
    )


def docs_page(openapi_url: str, title: str = "trio-infer") -> str:
    """Swagger UI for the OpenAPI document at `openapi_url`, with its assets from this server."""
    prefix = asset_prefix()
    spec = html.escape(openapi_url, quote=True)
    return _page(
        f"{title} - Swagger UI",
        f'  <link rel="stylesheet" type="text/css" href="{prefix}/swagger-ui.css">\n',
        '  <div id="swagger-ui"></div>\n'
        f'  <script src="{prefix}/swagger-ui-bundle.js"></script>\n'
        "  <script>\n"
        "    window.ui = SwaggerUIBundle({\n"
        f'      url: "{spec}",\n'
        '      dom_id: "#swagger-ui",\n'
        '      layout: "BaseLayout",\n'
        "      deepLinking: true,\n"
        # No validator badge: it would send the document's URL to validator.swagger.io.
        "      validatorUrl: null,\n"
        "      showExtensions: true,\n"
        "      showCommonExtensions: true,\n"
        "      presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],\n"
        "    });\n"
        "  </script>\n",
    )


def redoc_page(openapi_url: str, title: str = "trio-infer") -> str:
    """ReDoc for the OpenAPI document at `openapi_url`, with its script from this server."""
    spec = html.escape(openapi_url, quote=True)
    return _page(
        f"{title} - ReDoc",
        "",
        f'  <redoc spec-url="{spec}"></redoc>\n'
        f'  <script src="{asset_prefix()}/redoc.standalone.js"></script>\n',
    )


def asset_names() -> tuple[str, ...]:
    """The names of every asset a page may load (each is served at `asset_prefix()/<name>`)."""
    return tuple(_ASSETS)


def asset_headers(name: str, if_none_match: str | None) -> tuple[int, dict[str, str]] | None:
    """(200 or 304, cache headers) for the asset: 304 when the client's `If-None-Match` names its
    ETag. None for an unknown name."""
    etag = asset_etag(name)
    if etag is None:
        return None
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": etag}
    if if_none_match is not None and etag in (tag.strip() for tag in if_none_match.split(",")):
        return 304, headers
    return 200, headers


__all__ = [
    "CACHE_CONTROL",
    "DOCS_PATH",
    "REDOC_PATH",
    "AssetsMissing",
    "asset",
    "asset_etag",
    "asset_headers",
    "asset_names",
    "asset_prefix",
    "asset_version",
    "docs_page",
    "redoc_page",
]
