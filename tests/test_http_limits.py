"""Attacks on the HTTP layer, reproduced over real sockets against a real server (debug model).

Each test is one attack from the hardening issue: a request refused from its head alone, a body that
stops arriving, invented methods that would grow /metrics, more concurrent requests than allowed, and
paths that only start like an open route's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from tests.serverproc import Response, ServerProcess, build_request, get, metrics, read_response, request

pytestmark = pytest.mark.e2e

KEY = "s3cret"
DECLARED = 900_000  # bytes a client says it will send, and never does


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    args = ["--api-key", KEY, "--body-timeout", "1"]
    with ServerProcess(args=args) as server:
        yield server
        log = server.log()
    assert "Traceback" not in log, log[-5000:]


def head_only(method: str, path: str, headers: dict[str, str] | None = None, length: int = DECLARED) -> bytes:
    """A request head declaring a body of `length` bytes, none of which follow."""
    given = {"Content-Type": "application/json", "Content-Length": str(length), **(headers or {})}
    return build_request(method, path, b"", given, content_type=None)


@contextlib.asynccontextmanager
async def stalled_uploads(port: int, count: int) -> AsyncIterator[list[trio.SocketStream]]:
    """`count` authorised POST /embed requests whose bodies stop after a few bytes."""
    streams = []
    try:
        for _ in range(count):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            streams.append(stream)
            auth = {"Authorization": f"Bearer {KEY}"}
            await stream.send_all(head_only("POST", "/embed", auth, length=100) + b'{"input_text": ')
        yield streams
    finally:
        for stream in streams:
            await stream.aclose()


async def answer_without_body(port: int, raw: bytes) -> Response:
    """Send only `raw` (a head) and read the answer: it must come without the declared body, and the
    connection then closes (the body bytes would otherwise be read as the next request)."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(raw)
            response = await read_response(stream)
            assert response.headers.get("connection") == "close", response.headers
            assert await stream.receive_some(1) == b""
    return response


# -- headers first ------------------------------------------------------------------------------------------


async def test_unauthenticated_upload_is_refused_from_its_head(server: ServerProcess) -> None:
    response = await answer_without_body(server.port, head_only("POST", "/embed"))
    assert response.status == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == "unauthorized"
    response = await answer_without_body(server.port, head_only("POST", "/v1/embeddings"))
    assert response.status == 401
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("method", "path", "headers", "length", "status"),
    [
        ("POST", "/nowhere", {}, DECLARED, 404),
        ("PUT", "/embed", {}, DECLARED, 405),
        ("POST", "/embed", {}, 2 * 1024 * 1024, 413),
        ("POST", "/embed", {"Content-Type": "text/plain"}, DECLARED, 415),
        ("POST", "/v1/embeddings", {"Content-Type": "multipart/form-data"}, DECLARED, 415),
    ],
)
async def test_refusals_come_before_the_body(
    server: ServerProcess, method: str, path: str, headers: dict[str, str], length: int, status: int
) -> None:
    auth = {"Authorization": f"Bearer {KEY}", **headers}
    response = await answer_without_body(server.port, head_only(method, path, auth, length))
    assert response.status == status, response


# -- the body deadline ------------------------------------------------------------------------------------


async def test_a_stalled_body_gets_408_and_the_connection_closes(server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    with trio.fail_after(20):  # --body-timeout is 1 s; the margin is for a loaded machine
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(head_only("POST", "/embed", auth, length=100) + b'{"input_text": "a')
            response = await read_response(stream)
            assert response.status == 408
            assert response.json()["error"] == "body_timeout"
            assert response.headers["connection"] == "close"
            assert await stream.receive_some(1) == b""
    samples = await metrics(server.port)
    assert samples['http_requests_total{method="POST",route="/embed",status="408"}'] >= 1


# -- bounded metric labels ---------------------------------------------------------------------------------


def http_series(samples: dict[str, float]) -> set[str]:
    return {name for name in samples if name.startswith("http_")}


async def test_invented_methods_and_paths_add_no_metric_series(server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}

    async def send(method: str, path: str) -> None:
        response = await request(server.port, build_request(method, path, None, auth))
        assert response.status in (404, 405), response

    await send("WARMUP", "/embed")
    await send("WARMUP", "/warm-up")
    before = http_series(await metrics(server.port))
    for i in range(150):
        await send(f"INVENTED{i}", "/embed")
        await send(f"M{i}", f"/invented/{i}")
    after = await metrics(server.port)
    assert http_series(after) - before <= {'http_requests_total{method="GET",route="/metrics",status="200"}'}
    assert after['http_requests_total{method="OTHER",route="/embed",status="405"}'] >= 150
    assert after['http_requests_total{method="OTHER",route="unmatched",status="404"}'] >= 150


# -- the concurrency cap -----------------------------------------------------------------------------------


async def test_requests_beyond_the_cap_get_503_unread_and_probes_still_answer() -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    with ServerProcess(args=["--api-key", KEY, "--max-concurrent-requests", "3"]) as server:
        async with stalled_uploads(server.port, 3):
            with trio.fail_after(10):
                while (await metrics(server.port)).get("http_requests_in_progress") != 3:  # noqa: ASYNC110 - another process
                    await trio.sleep(0.05)
            response = await answer_without_body(server.port, head_only("POST", "/embed", auth))
            assert response.status == 503
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"] == "overloaded"
            for path in ("/health", "/ready", "/metrics"):
                assert (await get(server.port, path)).status == 200
        # Once the stalled clients have gone, their places are free again.
        with trio.fail_after(10):
            while (await metrics(server.port)).get("http_requests_in_progress") != 0:  # noqa: ASYNC110 - another process
                await trio.sleep(0.05)
        raw = build_request("POST", "/embed", b'{"input_text": "after"}', auth)
        assert (await request(server.port, raw)).status == 200


# -- open routes match exactly -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/healthz", "/health/", "/ready/../embed", "/metrics.bak", "/docs-old", "/openapi.json.1"]
)
async def test_paths_that_only_start_like_an_open_route_need_the_key(
    server: ServerProcess, path: str
) -> None:
    response = await get(server.port, path)
    assert response.status == 401, (path, response.status)


async def test_open_routes_answer_without_the_key(server: ServerProcess) -> None:
    for path in ("/health", "/ready", "/metrics", "/openapi.json", "/docs", "/redoc", "/"):
        assert (await get(server.port, path)).status == 200, path


# -- the settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--body-timeout", "nan"],
        ["--body-timeout", "inf"],
        ["--body-timeout", "0"],
        ["--body-timeout", "-1"],
        ["--max-concurrent-requests", "0"],
        ["--max-concurrent-requests", "many"],
    ],
)
def test_http_limits_refuse_unusable_values(args: list[str]) -> None:
    from trio_infer.config import load_settings

    with pytest.raises(SystemExit) as raised:
        load_settings(args, env={})
    assert raised.value.code == 2
