"""Who a request is from and which class it gets, on both embedding APIs: `X-Priority`, the caller's
API key and its default class, `--default-priority` — as they reach the jobs the batcher queues."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from quart.typing import TestClientProtocol as Client

from tests.fakes import FakeEmbedder, make_service
from trio_infer.config import Settings
from trio_infer.core.jobs import Job
from trio_infer.core.priority import ANONYMOUS, Priority
from trio_infer.core.service import EmbeddingService, Ticket
from trio_infer.http.app import create_app

SETTINGS = Settings(request_timeout=5.0, graceful_timeout=2.0)
KEYS = f"""\
search   search-key
indexer  sha256:{hashlib.sha256(b"indexer-key").hexdigest()}  bulk
"""
ROUTES = {
    "/embed": lambda text: {"input_text": text},
    "/v1/embeddings": lambda text: {"model": "fake-model", "input": [text, text + "!"]},
}


class Admitted:
    """The service, with every ticket `admit` hands out kept (the real jobs, as queued)."""

    def __init__(self, service: EmbeddingService) -> None:
        self.tickets: list[Ticket] = []
        admit = service.admit

        def recording(*args: Any, **kwargs: Any) -> Ticket:
            ticket = admit(*args, **kwargs)
            self.tickets.append(ticket)
            return ticket

        service.admit = recording  # type: ignore[method-assign]

    def last(self) -> list[tuple[str, Priority]]:
        jobs: list[Job] = self.tickets[-1].jobs
        return [(job.caller, job.priority) for job in jobs]


@asynccontextmanager
async def started_client(settings: Settings, nursery: trio.Nursery) -> AsyncIterator[tuple[Client, Admitted]]:
    service = make_service(FakeEmbedder(), settings)
    await nursery.start(service.batcher.run)
    service.lifecycle.mark_ready()
    admitted = Admitted(service)
    app = create_app(service)
    async with app.test_app() as test_app:
        yield test_app.test_client(), admitted
    service.batcher.close()


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(KEYS)
    return path


@pytest.fixture
async def keyed(keys_file: Path, nursery: trio.Nursery) -> AsyncIterator[tuple[Client, Admitted]]:
    async with started_client(replace(SETTINGS, api_keys_file=str(keys_file)), nursery) as pair:
        yield pair


async def post(client: Client, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    response = await client.post(path, json=ROUTES[path]("some text"), headers=headers)
    return response.status_code, await response.get_json()


@pytest.mark.parametrize("path", list(ROUTES))
@pytest.mark.parametrize(
    ("headers", "caller", "priority"),
    [
        ({"Authorization": "Bearer search-key"}, "search", Priority.INTERACTIVE),  # the server default
        ({"Authorization": "Bearer indexer-key"}, "indexer", Priority.BULK),  # the key's own default
        (
            {"Authorization": "Bearer indexer-key", "X-Priority": "interactive"},
            "indexer",
            Priority.INTERACTIVE,
        ),
        ({"Authorization": "Bearer search-key", "X-Priority": "BuLk"}, "search", Priority.BULK),
        ({"Authorization": "Bearer search-key", "X-Priority": " bulk "}, "search", Priority.BULK),
    ],
)
async def test_the_key_and_the_header_reach_every_job(
    keyed: tuple[Client, Admitted], path: str, headers: dict[str, str], caller: str, priority: Priority
) -> None:
    client, admitted = keyed
    status, body = await post(client, path, headers)
    assert status == 200, body
    expected = 1 if path == "/embed" else 2
    assert admitted.last() == [(caller, priority)] * expected


@pytest.mark.parametrize("path", list(ROUTES))
async def test_without_keys_requests_are_anonymous_in_the_default_class(
    path: str, nursery: trio.Nursery
) -> None:
    async with started_client(replace(SETTINGS, default_priority="bulk"), nursery) as (client, admitted):
        assert (await post(client, path, {}))[0] == 200
        assert {entry for entry in admitted.last()} == {(ANONYMOUS, Priority.BULK)}
        assert (await post(client, path, {"X-Priority": "interactive"}))[0] == 200
        assert {entry for entry in admitted.last()} == {(ANONYMOUS, Priority.INTERACTIVE)}


async def test_api_key_is_the_caller_default(nursery: trio.Nursery) -> None:
    async with started_client(replace(SETTINGS, api_key="s3cret"), nursery) as (client, admitted):
        assert (await post(client, "/embed", {"Authorization": "Bearer s3cret"}))[0] == 200
        assert admitted.last() == [("default", Priority.INTERACTIVE)]


async def test_an_unknown_priority_is_400_naming_the_allowed_ones(keyed: tuple[Client, Admitted]) -> None:
    client, admitted = keyed
    auth = {"Authorization": "Bearer search-key"}
    status, body = await post(client, "/embed", {**auth, "X-Priority": "urgent"})
    assert status == 400
    assert body == {
        "error": "bad_request",
        "detail": "X-Priority must be one of interactive, bulk, got 'urgent'",
    }
    status, body = await post(client, "/v1/embeddings", {**auth, "X-Priority": ""})
    assert status == 400
    assert body == {
        "error": {
            "message": "X-Priority must be one of interactive, bulk, got ''",
            "type": "invalid_request_error",
            "param": "X-Priority",
            "code": "invalid_value",
        }
    }
    status, body = await post(client, "/embed", {**auth, "X-Priority": "x" * 5000})
    assert status == 400 and body["detail"].endswith(f"got '{'x' * 64}'")  # quoted, bounded
    assert admitted.tickets == []  # refused before anything was admitted
    # Routes that queue no work do not read it.
    response = await client.get("/v1/models", headers={**auth, "X-Priority": "urgent"})
    assert response.status_code == 200


@pytest.mark.parametrize("path", list(ROUTES))
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {
            "Authorization": f"Bearer sha256:{hashlib.sha256(b'indexer-key').hexdigest()}"
        },  # the hash is no key
        {"Authorization": "Bearer wrong", "X-Priority": "urgent"},  # the key is checked first
    ],
)
async def test_a_wrong_key_is_401(keyed: tuple[Client, Admitted], path: str, headers: dict[str, str]) -> None:
    client, admitted = keyed
    status, body = await post(client, path, headers)
    assert status == 401
    assert "unauthorized" in str(body)
    assert admitted.tickets == []


async def test_open_routes_stay_open_with_a_keys_file(keyed: tuple[Client, Admitted]) -> None:
    client, _ = keyed
    for path in ("/health", "/ready", "/metrics", "/openapi.json"):
        assert (await client.get(path)).status_code == 200, path
    assert (await client.get("/v1/models")).status_code == 401
    document = await (await client.get("/openapi.json")).get_json()
    assert document["paths"]["/embed"]["post"]["security"] == [{"bearer": []}]
    for path in ROUTES:
        (parameter,) = document["paths"][path]["post"]["parameters"]
        assert parameter["name"] == "X-Priority" and parameter["in"] == "header"
        assert parameter["schema"]["enum"] == ["interactive", "bulk"]
    assert "parameters" not in document["paths"]["/health"]["get"]
