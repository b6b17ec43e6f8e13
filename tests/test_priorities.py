"""Priority classes and fair share between callers, on a virtual clock with a pure-trio fake model."""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.lowlevel
import trio.testing

from tests.fakes import FAKE_COST, FakeEmbedder, make_service, model_busy, running
from trio_infer.core.errors import Overloaded, RequestTimeout
from trio_infer.core.formation import CostModel
from trio_infer.core.priority import Priority
from trio_infer.core.scheduler import DeviceScheduler
from trio_infer.core.service import EmbeddingService, Ticket

BULK = Priority.BULK
INTERACTIVE = Priority.INTERACTIVE


def words(count: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(count))


def sample(service: EmbeddingService, name: str, **labels: str) -> float | None:
    return service.metrics.registry.get_sample_value(name, {"model": FakeEmbedder.name, **labels})


async def test_interactive_texts_run_before_bulk_ones_queued_earlier(autojump_clock: trio.abc.Clock) -> None:
    embedder = FakeEmbedder()
    # Bulk texts longer than the query: they cannot ride along without padding it.
    service = make_service(embedder, max_batch_size=4, max_batch_tokens=256)
    async with running(service), model_busy(service, embedder) as busy:
        for i in range(12):
            busy.start_soon(lambda i=i: service.embed([words(20, f"b{i}-")], priority=BULK))
        await trio.sleep(0.01)
        busy.start_soon(lambda: service.embed(["the query"], priority=INTERACTIVE))
        await trio.sleep(0.01)
    order = embedder.texts_computed
    assert order.index("the query") == 1  # the first text after the pass that was running
    assert len(order) == 14


async def test_bulk_texts_fill_an_interactive_pass_without_padding_it(autojump_clock: trio.abc.Clock) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder, max_batch_size=8, max_batch_tokens=256)
    async with running(service), model_busy(service, embedder) as busy:
        busy.start_soon(lambda: service.embed(["short bulk text"], priority=BULK))
        busy.start_soon(lambda: service.embed([words(30, "long")], priority=BULK))
        await trio.sleep(0.01)
        busy.start_soon(lambda: service.embed(["a query of four words"], priority=INTERACTIVE))
        await trio.sleep(0.01)
    # The short bulk text joins the query's pass; the long one, which would pad it, runs after.
    assert embedder.batches[1] == ["a query of four words", "short bulk text"]
    assert embedder.batches[2] == [words(30, "long")]


async def sustained_interactive_load(service: EmbeddingService, seconds: float) -> None:
    """For `seconds`, 8 closed-loop interactive callers keep the model busy while 4 closed-loop bulk
    callers always have texts waiting (a bulk text that times out is sent again)."""

    async def loop(tag: str, priority: Priority, length: int) -> None:
        n = 0
        while True:
            with contextlib.suppress(RequestTimeout):
                await service.embed([words(length, f"{tag}-{n}-")], priority=priority)
            n += 1

    async with trio.open_nursery() as load:
        for c in range(8):
            load.start_soon(loop, f"query{c}", INTERACTIVE, 3)
        await trio.sleep(0.05)
        for c in range(4):
            load.start_soon(loop, f"bulk{c}", BULK, 40)
        await trio.sleep(seconds)
        load.cancel_scope.cancel()


def bulk_time_share(embedder: FakeEmbedder, after: float) -> float:
    bulk = total = 0.0
    for batch, (start, end) in zip(embedder.batches, embedder.pass_times, strict=True):
        if start < after:
            continue
        total += end - start
        if any(text.startswith("bulk") for text in batch):
            bulk += end - start
    return bulk / total


@pytest.mark.parametrize("min_share", [0.1, 0.3])
async def test_bulk_gets_its_minimum_share_under_sustained_interactive_load(
    autojump_clock: trio.abc.Clock, min_share: float
) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder, max_batch_size=4, max_batch_tokens=512, bulk_min_share=min_share)
    async with running(service):
        await sustained_interactive_load(service, 20.0)
    share = bulk_time_share(embedder, after=1.0)
    # At least the share (the decayed accounting allows a little under); and interactive texts keep
    # most of the device: the overshoot is the granularity of one bulk pass.
    assert min_share * 0.8 <= share <= min_share + 0.1, share


async def test_without_a_minimum_share_bulk_waits_while_interactive_texts_keep_coming(
    autojump_clock: trio.abc.Clock,
) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder, max_batch_size=4, max_batch_tokens=512, bulk_min_share=0.0)
    async with running(service):
        await sustained_interactive_load(service, 5.0)
    assert bulk_time_share(embedder, after=1.0) == 0.0


async def test_callers_take_turns_within_a_class(autojump_clock: trio.abc.Clock) -> None:
    """One caller's 40-text list does not hold back another caller's single text."""
    embedder = FakeEmbedder()
    # One batch of texts is tokenized ahead of the model (the window): what fairness orders is the rest.
    service = make_service(embedder, max_batch_size=4, max_batch_tokens=512, num_workers=1)
    async with running(service), model_busy(service, embedder) as busy:
        busy.start_soon(
            lambda: service.embed([f"a{i} x" for i in range(40)], priority=BULK, caller="indexer")
        )
        await trio.sleep(0.01)
        busy.start_soon(lambda: service.embed(["b0 x"], priority=BULK, caller="other"))
        busy.start_soon(lambda: service.embed(["c0 x", "c1 x"], priority=BULK, caller="third"))
        await trio.sleep(0.01)
    passes = [set(batch) for batch in embedder.batches[1:]]
    # The first batch was tokenized before the others arrived; from then on the callers take turns.
    assert passes[0] == {"a0 x", "a1 x", "a2 x", "a3 x"}
    assert passes[1] == {"a4 x", "b0 x", "c0 x", "a5 x"}
    assert passes[2] == {"c1 x", "a6 x", "a7 x", "a8 x"}
    assert sorted(embedder.texts_computed[1:]) == sorted(
        [*(f"a{i} x" for i in range(40)), "b0 x", "c0 x", "c1 x"]
    )


async def test_each_class_has_its_own_queue_bound(autojump_clock: trio.abc.Clock) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder, max_batch_size=4, max_queue_size=3, max_bulk_queue_size=5)
    async with running(service), model_busy(service, embedder):
        bulk = service.admit([f"bulk {i}" for i in range(5)], priority=BULK)
        with pytest.raises(Overloaded) as refused:
            service.admit(["bulk more"], priority=BULK)
        assert "bulk queue is full" in refused.value.detail
        assert refused.value.retry_after_header is not None
        # A bulk flood does not refuse an interactive text.
        interactive = service.admit(["q0", "q1", "q2"], priority=INTERACTIVE)
        with pytest.raises(Overloaded, match="interactive queue is full"):
            service.admit(["q3"], priority=INTERACTIVE)
        assert service.batcher.queue_sizes() == {"interactive": 3, "bulk": 5}
    assert sample(service, "batcher_requests_total", priority="bulk", status="rejected") == 1
    assert sample(service, "batcher_requests_total", priority="interactive", status="rejected") == 1
    for ticket in (bulk, interactive):
        assert all(job.vector is not None for job in await service.wait(ticket))


@pytest.mark.parametrize("priority", list(Priority))
async def test_a_queued_text_of_either_class_is_dropped_when_its_caller_leaves(
    autojump_clock: trio.abc.Clock, priority: Priority
) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder)
    async with running(service), model_busy(service, embedder) as busy:
        with trio.CancelScope() as scope:
            busy.start_soon(lambda: service.embed(["stays"], priority=priority))
            await trio.lowlevel.checkpoint()
        leaving = trio.CancelScope()

        async def leaves() -> None:
            with leaving:
                await service.embed(["leaves"], priority=priority)

        busy.start_soon(leaves)
        await trio.sleep(0.01)
        assert service.batcher.queue_sizes()[priority.label] == 2
        leaving.cancel()
        await trio.sleep(0.01)
        assert service.batcher.queue_sizes()[priority.label] == 1
    del scope
    assert "leaves" not in embedder.texts_computed and "stays" in embedder.texts_computed
    assert sample(service, "batcher_requests_total", priority=priority.label, status="cancelled") == 1


async def test_drain_answers_every_admitted_text_of_both_classes(autojump_clock: trio.abc.Clock) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder, max_batch_size=4)
    answered: list[str] = []

    async def one(ticket: Ticket) -> None:
        jobs = await service.wait(ticket)
        assert jobs[0].vector is not None
        answered.append(jobs[0].text)

    async with trio.open_nursery() as nursery:
        await nursery.start(service.batcher.run)
        tickets = [
            service.admit([f"{kind} {i}"], priority=priority)
            for i in range(30)
            for kind, priority in (("bulk", BULK), ("query", INTERACTIVE))
        ]
        service.batcher.close()
        for ticket in tickets:
            nursery.start_soon(one, ticket)
    assert len(answered) == 60
    assert not service.batcher.running


async def test_bulk_passes_are_short_while_interactive_traffic_is_active(
    autojump_clock: trio.abc.Clock,
) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder, max_batch_size=32, max_batch_tokens=1024, bulk_batch_tokens=48)
    texts = [words(10, f"d{i}-") for i in range(64)]  # 12 tokens each
    async with running(service):
        await service.embed(["a query"], priority=INTERACTIVE)
        await service.embed(texts, priority=BULK)
        capped = [len(batch) for batch in embedder.batches[1:]]
        await trio.sleep(2.0)  # interactive traffic is no longer active
        del embedder.batches[:]
        await service.embed([f"again {text}" for text in texts], priority=BULK)
    assert max(capped) * 12 <= 48  # count x longest within the bulk budget
    assert max(len(batch) for batch in embedder.batches) > 4  # the full budget when no query waits


async def test_an_interactive_caller_joining_a_queued_bulk_text_promotes_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder, max_batch_size=2, max_batch_tokens=256)
    async with running(service), model_busy(service, embedder) as busy:
        for i in range(6):
            busy.start_soon(lambda i=i: service.embed([words(8, f"bulk{i}-")], priority=BULK))
        await trio.sleep(0.01)
        shared = words(8, "bulk5-")
        busy.start_soon(lambda: service.embed([shared], priority=INTERACTIVE))
        await trio.sleep(0.01)
        assert service.batcher.queue_sizes() == {"interactive": 1, "bulk": 5}
    assert shared in embedder.batches[1]
    assert embedder.texts_computed.count(shared) == 1


async def test_the_device_turn_goes_to_the_most_urgent_class_first() -> None:
    scheduler = DeviceScheduler("cpu")
    order: list[str] = []
    release = trio.Event()

    async def use(name: str, oldest: float, priority: Priority) -> None:
        async with scheduler.turn(oldest, priority):
            order.append(name)
            if name == "holder":
                await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(use, "holder", 0.0, BULK)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(use, "old bulk", 1.0, BULK)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(use, "new query", 5.0, INTERACTIVE)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert order == ["holder", "new query", "old bulk"]


async def test_a_bulk_flood_on_one_model_does_not_delay_another_models_queries(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Two models on one device: the query model's turn comes before the flooded model's next pass."""
    from trio_infer.config import Settings
    from trio_infer.core.batching import Batcher, BatchLimits
    from trio_infer.core.lifecycle import Lifecycle
    from trio_infer.core.metrics import Metrics
    from trio_infer.core.service import ServedModel

    slow = CostModel(fixed=0.05, per_token=0.001)
    metrics = Metrics()
    scheduler = DeviceScheduler("cpu")
    models = []
    for name in ("indexed", "queried"):
        embedder = FakeEmbedder(cost=slow if name == "indexed" else FAKE_COST)
        embedder.name = name
        limits = BatchLimits(max_batch_size=4, max_batch_tokens=512)
        models.append(
            ServedModel(name, name, Batcher(embedder, metrics.for_model(name), limits, slow, scheduler), 60)
        )
    settings = Settings(request_timeout=60.0)
    service = EmbeddingService(settings, models, Lifecycle(graceful_timeout=1.0), metrics)
    indexed, queried = models
    latencies: list[float] = []
    async with trio.open_nursery() as nursery:
        for model in models:
            await nursery.start(model.batcher.run)
        nursery.start_soon(
            lambda: service.embed([words(30, f"doc{i}-") for i in range(200)], model=indexed, priority=BULK)
        )
        await trio.sleep(0.5)
        for i in range(10):
            start = trio.current_time()
            await service.embed([f"query {i}"], model=queried, priority=INTERACTIVE)
            latencies.append(trio.current_time() - start)
            await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    longest_bulk_pass = slow.batch_cost(4, 32)
    assert max(latencies) <= longest_bulk_pass + FAKE_COST.batch_cost(1, 4) + 0.01


async def test_the_predicted_wait_of_a_list_counts_on_batching_after_lone_passes(
    autojump_clock: trio.abc.Clock,
) -> None:
    """After only lone passes (the slowest shape per text), a list is not refused as if it would be
    computed one text at a time: waiting texts are batched."""
    cost = CostModel(fixed=0.05, per_token=0.0001)
    embedder = FakeEmbedder(cost=cost)
    service = make_service(embedder, max_batch_size=32, max_batch_tokens=4096)
    long_text = words(100, "w")  # 102 tokens
    async with running(service):
        for i in range(5):
            await service.embed([f"{i} {long_text}"])
        lone_rate = service.batcher.execution.rate.per_second
        assert lone_rate is not None and lone_rate < 17  # one 102-token text per 60 ms pass
        async with model_busy(service, embedder):
            service.admit([f"a{i} {long_text}" for i in range(256)], priority=BULK)
            predicted = service.batcher.predicted_wait(256)
    batched = 32 / cost.batch_cost(32, 102)
    assert predicted is not None
    assert predicted == pytest.approx(512 / batched, rel=0.05)
    assert predicted < 512 / lone_rate / 3
