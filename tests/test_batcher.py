"""Batcher behaviour on a virtual clock with a pure-trio fake model."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import numpy as np
import pytest
import trio
import trio.testing

from tests.fakes import FAKE_COST, FakeEmbedder, make_service, text_vector
from trio_infer.core.errors import Draining, InferenceFailed, Overloaded, RequestTimeout
from trio_infer.core.jobs import Job
from trio_infer.core.service import EmbeddingService


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder(poison=["POISON"])


@pytest.fixture
async def service(embedder: FakeEmbedder, nursery: trio.Nursery) -> AsyncIterator[EmbeddingService]:
    service = make_service(embedder, max_batch_size=8, max_batch_tokens=256)
    await nursery.start(service.batcher.run)
    service.lifecycle.mark_ready()
    yield service
    service.batcher.close()


@asynccontextmanager
async def model_busy(
    service: EmbeddingService, embedder: FakeEmbedder, first: str = "warm up"
) -> AsyncIterator[trio.Nursery]:
    """A nursery in which `first` holds the model busy: what is submitted inside queues behind it. The
    model is released when the block ends (or earlier by `embedder.gate.set()`)."""
    embedder.gate = trio.Event()
    embedder.started = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.embed, [first])
        await embedder.started.wait()
        yield nursery
        embedder.gate.set()


def sample(service: EmbeddingService, name: str, **labels: str) -> float | None:
    """A batcher series of the one (fake) model."""
    labels = {"model": FakeEmbedder.name, **labels}
    if name.startswith(
        ("batcher_requests", "batcher_skipped", "batcher_queue_size", "batcher_request_latency")
    ):
        labels.setdefault("priority", "interactive")
    return service.metrics.registry.get_sample_value(name, labels)


def words(count: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(count))


async def embed_all(
    service: EmbeddingService, texts: Sequence[str], *, stagger: float = 0.0
) -> dict[str, object]:
    """Embed each text as its own concurrent request; map text -> vector, or the error raised."""
    results: dict[str, object] = {}

    async def one(text: str) -> None:
        try:
            jobs = await service.embed([text])
            results[text] = jobs[0].vector
        except Exception as error:  # the test inspects which errors reached which caller
            results[text] = error

    async with trio.open_nursery() as nursery:
        for text in texts:
            nursery.start_soon(one, text)
            if stagger:
                await trio.sleep(stagger)
    return results


async def test_lone_request_on_idle_model_does_not_wait(
    service: EmbeddingService, embedder: FakeEmbedder, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    jobs = await service.embed(["hello there"])
    elapsed = trio.current_time() - start
    # Exactly one forward pass of 1 x 4 tokens; no batch-timeout wait (0.05 s) on top.
    assert elapsed == pytest.approx(FAKE_COST.batch_cost(1, 4))
    assert embedder.batches == [["hello there"]]
    np.testing.assert_allclose(jobs[0].vector, text_vector("hello there"))


async def test_batches_grow_while_the_model_is_busy(
    service: EmbeddingService, embedder: FakeEmbedder, autojump_clock: trio.testing.MockClock
) -> None:
    async with model_busy(service, embedder, first="first") as nursery:
        texts = [words(5, f"t{i}_") for i in range(6)]
        for text in texts:
            nursery.start_soon(service.embed, [text])
        await trio.sleep(1.0)  # far past the batch timeout: they must still be served together
        assert service.batcher.queue_size == 6
        embedder.gate.set()
    assert embedder.batches[0] == ["first"]
    assert sorted(embedder.batches[1]) == sorted(texts)
    assert len(embedder.batches) == 2


async def test_batch_timeout_does_not_hold_texts_that_arrive_while_the_model_is_busy(
    embedder: FakeEmbedder, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    service = make_service(embedder, batch_timeout=1.0)
    await nursery.start(service.batcher.run)
    embedder.gate = trio.Event()
    done: dict[str, float] = {}
    waiting_done = trio.Event()

    async def timed(text: str) -> None:
        await service.embed([text])
        done[text] = trio.current_time()
        if text == "waiting":
            waiting_done.set()

    nursery.start_soon(timed, "busy")
    await embedder.started.wait()  # after the 1 s wait for batch-mates on the idle model
    nursery.start_soon(timed, "waiting")
    await trio.sleep(0.5)
    release = trio.current_time()
    embedder.gate.set()
    with trio.fail_after(5):
        await waiting_done.wait()
    # Served by the pass right after the running one, not a batch timeout later.
    assert done["waiting"] - release < 0.1
    assert embedder.batches == [["busy"], ["waiting"]]


@pytest.mark.parametrize(("batch_timeout", "passes"), [(0.2, 1), (0.0, 4)])
async def test_batch_timeout_gathers_batch_mates_for_an_idle_model(
    batch_timeout: float,
    passes: int,
    embedder: FakeEmbedder,
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
) -> None:
    service = make_service(embedder, batch_timeout=batch_timeout)
    await nursery.start(service.batcher.run)
    texts = [f"text number {i}" for i in range(4)]
    # A pass of one text takes 12.5 ms: each text finds the model idle when it arrives.
    results = await embed_all(service, texts, stagger=0.02)
    assert len(embedder.batches) == passes
    assert sorted(embedder.texts_computed) == sorted(texts)
    for text in texts:
        np.testing.assert_allclose(results[text], text_vector(text))


async def test_batch_timeout_ends_early_once_a_full_batch_waits(
    embedder: FakeEmbedder, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    service = make_service(embedder, batch_timeout=10.0, max_batch_size=4)
    await nursery.start(service.batcher.run)
    start = trio.current_time()
    await embed_all(service, [f"full batch {i}" for i in range(4)], stagger=0.01)
    assert trio.current_time() - start < 1.0
    assert len(embedder.batches) == 1


async def test_a_lone_text_on_an_idle_model_takes_one_model_call(
    service: EmbeddingService, embedder: FakeEmbedder, autojump_clock: trio.testing.MockClock
) -> None:
    await service.embed(["alone"])
    assert embedder.one_hop_calls == 1
    async with model_busy(service, embedder, first="busy") as nursery:
        for i in range(3):
            nursery.start_soon(service.embed, [f"queued {i}"])
        await trio.sleep(0.1)
    # Texts that queued behind a pass were tokenized while it ran and share one forward pass.
    assert embedder.one_hop_calls == 2
    assert sorted(embedder.batches[-1]) == [f"queued {i}" for i in range(3)]


async def test_num_batching_workers_widens_the_window_each_pass_is_planned_over(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # Short and long texts alternate in arrival order, all queued behind a busy model.
    texts = [words(60 if i % 2 else 2, f"m{i}_") for i in range(16)]
    passes: dict[int, list[list[str]]] = {}
    for batches_ahead in (1, 4):
        embedder = FakeEmbedder()
        service = make_service(embedder, max_batch_size=4, num_workers=batches_ahead)
        await nursery.start(service.batcher.run)
        async with model_busy(service, embedder, first="busy") as inner:
            inner.start_soon(partial(embed_all, service, texts, stagger=0.001))
            await trio.sleep(0.2)
        service.batcher.close()
        passes[batches_ahead] = embedder.batches[1:]
        assert sorted(text for batch in passes[batches_ahead] for text in batch) == sorted(texts)
    # Planned over all 16 at once: four full passes, each of one length.
    assert len(passes[4]) == 4
    assert all(len({len(text.split()) for text in batch}) == 1 for batch in passes[4])
    # Planned over four at a time, the short and long texts of each window run apart: more passes.
    assert len(passes[1]) > len(passes[4])


async def test_the_next_pass_starts_when_the_running_one_ends(
    embedder: FakeEmbedder, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    embedder.tokenize_seconds = 0.005
    service = make_service(embedder, max_batch_size=4)
    await nursery.start(service.batcher.run)
    async with model_busy(service, embedder, first="busy") as nursery2:
        nursery2.start_soon(embed_all, service, [f"next {i}" for i in range(4)])
        await trio.sleep(0.2)
    # The four were tokenized while "busy" ran: no tokenization between the two passes.
    first_end = embedder.pass_times[0][1]
    second_start = embedder.pass_times[1][0]
    assert second_start == first_end


async def test_size_cap_and_token_budget(
    service: EmbeddingService, embedder: FakeEmbedder, autojump_clock: trio.testing.MockClock
) -> None:
    async with model_busy(service, embedder) as nursery:
        texts = [words(n, f"s{i}_") for i, n in enumerate([3, 40, 5, 70, 4, 6, 3, 50, 8] * 3)]
        nursery.start_soon(embed_all, service, texts)
        await trio.sleep(0.2)
        embedder.gate.set()
    for batch in embedder.batches[1:]:
        lengths = [len(text.split()) + 2 for text in batch]
        assert len(batch) <= 8
        if len(batch) > 1:
            assert len(batch) * max(lengths) <= 256


async def test_batches_group_texts_of_similar_length(
    service: EmbeddingService, embedder: FakeEmbedder, autojump_clock: trio.testing.MockClock
) -> None:
    async with model_busy(service, embedder) as nursery:
        texts = [words(n, f"o{i}_") for i, n in enumerate([60, 2, 30, 3, 61, 2, 29, 4])]
        nursery.start_soon(embed_all, service, texts)
        await trio.sleep(0.2)
        embedder.gate.set()
    ranges = [
        (min(len(t.split()) for t in batch), max(len(t.split()) for t in batch))
        for batch in embedder.batches[1:]
    ]
    # Each pass is a run of the length-sorted texts: short texts are never padded to the long ones.
    for low, high in ranges:
        assert not (low <= 4 and high >= 29), ranges
    for (low_a, high_a), (low_b, high_b) in itertools.combinations(ranges, 2):
        assert high_a < low_b or high_b < low_a, ranges
    assert sorted(text for batch in embedder.batches[1:] for text in batch) == sorted(texts)


async def test_the_oldest_text_is_served_first(
    service: EmbeddingService, embedder: FakeEmbedder, autojump_clock: trio.testing.MockClock
) -> None:
    async with model_busy(service, embedder) as nursery:
        long_text = words(90, "long")
        nursery.start_soon(service.embed, [long_text])
        await trio.sleep(0.01)
        for i in range(6):
            nursery.start_soon(service.embed, [words(3, f"short{i}_")])
        await trio.sleep(0.2)
        embedder.gate.set()
    assert embedder.batches[1] == [long_text]


async def test_texts_arriving_during_a_pass_join_the_next_plan(
    service: EmbeddingService, embedder: FakeEmbedder, autojump_clock: trio.testing.MockClock
) -> None:
    async with model_busy(service, embedder) as nursery:
        first = [words(3, f"a{i}_") for i in range(3)] + [words(80, "longest")]
        for text in first:
            nursery.start_soon(service.embed, [text])
        await trio.sleep(0.2)
        embedder.gate.set()
        await trio.sleep(0.001)  # the three short texts are in a forward pass now
        late = [words(80, f"late{i}_") for i in range(2)]  # 3 x 82 tokens fit the 256 budget
        for text in late:
            nursery.start_soon(service.embed, [text])
    # The late long texts were planned with the waiting long one, not left for a later round.
    assert any(set(late) | {words(80, "longest")} <= set(batch) for batch in embedder.batches), (
        embedder.batches
    )


async def test_oversize_single_text_is_served(
    service: EmbeddingService, embedder: FakeEmbedder, autojump_clock: trio.testing.MockClock
) -> None:
    text = words(400)  # 402 tokens > 256 budget
    jobs = await service.embed([text])
    np.testing.assert_allclose(jobs[0].vector, text_vector(text))


async def test_each_caller_gets_its_own_result(
    service: EmbeddingService, embedder: FakeEmbedder, autojump_clock: trio.testing.MockClock
) -> None:
    texts = [words(n, f"r{n}_") for n in range(1, 40)]
    results = await embed_all(service, texts, stagger=0.001)
    for text in texts:
        np.testing.assert_allclose(results[text], text_vector(text))
    assert sorted(embedder.texts_computed) == sorted(texts)


async def test_failing_batch_fails_only_the_poison_input(
    service: EmbeddingService, embedder: FakeEmbedder, autojump_clock: trio.testing.MockClock
) -> None:
    async with model_busy(service, embedder) as nursery:
        texts = ["POISON", "good one", "good two", "good three"]
        results: dict[str, object] = {}

        async def run() -> None:
            results.update(await embed_all(service, texts))

        nursery.start_soon(run)
        await trio.sleep(0.2)
        embedder.gate.set()
    assert any(set(texts) <= set(batch) for batch in embedder.batches), "they were batched together"
    assert isinstance(results["POISON"], InferenceFailed)
    for text in texts[1:]:
        np.testing.assert_allclose(results[text], text_vector(text))
    assert sample(service, "batcher_requests_total", status="error") == 1
    # The service keeps serving.
    jobs = await service.embed(["after the failure"])
    assert jobs[0].vector is not None


async def test_cancelled_waiting_caller_is_never_computed(
    service: EmbeddingService, embedder: FakeEmbedder, autojump_clock: trio.testing.MockClock
) -> None:
    async with model_busy(service, embedder, first="busy") as nursery:
        with trio.move_on_after(0.1):  # the client goes away while queued
            await service.embed(["gone"])
        nursery.start_soon(service.embed, ["stays"])
        await trio.sleep(0.1)
        embedder.gate.set()
    assert "gone" not in embedder.texts_computed
    assert "stays" in embedder.texts_computed
    assert sample(service, "batcher_requests_total", status="cancelled") == 1
    assert sample(service, "batcher_skipped_total") == 1
    assert service.batcher.queue_size == 0


async def test_request_timeout_gives_504_and_no_compute(
    service: EmbeddingService, embedder: FakeEmbedder, autojump_clock: trio.testing.MockClock
) -> None:
    async with model_busy(service, embedder, first="busy"):
        start = trio.current_time()
        with pytest.raises(RequestTimeout):
            await service.embed(["late"], time_limit=0.5)
        assert trio.current_time() - start == pytest.approx(0.5)
        embedder.gate.set()
    assert "late" not in embedder.texts_computed
    assert sample(service, "batcher_requests_total", status="timeout") == 1


async def test_full_queue_rejects_at_once_with_retry_after(
    embedder: FakeEmbedder, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    service = make_service(embedder, max_queue_size=3, num_workers=1, batch_timeout=0.0)
    await nursery.start(service.batcher.run)
    embedder.gate = trio.Event()
    nursery.start_soon(service.embed, ["busy"])
    await embedder.started.wait()
    for i in range(3):
        nursery.start_soon(service.embed, [f"queued {i}"])
    await trio.sleep(0.01)
    with pytest.raises(Overloaded) as caught:
        await service.embed(["one too many"])
    assert caught.value.status == 503
    assert caught.value.retry_after_header is not None
    assert int(caught.value.retry_after_header) >= 1
    assert sample(service, "batcher_requests_total", status="rejected") == 1
    embedder.gate.set()


async def test_predicted_wait_past_deadline_is_rejected(
    embedder: FakeEmbedder, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    service = make_service(embedder, max_batch_size=1, num_workers=1)
    await nursery.start(service.batcher.run)
    await service.embed(["measure the rate"])  # the service rate is now known: ~70 texts/s
    embedder.gate = trio.Event()
    for i in range(100):
        nursery.start_soon(service.embed, [f"backlog {i}"])
    await trio.sleep(0.01)
    with pytest.raises(Overloaded) as caught:
        await service.embed(["cannot make it"], time_limit=0.2)
    assert caught.value.retry_after is not None and caught.value.retry_after > 0.2
    embedder.gate.set()


async def test_close_serves_queued_jobs_then_refuses(
    embedder: FakeEmbedder, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    service = make_service(embedder)
    await nursery.start(service.batcher.run)
    embedder.gate = trio.Event()
    jobs: list[Job] = service.batcher.submit(["a", "b b", "c c c"], deadline=trio.current_time() + 10)
    service.batcher.close()
    with pytest.raises(Draining):
        service.batcher.submit(["late"], deadline=trio.current_time() + 10)
    embedder.gate.set()
    for job in jobs:
        await job.done.wait()
        assert job.vector is not None


async def test_list_request_items_join_other_requests_batches(
    service: EmbeddingService, embedder: FakeEmbedder, autojump_clock: trio.testing.MockClock
) -> None:
    async with model_busy(service, embedder, first="busy") as nursery:
        nursery.start_soon(service.embed, ["list one", "list two"])
        nursery.start_soon(service.embed, ["single"])
        await trio.sleep(0.1)
        embedder.gate.set()
    assert sorted(embedder.batches[1]) == ["list one", "list two", "single"]
