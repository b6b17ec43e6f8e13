"""The embedding cache and the coalescing of identical texts in flight, on a virtual clock."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Sequence

import numpy as np
import pytest
import trio
import trio.testing

from tests.fakes import FakeEmbedder, make_service, model_busy, running, text_vector
from trio_infer.core.cache import ENTRY_OVERHEAD, VectorCache, cache_key, model_salt
from trio_infer.core.errors import InputTooLong, RequestTimeout
from trio_infer.core.jobs import Vector
from trio_infer.core.metrics import Metrics
from trio_infer.core.priority import Priority
from trio_infer.core.service import EmbeddingService

ENTRY = FakeEmbedder.dimension * 4 + ENTRY_OVERHEAD  # bytes one fake vector costs in the cache


def cache_sample(service: EmbeddingService, name: str, **labels: str) -> float | None:
    return service.metrics.registry.get_sample_value(name, {"model": FakeEmbedder.name, **labels})


async def test_a_repeated_text_is_answered_from_the_cache(autojump_clock: trio.abc.Clock) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder, cache_size=100 * ENTRY)
    async with running(service):
        first = (await service.embed(["hello there"]))[0]
        computed = len(embedder.batches)
        ticket = service.admit(["hello there"])
        assert ticket.jobs[0].done.is_set()  # answered at admission: no queue, no model turn
        again = (await service.wait(ticket))[0]
    assert len(embedder.batches) == computed
    assert first.vector is not None and again.vector is not None
    assert again.vector.tobytes() == first.vector.tobytes()
    assert again.n_tokens == first.n_tokens == 4
    assert cache_sample(service, "batcher_cache_requests_total", result="hit") == 1
    assert cache_sample(service, "batcher_cache_requests_total", result="miss") == 1
    assert cache_sample(service, "batcher_cache_entries") == 1
    assert cache_sample(service, "batcher_cache_bytes") == ENTRY
    assert service.batcher.cache.health()["hit_ratio"] == 0.5


async def test_a_cached_vector_cannot_be_changed_by_its_reader(autojump_clock: trio.abc.Clock) -> None:
    service = make_service(FakeEmbedder(), cache_size=100 * ENTRY)
    async with running(service):
        await service.embed(["x"])
        vector = (await service.embed(["x"]))[0].vector
        assert vector is not None
        with pytest.raises(ValueError, match="read-only"):
            vector[0] = 0.0


async def test_with_the_cache_off_every_request_is_computed(autojump_clock: trio.abc.Clock) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder, cache_size=0)
    async with running(service):
        for _ in range(3):
            await service.embed(["same"])
    assert embedder.texts_computed == ["same"] * 3
    assert cache_sample(service, "batcher_cache_entries") == 0


def test_the_bound_is_in_bytes_and_the_least_recently_used_goes_first() -> None:
    metrics = Metrics().for_model("m")
    cache = VectorCache(3 * ENTRY, metrics.cache)
    keys = [cache_key(b"salt", f"text {i}") for i in range(4)]
    for key in keys[:3]:
        cache.put(key, text_vector(key.hex()), n_tokens=3, text_tokens=3, exact=True)
    assert cache.get(keys[0]) is not None  # now the most recently used
    cache.put(keys[3], text_vector("new"), n_tokens=3, text_tokens=3, exact=True)
    assert cache.get(keys[1]) is None  # the least recently used went out
    assert all(cache.get(key) is not None for key in (keys[0], keys[2], keys[3]))
    assert cache.bytes == 3 * ENTRY <= cache.capacity
    assert len(cache) == 3


def test_an_entry_costs_no_more_than_it_is_counted() -> None:
    """ENTRY_OVERHEAD covers what CPython really allocates per entry, so --cache-size bounds memory."""
    cache = VectorCache(1 << 30, Metrics().for_model("m").cache)
    vectors = [np.random.default_rng(i).standard_normal(384).astype(np.float32) for i in range(2000)]
    keys = [cache_key(b"salt", f"text {i}") for i in range(2000)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for key, vector in zip(keys, vectors, strict=True):
        cache.put(key, vector, n_tokens=12, text_tokens=12, exact=True)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert used <= cache.bytes, (used, cache.bytes)
    assert cache.bytes == 2000 * (384 * 4 + ENTRY_OVERHEAD)


def test_keys_differ_for_every_option_and_model() -> None:
    salt = model_salt("m", "torch", "float32", 384)
    base = cache_key(salt, "query: hello")
    assert cache_key(salt, "query: hello") == base
    assert cache_key(salt, "passage: hello") != base  # another prompt
    assert cache_key(salt, "query: hello", True) != base  # another reading option
    assert cache_key(model_salt("m", "onnx", "int8", 384), "query: hello") != base
    assert cache_key(model_salt("other", "torch", "float32", 384), "query: hello") != base
    assert len(base) == 16


async def test_a_cached_long_text_sent_without_truncation_is_still_refused(
    autojump_clock: trio.abc.Clock,
) -> None:
    embedder = FakeEmbedder()
    embedder.max_tokens = 8
    service = make_service(embedder, cache_size=100 * ENTRY)
    long_text = " ".join(["word"] * 20)
    async with running(service):
        await service.embed([long_text])  # truncated and cached
        with pytest.raises(InputTooLong, match="22 tokens"):
            await service.embed([long_text], truncate=False)
        assert (await service.embed(["short"], truncate=False))[0].vector is not None


async def test_identical_texts_in_one_list_are_computed_once(autojump_clock: trio.abc.Clock) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder)
    async with running(service):
        jobs = await service.embed(["a b", "c", "a b", "a b"])
    assert sorted(embedder.texts_computed) == ["a b", "c"]
    vectors = [job.vector for job in jobs]
    assert all(v is not None for v in vectors)
    assert vectors[0] is vectors[2] is vectors[3]
    assert cache_sample(service, "batcher_cache_requests_total", result="coalesced") == 2


async def test_identical_texts_across_requests_are_computed_once(autojump_clock: trio.abc.Clock) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder)
    results: list[bytes] = []

    async def one() -> None:
        vector = (await service.embed(["popular query"]))[0].vector
        assert vector is not None
        results.append(vector.tobytes())

    async with running(service), model_busy(service, embedder) as busy:
        for _ in range(5):
            busy.start_soon(one)
        await trio.sleep(0.01)
        assert service.batcher.queue_size == 1
    assert embedder.texts_computed.count("popular query") == 1
    assert len(results) == 5 and len(set(results)) == 1


async def test_the_others_still_get_the_vector_when_the_first_caller_leaves(
    autojump_clock: trio.abc.Clock,
) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder)
    got: list[object] = []
    async with running(service), model_busy(service, embedder) as busy:
        first = trio.CancelScope()

        async def leaves() -> None:
            with first:
                await service.embed(["shared"])

        async def stays() -> None:
            got.append((await service.embed(["shared"]))[0].vector)

        busy.start_soon(leaves)
        await trio.sleep(0.01)
        busy.start_soon(stays)
        await trio.sleep(0.01)
        first.cancel()
        await trio.sleep(0.01)
        assert service.batcher.queue_size == 1  # still wanted
    assert len(got) == 1 and got[0] is not None
    assert embedder.texts_computed.count("shared") == 1


async def test_a_deadline_passing_for_one_caller_affects_only_that_caller(
    autojump_clock: trio.abc.Clock,
) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder)
    outcomes: dict[str, object] = {}

    async def one(name: str, limit: float) -> None:
        try:
            outcomes[name] = (await service.embed(["shared"], time_limit=limit))[0].vector
        except RequestTimeout as error:
            outcomes[name] = error

    async with running(service), model_busy(service, embedder) as busy:
        busy.start_soon(one, "short", 0.5)
        busy.start_soon(one, "long", 4.0)
        await trio.sleep(1.0)
    assert isinstance(outcomes["short"], RequestTimeout)
    assert isinstance(outcomes["long"], np.ndarray)
    assert embedder.texts_computed.count("shared") == 1


async def test_a_text_whose_callers_all_left_during_its_pass_is_still_stored(
    autojump_clock: trio.abc.Clock,
) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder, cache_size=100 * ENTRY)
    async with running(service) as nursery:
        embedder.gate = trio.Event()
        scope = trio.CancelScope()

        async def leaves() -> None:
            with scope:
                await service.embed(["computed for nobody"])

        nursery.start_soon(leaves)
        await embedder.started.wait()  # its pass is running
        scope.cancel()
        await trio.sleep(0.01)
        embedder.gate.set()
        embedder.gate = None
        await trio.sleep(0.1)
        computed = len(embedder.batches)
        ticket = service.admit(["computed for nobody"])
        assert ticket.jobs[0].done.is_set()
    assert len(embedder.batches) == computed == 1


async def test_a_text_whose_callers_all_left_before_its_pass_is_never_computed(
    autojump_clock: trio.abc.Clock,
) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder, cache_size=100 * ENTRY)
    async with running(service), model_busy(service, embedder) as busy:
        scopes = [trio.CancelScope() for _ in range(3)]

        async def leaves(scope: trio.CancelScope) -> None:
            with scope:
                await service.embed(["nobody waits"])

        for scope in scopes:
            busy.start_soon(leaves, scope)
        await trio.sleep(0.01)
        for scope in scopes:
            scope.cancel()
        await trio.sleep(0.01)
        assert service.batcher.queue_size == 0
        # A caller arriving afterwards gets a job of its own (the abandoned one cannot be joined).
        busy.start_soon(service.embed, ["nobody waits"])
        await trio.sleep(0.01)
    assert embedder.texts_computed.count("nobody waits") == 1


async def test_drain_answers_coalesced_callers(autojump_clock: trio.abc.Clock) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder)
    answered = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(service.batcher.run)
        tickets = [service.admit([f"text {i % 4}"], priority=Priority(i % 2)) for i in range(20)]
        service.batcher.close()
        for ticket in tickets:
            jobs = await service.wait(ticket)
            answered += jobs[0].vector is not None
    assert answered == 20
    assert sorted(embedder.texts_computed) == [f"text {i}" for i in range(4)]


async def test_a_hit_needs_no_room_in_a_full_queue(autojump_clock: trio.abc.Clock) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder, cache_size=100 * ENTRY, max_queue_size=2)
    async with running(service):
        await service.embed(["cached"])
        async with model_busy(service, embedder):
            service.admit(["fills 1", "fills 2"])
            assert (await service.embed(["cached"]))[0].vector is not None


async def test_a_vector_is_never_returned_for_other_reading_options(autojump_clock: trio.abc.Clock) -> None:
    """normalize and truncation_direction change the vector: each has its own entry (and its own job in
    flight); a prompt is part of the text, so it keys apart too."""

    class Unnormalised(FakeEmbedder):
        normalizes = True  # its pipeline ends in Normalize: `embed` returns vectors before it

        async def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]:
            return [3.0 * vector for vector in await super().embed(texts, token_ids)]

    embedder = Unnormalised()
    service = make_service(embedder, cache_size=100 * ENTRY)
    async with running(service):
        unit = (await service.embed(["text"]))[0].vector
        raw = (await service.embed(["text"], normalize=False))[0].vector
        left = (await service.embed(["text"], truncate_left=True))[0].vector
        prompted = (await service.embed(["query: text"]))[0].vector
        again = [(await service.embed(["text"], normalize=n))[0].vector for n in (True, False)]
    assert unit is not None and raw is not None and left is not None and prompted is not None
    assert float(np.linalg.norm(unit)) == pytest.approx(1.0) and float(np.linalg.norm(raw)) == pytest.approx(
        3.0
    )
    assert embedder.texts_computed == ["text", "text", "text", "query: text"]  # four keys, four passes
    assert again[0] is not None and again[0].tobytes() == unit.tobytes()
    assert again[1] is not None and again[1].tobytes() == raw.tobytes()
