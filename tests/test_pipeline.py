"""The one request pipeline: the same request-id rule, metrics, headers, auth and error mapping on every
route, in process (quart-trio's test app and a fake model)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import trio
from quart.typing import TestClientProtocol as Client

from tests.fakes import FakeEmbedder, make_service
from trio_infer.config import Settings
from trio_infer.core.service import EmbeddingService
from trio_infer.http.app import create_app
from trio_infer.http.routes import UNMATCHED, RouteTable
from trio_infer.http.throttle import WORK_LIMIT

SETTINGS = Settings(request_timeout=5.0, graceful_timeout=2.0, max_body_size=64 * 1024)
JSON = {"Content-Type": "application/json"}

# Every route a client can call, with a request that succeeds: (method, path, body).
ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/embed", {"input_text": "hello"}),
    ("POST", "/v1/embeddings", {"model": "fake-model", "input": ["a", "b"]}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/fake-model", None),
    ("GET", "/health", None),
    ("GET", "/ready", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
    ("GET", "/redoc", None),
    ("GET", "/", None),
]
LABELS = {"/v1/models/fake-model": "/v1/models/{model_id}"}


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


async def started(
    embedder: FakeEmbedder, nursery: trio.Nursery, settings: Settings = SETTINGS
) -> EmbeddingService:
    service = make_service(embedder, settings)
    await nursery.start(service.batcher.run)
    service.lifecycle.mark_ready()
    return service


@pytest.fixture
async def service(embedder: FakeEmbedder, nursery: trio.Nursery) -> AsyncIterator[EmbeddingService]:
    service = await started(embedder, nursery)
    yield service
    service.batcher.close()


@pytest.fixture
async def client(service: EmbeddingService) -> AsyncIterator[Client]:
    async with create_app(service).test_app() as test_app:
        yield test_app.test_client()


async def call(client: Client, method: str, path: str, body: Any = None, **headers: str) -> Any:
    if body is None:
        return await client.open(path, method=method, headers=headers)
    return await client.open(path, method=method, json=body, headers=headers)


def http_count(service: EmbeddingService, route: str, method: str, status: int) -> float | None:
    labels = {"route": route, "method": method, "status": str(status)}
    return service.metrics.registry.get_sample_value("http_requests_total", labels)


def duration_count(service: EmbeddingService, route: str) -> float | None:
    return service.metrics.registry.get_sample_value("http_request_duration_seconds_count", {"route": route})


# -- parity across routes -----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_every_route_follows_one_request_id_rule(
    client: Client, method: str, path: str, body: Any
) -> None:
    response = await call(client, method, path, body, **{"X-Request-ID": "parity-1"})
    assert response.status_code == 200, await response.get_data()
    assert response.headers["X-Request-ID"] == "parity-1"
    generated = (await call(client, method, path, body)).headers["X-Request-ID"]
    assert len(generated) == 32
    unusable = await call(client, method, path, body, **{"X-Request-ID": "tab\there"})
    assert unusable.headers["X-Request-ID"] != "tab\there"
    assert len(unusable.headers["X-Request-ID"]) == 32
    assert int(response.headers["Content-Length"]) == len(await response.get_data())


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_every_route_is_counted_and_logged(
    client: Client,
    service: EmbeddingService,
    method: str,
    path: str,
    body: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    label = LABELS.get(path, path)
    before = http_count(service, label, method, 200)
    before_durations = duration_count(service, label)
    assert before == 0.0, "the series exists from start-up"
    with caplog.at_level("INFO", logger="trio_infer.http.access"):
        response = await call(client, method, path, body, **{"X-Request-ID": "logged-1"})
    assert response.status_code == 200
    assert http_count(service, label, method, 200) == 1.0
    assert duration_count(service, label) == (before_durations or 0.0) + 1
    lines = [r for r in caplog.records if r.name == "trio_infer.http.access"]
    assert len(lines) == 1
    assert getattr(lines[0], "request_id", None) == "logged-1"
    assert f"{method} {path} 200" in lines[0].getMessage()


async def test_probes_answer_head_without_a_body(client: Client) -> None:
    for path in ("/health", "/ready"):
        response = await client.open(path, method="HEAD")
        assert response.status_code == 200
        assert await response.get_data() == b""


async def test_errors_have_the_same_headers_on_every_route(client: Client) -> None:
    native = await client.post("/embed", json={"input_text": ""}, headers={"X-Request-ID": "e-1"})
    openai = await client.post("/v1/embeddings", json={"model": "fake-model", "input": ""})
    for response in (native, openai):
        assert response.status_code == 422
        assert response.headers["Content-Type"] == "application/json"
        assert len(response.headers["X-Request-ID"]) >= 3
    assert native.headers["X-Request-ID"] == "e-1"
    assert set(await native.get_json()) == {"error", "detail"}
    assert set(await openai.get_json()) == {"error"}


# -- metrics labels ------------------------------------------------------------------------------------


async def test_metric_labels_are_bounded_whatever_the_client_sends(
    client: Client, service: EmbeddingService
) -> None:
    for i in range(30):
        await client.open(f"/made-up-{i}", method=f"INVENTED{i}")
        await client.open("/embed", method=f"X{i}")
    samples = [
        sample
        for family in service.metrics.registry.collect()
        if family.name == "http_requests"
        for sample in family.samples
    ]
    assert {s.labels["method"] for s in samples} <= {"GET", "HEAD", "POST", "OTHER"}
    table: RouteTable = create_app(service).extensions["route_table"]
    known = {route.template for route in table.routes} | {UNMATCHED}
    assert {s.labels["route"] for s in samples} <= known
    assert http_count(service, UNMATCHED, "OTHER", 404) == 30
    assert http_count(service, "/embed", "OTHER", 405) == 30


async def test_http_series_exist_from_start_up(service: EmbeddingService) -> None:
    create_app(service)
    for route, method, status in [
        ("/embed", "POST", 200),
        ("/embed", "POST", 422),
        ("/embed", "POST", 503),
        ("/v1/embeddings", "POST", 200),
        ("/health", "GET", 200),
        ("/health", "GET", 503),
        ("/metrics", "GET", 200),
    ]:
        assert http_count(service, route, method, status) == 0.0, (route, status)
    assert duration_count(service, "/embed") == 0.0


# -- routing ---------------------------------------------------------------------------------------------


async def test_open_routes_match_exactly(embedder: FakeEmbedder, nursery: trio.Nursery) -> None:
    service = await started(embedder, nursery, replace(SETTINGS, api_key="s3cret"))
    async with create_app(service).test_app() as test_app:
        client = test_app.test_client()
        for path in ("/health", "/ready", "/metrics", "/openapi.json", "/docs", "/redoc", "/"):
            assert (await client.get(path)).status_code == 200, path
        for path in ("/healthz", "/health/", "/ready/x", "/metrics-old", "/docs/../embed", "/openapi.jsonx"):
            response = await client.get(path)
            assert response.status_code == 401, path
            assert response.headers["WWW-Authenticate"] == "Bearer"
        authorised = await client.get("/healthz", headers={"Authorization": "Bearer s3cret"})
        assert authorised.status_code == 404
        # A wrong method on an open path is a 405, not a request for the key.
        assert (await client.post("/health")).status_code == 405
    service.batcher.close()


async def test_405_names_the_allowed_methods(client: Client) -> None:
    response = await client.get("/embed")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    response = await client.post("/health")
    assert response.headers["Allow"] == "GET, HEAD"


async def test_root_is_a_json_index(client: Client) -> None:
    body = await (await client.get("/")).get_json()
    assert body["name"] == "trio-infer"
    assert body["models"] == ["fake-model"]
    assert isinstance(body["version"], str) and body["version"]
    for link in body["links"].values():
        assert (await client.get(link)).status_code == 200, link


async def test_openapi_documents_exactly_the_routes_that_answer(
    client: Client, service: EmbeddingService
) -> None:
    spec = await (await client.get("/openapi.json")).get_json()
    table: RouteTable = create_app(service).extensions["route_table"]
    documented = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    declared = {(route.template, route.method) for route in table.routes if route.documented}
    assert documented == declared
    assert {("/embed", "POST"), ("/v1/embeddings", "POST"), ("/health", "GET")} <= documented
    model = spec["paths"]["/v1/models/{model_id}"]["get"]
    assert model["parameters"][0]["name"] == "model_id"
    assert "408" in spec["paths"]["/embed"]["post"]["responses"]
    assert "security" not in spec["paths"]["/embed"]["post"]  # no key configured


async def test_openapi_declares_bearer_auth_when_a_key_is_set(
    embedder: FakeEmbedder, nursery: trio.Nursery
) -> None:
    service = await started(embedder, nursery, replace(SETTINGS, api_key="s3cret"))
    async with create_app(service).test_app() as test_app:
        spec = await (await test_app.test_client().get("/openapi.json")).get_json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/embed"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/health"]["get"]
    service.batcher.close()


# -- error wording ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [["hi"], "text", 42, None])
async def test_a_body_that_is_not_an_object_names_no_internal_class(client: Client, body: Any) -> None:
    for path, payload in (("/embed", body), ("/v1/embeddings", body)):
        response = await client.post(path, json=payload)
        assert response.status_code == 422
        text = (await response.get_data()).decode()
        assert "the body must be a JSON object" in text, text
        for internal in ("EmbedRequest", "EmbeddingsRequest", "instance of"):
            assert internal not in text


async def test_empty_and_whitespace_texts_get_one_wording(client: Client) -> None:
    details = set()
    for text in ("", "   ", "\n\t"):
        response = await client.post("/embed", json={"input_text": text})
        assert response.status_code == 422
        details.add((await response.get_json())["detail"])
    assert details == {"input_text: must not be empty or whitespace only"}
    messages = set()
    for text in ("", "  "):
        response = await client.post("/v1/embeddings", json={"model": "fake-model", "input": [text]})
        assert response.status_code == 422
        messages.add((await response.get_json())["error"]["message"])
    assert messages == {"input.0: must not be empty or whitespace only"}


async def test_invalid_utf8_is_named(client: Client) -> None:
    for path in ("/embed", "/v1/embeddings"):
        response = await client.post(path, data=b'{"input_text": "\xff"}', headers=JSON)
        assert response.status_code == 400
        assert "the body is not valid UTF-8" in (await response.get_data()).decode()


async def test_empty_body_is_400_invalid_json(client: Client) -> None:
    response = await client.post("/embed", data=b"", headers=JSON)
    assert response.status_code == 400
    body = await response.get_json()
    assert body == {"error": "invalid_json", "detail": "the body is empty: send a JSON object"}


async def test_401_asks_for_a_bearer_token(embedder: FakeEmbedder, nursery: trio.Nursery) -> None:
    service = await started(embedder, nursery, replace(SETTINGS, api_key="s3cret"))
    async with create_app(service).test_app() as test_app:
        client = test_app.test_client()
        for path, body in (("/embed", {"input_text": "x"}), ("/v1/embeddings", {"model": "m", "input": "x"})):
            response = await client.post(path, json=body)
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"
    service.batcher.close()


# -- the explicit work slot ------------------------------------------------------------------------------


async def test_requests_waiting_for_the_model_hold_no_work_slot(
    client: Client, service: EmbeddingService, embedder: FakeEmbedder
) -> None:
    """More requests than there are work slots all reach the batcher while the model is busy: each
    handler releases its slot between admit and wait."""
    count = WORK_LIMIT * 3
    embedder.gate = trio.Event()
    statuses: list[int] = []

    async def one(i: int) -> None:
        response = await client.post("/embed", json={"input_text": f"text {i}"})
        statuses.append(response.status_code)

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
        with trio.fail_after(10):
            while service.batcher.queue_size + sum(len(b) for b in embedder.batches) < count:  # noqa: ASYNC110
                await trio.sleep(0.01)
        embedder.gate.set()
    assert statuses == [200] * count
