"""Every route and every error of the HTTP API, through quart-trio's test app and a fake model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import trio
from quart.typing import TestClientProtocol as Client

from tests.fakes import FakeEmbedder, make_service, text_vector
from tests.serverproc import wait_until
from trio_infer.config import Settings
from trio_infer.core.service import EmbeddingService
from trio_infer.http.app import create_app

SETTINGS = Settings(request_timeout=5.0, graceful_timeout=2.0, max_body_size=64 * 1024)


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder(poison=["POISON"])


@pytest.fixture
def settings() -> Settings:
    return SETTINGS


@pytest.fixture
async def service(
    embedder: FakeEmbedder, settings: Settings, nursery: trio.Nursery
) -> AsyncIterator[EmbeddingService]:
    service = make_service(embedder, settings)
    await nursery.start(service.batcher.run)
    service.lifecycle.mark_ready()
    yield service
    service.batcher.close()


@pytest.fixture
async def client(service: EmbeddingService) -> AsyncIterator[Client]:
    app = create_app(service)
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def post_embed(client: Client, body: Any, **kwargs: Any) -> tuple[int, Any, Any]:
    response = await client.post("/embed", json=body, **kwargs)
    return response.status_code, await response.get_json(), response.headers


def assert_error(status: int, body: Any, expected_status: int, kind: str | None = None) -> None:
    assert status == expected_status, body
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    if kind is not None:
        assert body["error"] == kind


async def test_embed_returns_the_model_vector(client: Client) -> None:
    status, body, headers = await post_embed(client, {"input_text": "hello world"})
    assert status == 200
    assert body["model"] == "fake-model"
    assert body["embedding"] == pytest.approx(text_vector("hello world").tolist(), abs=1e-6)
    assert headers["Content-Type"] == "application/json"


async def test_same_text_same_vector(client: Client) -> None:
    first = (await post_embed(client, {"input_text": "repeat me"}))[1]
    second = (await post_embed(client, {"input_text": "repeat me"}))[1]
    assert first == second


@pytest.mark.parametrize(
    "body",
    [
        {"input_text": ""},
        {"input_text": "   \n\t "},
        {"input_text": "x" * 1025},
        {},
        {"text": "wrong field"},
        {"input_text": 42},
        {"input_text": None},
        {"input_text": ["a", "list"]},
        {"input_text": "ok", "extra": 1},
        None,
        ["input_text"],
        "just a string",
        17,
    ],
)
async def test_invalid_bodies_are_422(client: Client, body: Any) -> None:
    status, payload, _ = await post_embed(client, body)
    assert_error(status, payload, 422, "validation_error")


async def test_limits_are_inclusive(client: Client) -> None:
    assert (await post_embed(client, {"input_text": "x" * 1024}))[0] == 200
    assert (await post_embed(client, {"input_text": "é" * 1024}))[0] == 200
    assert (await post_embed(client, {"input_text": "a"}))[0] == 200


async def test_malformed_json_is_400(client: Client) -> None:
    response = await client.post(
        "/embed", data=b'{"input_text": "unclosed', headers={"Content-Type": "application/json"}
    )
    assert_error(response.status_code, await response.get_json(), 400, "invalid_json")


async def test_invalid_utf8_is_400(client: Client) -> None:
    response = await client.post(
        "/embed", data=b'{"input_text": "\xff\xfe"}', headers={"Content-Type": "application/json"}
    )
    assert_error(response.status_code, await response.get_json(), 400, "invalid_json")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_wrong_content_type_is_415(client: Client, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post("/embed", data=b'{"input_text": "hi"}', headers=headers)
    assert_error(response.status_code, await response.get_json(), 415, "unsupported_media_type")


async def test_body_over_the_limit_is_413(client: Client) -> None:
    body = b'{"input_text": "' + b"x" * (SETTINGS.max_body_size + 10) + b'"}'
    response = await client.post("/embed", data=body, headers={"Content-Type": "application/json"})
    assert_error(response.status_code, await response.get_json(), 413, "payload_too_large")
    # The body was refused unread: the connection cannot carry another request.
    assert response.headers["Connection"] == "close"


async def test_unknown_route_is_json_404(client: Client) -> None:
    response = await client.get("/nowhere")
    assert_error(response.status_code, await response.get_json(), 404, "not_found")


@pytest.mark.parametrize(("method", "path"), [("GET", "/embed"), ("PUT", "/embed"), ("POST", "/health")])
async def test_wrong_method_is_json_405(client: Client, method: str, path: str) -> None:
    response = await client.open(path, method=method)
    assert_error(response.status_code, await response.get_json(), 405, "method_not_allowed")


async def test_inference_failure_is_generic_500(client: Client) -> None:
    status, body, _ = await post_embed(client, {"input_text": "POISON"})
    assert_error(status, body, 500, "inference_error")
    assert "poisoned" not in body["detail"]  # the cause goes to the log, not the client
    assert (await post_embed(client, {"input_text": "still serving"}))[0] == 200


async def test_timeout_is_504(client: Client, embedder: FakeEmbedder, autojump_clock: trio.abc.Clock) -> None:
    # On the virtual clock: the header's 0.2 s, not the settings' 5 s, ends the wait, to the tick.
    embedder.gate = trio.Event()
    start = trio.current_time()
    status, body, _ = await post_embed(client, {"input_text": "slow"}, headers={"X-Request-Timeout": "0.2"})
    assert_error(status, body, 504, "timeout")
    assert trio.current_time() - start == pytest.approx(0.2, abs=0.01)
    embedder.gate.set()


async def test_bad_timeout_header_is_400(client: Client) -> None:
    status, body, _ = await post_embed(client, {"input_text": "x"}, headers={"X-Request-Timeout": "soon"})
    assert_error(status, body, 400)


async def test_overload_is_503_with_retry_after(service: EmbeddingService, embedder: FakeEmbedder) -> None:
    small = make_service(embedder, SETTINGS, max_queue_size=2, num_workers=1, batch_timeout=0.0)
    embedder.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(small.batcher.run)
        small.lifecycle.mark_ready()
        app = create_app(small)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            nursery.start_soon(post_embed, client, {"input_text": "runs"})
            await embedder.started.wait()
            for i in range(2):  # fill the queue
                nursery.start_soon(post_embed, client, {"input_text": f"fill {i}"})
            await wait_until(lambda: queued(small, 2), 10, "the queue to fill")
            status, body, headers = await post_embed(client, {"input_text": "rejected"})
            assert_error(status, body, 503, "overloaded")
            assert int(headers["Retry-After"]) >= 1
            embedder.gate.set()
        small.batcher.close()


async def queued(service: EmbeddingService, count: int) -> bool:
    return (
        service.metrics.registry.get_sample_value(
            "batcher_queue_size", {"model": "fake-model", "priority": "interactive"}
        )
        == count
    )


async def test_not_running_is_503(service: EmbeddingService, client: Client) -> None:
    service.batcher.running = False
    status, body, _ = await post_embed(client, {"input_text": "x"})
    assert_error(status, body, 503)
    health = await client.get("/health")
    assert health.status_code == 503
    assert (await health.get_json())["status"] == "unhealthy"


async def test_closing_is_503(service: EmbeddingService, client: Client) -> None:
    service.lifecycle.begin_drain()
    await service.lifecycle.shutdown_trigger()
    status, body, headers = await post_embed(client, {"input_text": "x"})
    assert_error(status, body, 503, "shutting_down")
    assert headers.get("Connection") == "close"


async def test_health(client: Client) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    model = {
        "device": "cpu",
        "backend": "fake",
        "precision": "none",
        "queue_size": 0,
        "queues": {"interactive": 0, "bulk": 0},
        "inflight_batches": 0,
        "cache": {"capacity_bytes": 0, "bytes": 0, "entries": 0, "hit_ratio": None},
        "max_batch_tokens": 4096,
    }
    assert await response.get_json() == {
        "status": "healthy",
        "model": "fake-model",
        **model,
        "models": {"fake-model": {"status": "healthy", **model}},
    }


async def test_health_turns_503_when_a_forward_pass_hangs(
    embedder: FakeEmbedder, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    service = make_service(embedder, replace(SETTINGS, watchdog_timeout=0.2))
    await nursery.start(service.batcher.run)
    app = create_app(service)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        embedder.gate = trio.Event()
        nursery.start_soon(post_embed, client, {"input_text": "hangs"})
        await embedder.started.wait()
        assert (await client.get("/health")).status_code == 200
        await trio.sleep(0.3)  # virtual time: past the 0.2 s watchdog limit, the pass still held
        response = await client.get("/health")
        assert response.status_code == 503
        body = await response.get_json()
        assert body["status"] == "unhealthy" and body["inflight_batches"] == 1
        embedder.gate.set()
    service.batcher.close()


async def test_ready_follows_the_lifecycle(service: EmbeddingService, client: Client) -> None:
    assert (await client.get("/ready")).status_code == 200
    assert await (await client.get("/ready")).get_json() == {"status": "ready"}
    service.lifecycle.begin_drain()
    response = await client.get("/ready")
    assert response.status_code == 503
    assert await response.get_json() == {"status": "not ready"}
    # Draining (before the listener closes) still serves requests already routed here.
    assert (await post_embed(client, {"input_text": "in the drain delay"}))[0] == 200


async def test_ready_is_503_during_start_up(embedder: FakeEmbedder, nursery: trio.Nursery) -> None:
    service = make_service(embedder, SETTINGS)
    await nursery.start(service.batcher.run)
    app = create_app(service)
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/ready")
        assert response.status_code == 503
        service.lifecycle.mark_ready()
        assert (await test_app.test_client().get("/ready")).status_code == 200
    service.batcher.close()


async def test_request_id_is_echoed_or_generated(client: Client) -> None:
    response = await client.post("/embed", json={"input_text": "x"}, headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    response = await client.post("/embed", json={"input_text": "x"})
    assert len(response.headers["X-Request-ID"]) >= 16
    response = await client.get("/nowhere", headers={"X-Request-ID": "err-1"})
    assert response.headers["X-Request-ID"] == "err-1"
    for unusable in ("x" * 500, "tab\there"):
        response = await client.post("/embed", json={"input_text": "x"}, headers={"X-Request-ID": unusable})
        assert response.headers["X-Request-ID"] != unusable
        assert len(response.headers["X-Request-ID"]) == 32


METRIC_FAMILIES = [
    "batcher_requests_total",
    "batcher_request_latency_seconds",
    "batcher_batch_size",
    "batcher_batch_tokens",
    "batcher_padding_efficiency",
    "batcher_batch_wait_time_seconds",
    "batcher_inference_time_seconds",
    "batcher_queue_size",
    "batcher_inflight_batches",
    "batcher_skipped_total",
    "event_loop_lag_seconds",
    "trio_infer_model_info",
    "trio_infer_max_batch_tokens",
]


async def test_metrics_present_before_the_first_request(client: Client) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    text = (await response.get_data()).decode()
    for family in METRIC_FAMILIES:
        assert f"\n{family}" in text or text.startswith(family), family
    for status in ("success", "error", "timeout", "rejected", "cancelled"):
        assert (
            f'batcher_requests_total{{model="fake-model",priority="interactive",status="{status}"}} 0.0'
            in text
        )
    assert "batcher_batch_size_bucket" in text


async def test_metrics_count_requests(client: Client) -> None:
    await post_embed(client, {"input_text": "one"})
    await post_embed(client, {"input_text": "POISON"})
    text = (await (await client.get("/metrics")).get_data()).decode()
    assert 'batcher_requests_total{model="fake-model",priority="interactive",status="success"} 1.0' in text
    assert 'batcher_requests_total{model="fake-model",priority="interactive",status="error"} 1.0' in text
    assert 'http_requests_total{method="POST",route="/embed",status="200"} 1.0' in text


async def test_openapi_documents_routes_and_errors(client: Client) -> None:
    spec = await (await client.get("/openapi.json")).get_json()
    embed = spec["paths"]["/embed"]["post"]
    assert "requestBody" in embed
    for code in ("200", "400", "413", "415", "422", "500", "503", "504"):
        assert code in embed["responses"], code
    for path in ("/health", "/ready"):
        assert set(spec["paths"][path]["get"]["responses"]) >= {"200", "503"}
    request_schema = embed["requestBody"]["content"]["application/json"]["schema"]
    assert request_schema["title"] == "EmbedRequest"
    assert request_schema["properties"]["input_text"]["maxLength"] == 1024
    assert embed["responses"]["200"]["content"]["application/json"]["schema"]["title"] == "EmbedResponse"
    error_schema = embed["responses"]["422"]["content"]["application/json"]["schema"]
    assert error_schema["title"] == "ErrorResponse"


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_doc_pages(client: Client, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert "openapi.json" in (await response.get_data()).decode()


async def test_api_key_guards_inference_only(embedder: FakeEmbedder, nursery: trio.Nursery) -> None:
    service = make_service(embedder, replace(SETTINGS, api_key="s3cret"))
    await nursery.start(service.batcher.run)
    service.lifecycle.mark_ready()
    app = create_app(service)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            status, body, _ = await post_embed(client, {"input_text": "x"}, headers=headers)
            assert_error(status, body, 401, "unauthorized")
        status, _, _ = await post_embed(
            client, {"input_text": "x"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert status == 200
        for path in ("/health", "/ready", "/metrics"):
            assert (await client.get(path)).status_code == 200
    service.batcher.close()
