"""`/docs` and `/redoc` in a real browser with no network: Debian's chromium, driven by playwright.

Every request the page makes to a host other than the server under test is aborted (and recorded), so
the pages can only render with what the service itself serves. Skipped where chromium or playwright
is absent (`.ci/run` installs chromium). The served HTML and asset headers are checked over a plain
socket too, so those checks run everywhere.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import ServerProcess, build_request, get_sync, request
from trio_infer.http import docs

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOT_DIR = os.environ.get("DOCS_SCREENSHOT_DIR")  # set to keep the pages' screenshots


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess() as proc:
        yield proc


def test_pages_are_html5_with_a_charset_and_local_assets(server: ServerProcess) -> None:
    for path, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        response = get_sync(server.port, path)
        assert response.status == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        page = response.body.decode()
        assert page.startswith("<!DOCTYPE html>")
        assert '<meta charset="utf-8">' in page
        assert f'src="{docs.asset_prefix()}/{script}"' in page
        assert "http://" not in page and "https://" not in page  # nothing from a CDN


def test_assets_have_cache_headers_and_etags(server: ServerProcess) -> None:
    url = f"{docs.asset_prefix()}/swagger-ui-bundle.js"
    response = get_sync(server.port, url)
    assert response.status == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "max-age=31536000" in response.headers["cache-control"]
    assert len(response.body) > 100_000  # the real bundle, not a placeholder
    assert response.headers["etag"].strip('"') == hashlib.sha256(response.body).hexdigest()[:32]


async def test_conditional_request_gets_304_and_unknown_assets_404(server: ServerProcess) -> None:
    url = f"{docs.asset_prefix()}/redoc.standalone.js"
    etag = get_sync(server.port, url).headers["etag"]
    revalidated = await request(server.port, build_request("GET", url, headers={"If-None-Match": etag}))
    assert revalidated.status == 304
    assert revalidated.body == b""
    for path in (
        f"{docs.asset_prefix()}/../../openapi.json",
        f"{docs.asset_prefix()}/index.html",
        "/docs/assets/0.0.0/swagger-ui.css",  # another version's URL must not be cached as this one
    ):
        missing = get_sync(server.port, path)
        assert missing.status == 404, path
        assert missing.headers["content-type"] == "application/json"


def _browser() -> Any:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}: install Debian's 'chromium' package (.ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed ([dev] extra)")
    return sync_api


@pytest.fixture(scope="module")
def page(server: ServerProcess) -> Iterator[tuple[Any, list[str]]]:
    sync_api = _browser()
    blocked: list[str] = []
    local = server.base_url

    def only_local(route: Any) -> None:
        if route.request.url.startswith(local + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1600})
            context.route("**/*", only_local)
            yield context.new_page(), blocked
        finally:
            browser.close()


def _screenshot(page: Any, name: str) -> None:
    if SCREENSHOT_DIR:
        page.screenshot(path=str(Path(SCREENSHOT_DIR) / name), full_page=False)


def test_swagger_ui_renders_both_apis_offline(server: ServerProcess, page: tuple[Any, list[str]]) -> None:
    browser_page, blocked = page
    errors: list[str] = []
    browser_page.on("pageerror", lambda error: errors.append(str(error)))
    browser_page.goto(f"{server.base_url}/docs")
    browser_page.wait_for_selector(".opblock", timeout=60_000)
    paths = browser_page.locator(".opblock .opblock-summary-path").all_inner_texts()
    assert "/embed" in paths
    assert "/v1/embeddings" in paths
    assert browser_page.locator(".swagger-ui .info .title").inner_text().startswith("trio-infer")
    _screenshot(browser_page, "docs.png")
    assert errors == []
    assert blocked == []  # it needed nothing from outside


def test_redoc_renders_its_sections_offline(server: ServerProcess, page: tuple[Any, list[str]]) -> None:
    browser_page, blocked = page
    errors: list[str] = []
    browser_page.on("pageerror", lambda error: errors.append(str(error)))
    browser_page.goto(f"{server.base_url}/redoc")
    browser_page.wait_for_selector("[data-section-id]", timeout=60_000)
    sections = browser_page.locator("[data-section-id]").evaluate_all(
        "nodes => nodes.map(node => node.getAttribute('data-section-id'))"
    )
    document = get_sync(server.port, "/openapi.json").json()
    for path in ("/embed", "/v1/embeddings"):
        operation_id = document["paths"][path]["post"]["operationId"]
        assert f"operation/{operation_id}" in sections, (path, sections)
    assert browser_page.locator("h1").first.inner_text().startswith("trio-infer")
    _screenshot(browser_page, "redoc.png")
    assert errors == []
    assert blocked == []
