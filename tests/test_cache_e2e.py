"""The embedding cache in a real server: a hit returns exactly the bytes a miss returns, on every API and
encoding, and the cache changes nothing but the work done."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.serverproc import ServerProcess, metrics, post_json

pytestmark = pytest.mark.e2e

START_LIMIT = 300.0
TEXTS = [
    "Hi",
    "a popular query about trio",
    "An embedding server turns text into vectors. " * 5,
    "¿Dónde está? 图书馆",
]
# Every API and encoding: the same text through each must come back the same from the cache.
SHAPES: list[tuple[str, Any]] = [
    ("/embed", lambda text: {"input_text": text}),
    ("/v1/embeddings", lambda text: {"input": text, "model": "all-MiniLM-L6-v2"}),
    (
        "/v1/embeddings",
        lambda text: {"input": [text], "model": "all-MiniLM-L6-v2", "encoding_format": "base64"},
    ),
    ("/v1/embeddings", lambda text: {"input": text, "model": "all-MiniLM-L6-v2", "dimensions": 64}),
]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ServerProcess, ServerProcess]]:
    on = ServerProcess(env={"MODEL_NAME": ""}).start(timeout=START_LIMIT)
    try:
        off = ServerProcess(args=["--cache-size", "0"], env={"MODEL_NAME": ""}).start(timeout=START_LIMIT)
        try:
            yield on, off
        finally:
            off.stop()
    finally:
        on.stop()


async def test_hits_are_byte_for_byte_what_a_miss_returns(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    on, off = servers
    before = await metrics(on.port)
    for text in TEXTS:  # one at a time: every computation has the same shape on both servers
        for path, body in SHAPES:
            miss = await post_json(on.port, path, body(text), limit=120)
            hit = await post_json(on.port, path, body(text), limit=120)
            uncached = await post_json(off.port, path, body(text), limit=120)
            assert miss.status == hit.status == uncached.status == 200, miss.body
            assert hit.body == miss.body == uncached.body, (path, text)
    after = await metrics(on.port)
    key = 'batcher_cache_requests_total{model="sentence-transformers/all-MiniLM-L6-v2",result="%s"}'
    assert after[key % "miss"] - before[key % "miss"] == len(TEXTS)  # computed once per text
    assert after[key % "hit"] - before[key % "hit"] == len(TEXTS) * (2 * len(SHAPES) - 1)
    off_metrics = await metrics(off.port)
    assert off_metrics[key % "hit"] == 0


async def test_health_reports_the_cache(servers: tuple[ServerProcess, ServerProcess]) -> None:
    on, off = servers
    from tests.serverproc import get

    cache = (await get(on.port, "/health")).json()["cache"]
    assert cache["capacity_bytes"] == 128 << 20
    assert cache["entries"] >= 1 and cache["bytes"] == cache["entries"] * (384 * 4 + 384)
    assert 0 < cache["hit_ratio"] <= 1
    assert (await get(off.port, "/health")).json()["cache"]["capacity_bytes"] == 0
