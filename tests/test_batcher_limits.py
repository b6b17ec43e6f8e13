"""The one bound on waiting work, the watchdog and the shutdown deadline, on a virtual clock."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from tests.fakes import FakeEmbedder, make_service
from trio_infer.config import Settings
from trio_infer.core.batching import ShutdownStalled
from trio_infer.core.errors import Overloaded
from trio_infer.core.served_model import FAILED_PASSES_UNHEALTHY
from trio_infer.core.service import EmbeddingService

SETTINGS = Settings(request_timeout=600.0, graceful_timeout=2.0, watchdog_timeout=5.0)


async def started(service: EmbeddingService, nursery: trio.Nursery) -> EmbeddingService:
    await nursery.start(service.batcher.run)
    await nursery.start(service.monitor)
    service.lifecycle.mark_ready()
    return service


async def test_tokenized_texts_waiting_for_the_model_still_count_against_the_queue_bound(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    embedder = FakeEmbedder()
    service = await started(make_service(embedder, SETTINGS, max_queue_size=4, max_batch_size=2), nursery)
    embedder.gate = trio.Event()
    nursery.start_soon(service.embed, ["busy"])
    await embedder.started.wait()
    for i in range(4):
        nursery.start_soon(service.embed, [f"queued {i}"])
    await trio.sleep(1.0)
    # All four were tokenized ahead (4 = 2 batches' worth, within the window) and none has run.
    assert len(service.batcher.dispatch.prepared) == 4
    assert service.batcher.queue_size == 4
    with pytest.raises(Overloaded):
        service.admit(["one too many"])
    assert (
        service.metrics.registry.get_sample_value(
            "batcher_queue_size", {"model": "fake-model", "priority": "interactive"}
        )
        == 4
    )
    embedder.gate.set()
    await trio.sleep(1.0)
    assert service.batcher.queue_size == 0
    await service.embed(["room again"])


async def test_withdrawn_texts_stop_counting_at_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    embedder = FakeEmbedder()
    service = await started(make_service(embedder, SETTINGS, max_queue_size=3), nursery)
    embedder.gate = trio.Event()
    nursery.start_soon(service.embed, ["busy"])
    await embedder.started.wait()
    with trio.move_on_after(0.5):  # a client that gives up while queued
        await service.embed(["a", "b", "c"])
    ticket = service.admit(["x", "y", "z"])  # fits: the three withdrawn texts no longer count
    embedder.gate.set()
    jobs = await service.wait(ticket)
    assert all(job.vector is not None for job in jobs)
    assert not {"a", "b", "c"} & set(embedder.texts_computed)


async def test_a_hung_tokenizer_trips_the_watchdog_and_the_reason_says_so(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    embedder = FakeEmbedder()
    service = await started(make_service(embedder, SETTINGS, max_batch_size=4), nursery)
    embedder.gate = trio.Event()
    nursery.start_soon(service.embed, ["busy"])
    await embedder.started.wait()
    embedder.tokenize_gate = trio.Event()  # the next tokenization hangs
    nursery.start_soon(lambda: service.embed(["stuck one", "stuck two"], request_id="req-tok"))
    await trio.sleep(1.0)
    embedder.gate.set()  # the forward pass ends; the tokenization does not
    await trio.sleep(1.0)
    assert service.healthy()
    with caplog.at_level(logging.ERROR, logger="trio_infer.core.served_model"):
        await trio.sleep(SETTINGS.watchdog_timeout + 5.0)
    health = service.health()
    assert health["status"] == "unhealthy"
    assert "tokenization of 2 text(s)" in str(health["reason"])
    assert service.metrics.registry.get_sample_value("trio_infer_healthy") == 0
    trips = [r.getMessage() for r in caplog.records if "watchdog" in r.getMessage()]
    assert len(trips) == 1, trips  # logged once, not once per probe
    assert "tokenization" in trips[0] and "req-tok" in trips[0]
    embedder.tokenize_gate.set()
    await trio.sleep(1.0)
    assert service.healthy() and "reason" not in service.health()


async def test_a_hung_forward_pass_is_logged_once_with_its_age_and_requests(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    embedder = FakeEmbedder()
    service = await started(make_service(embedder, SETTINGS), nursery)
    embedder.gate = trio.Event()
    with caplog.at_level(logging.ERROR, logger="trio_infer.core.served_model"):
        nursery.start_soon(lambda: service.embed(["hangs"], request_id="req-hang"))
        await trio.sleep(3 * SETTINGS.watchdog_timeout)
    trips = [r.getMessage() for r in caplog.records if "watchdog" in r.getMessage()]
    assert len(trips) == 1, trips
    assert "forward pass of 1 text(s) of model fake-model has run 5.0" in trips[0] and "req-hang" in trips[0]
    assert "forward pass" in str(service.health()["reason"])
    embedder.gate.set()


async def test_failed_passes_in_a_row_make_health_unhealthy_until_one_succeeds(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    embedder = FakeEmbedder(poison=[f"broken {i}" for i in range(FAILED_PASSES_UNHEALTHY)])
    service = await started(make_service(embedder, SETTINGS), nursery)
    for i in range(FAILED_PASSES_UNHEALTHY - 1):
        with pytest.raises(Exception, match="inference failed"):
            await service.embed([f"broken {i}"])
    assert service.healthy()
    with caplog.at_level(logging.ERROR, logger="trio_infer.core.served_model"):
        with pytest.raises(Exception, match="inference failed"):
            await service.embed([f"broken {FAILED_PASSES_UNHEALTHY - 1}"])
        await trio.sleep(0.2)
    health = service.health()
    assert health["status"] == "unhealthy"
    assert health["reason"] == f"the last {FAILED_PASSES_UNHEALTHY} forward passes failed"
    assert not service.ready()
    trips = [r for r in caplog.records if r.name == "trio_infer.core.served_model"]
    assert (
        len(trips) == 1
        and f"{FAILED_PASSES_UNHEALTHY} forward passes failed in a row (model fake-model)"
        in trips[0].getMessage()
    )
    await service.embed(["works again"])
    assert service.healthy()


async def test_a_pass_hung_at_shutdown_is_abandoned_at_the_deadline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder, SETTINGS)
    embedder.gate = trio.Event()  # never set: the pass hangs
    outcome: list[BaseException] = []
    ended = trio.Event()

    async def run_batcher(task_status: trio.TaskStatus[None]) -> None:
        try:
            await service.batcher.run(task_status=task_status)
        except* ShutdownStalled as group:
            outcome.extend(group.exceptions)
        ended.set()

    await nursery.start(run_batcher)
    ticket = service.admit(["hangs"])
    await embedder.started.wait()
    start = trio.current_time()
    service.batcher.close(deadline=start + 3.0)
    with trio.fail_after(10):
        await ended.wait()
    assert len(outcome) == 1
    assert trio.current_time() - start == pytest.approx(3.0, abs=0.11)
    assert not ticket.jobs[0].done.is_set()  # its caller is answered by its own drain deadline


async def test_a_drain_that_finishes_in_time_returns_normally(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    embedder = FakeEmbedder()
    service = make_service(embedder, SETTINGS)
    done = trio.Event()

    async def run_batcher(task_status: trio.TaskStatus[None]) -> None:
        await service.batcher.run(task_status=task_status)
        done.set()

    await nursery.start(run_batcher)
    ticket = service.admit(["quick", "ones"])
    service.batcher.close(deadline=trio.current_time() + 3.0)
    with trio.fail_after(1):
        await done.wait()
    assert all(job.vector is not None for job in ticket.jobs)
