"""ThreadedEmbedder and the batcher with real threads: a blocking fake model, the real clock.

Synchronisation is by conditions (threading events the model sets, polled from trio), never sleeps;
the time limits are generous bounds for a loaded machine, not measurements.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np
import trio

from tests.fakes import make_service, text_vector
from trio_infer.config import Settings
from trio_infer.core.formation import CostModel
from trio_infer.core.jobs import Vector
from trio_infer.core.service import EmbeddingService
from trio_infer.models.embedder import ThreadedEmbedder

LIMIT = 30.0  # seconds; only reached when something is broken
SETTINGS = Settings(request_timeout=60.0, graceful_timeout=5.0)


class BlockingModel:
    """A blocking `Model`: records (operation, texts, thread) per call; `hold` makes `embed` block on
    `release` (a busy model), and `embed_started` fires when it does."""

    name = "blocking-fake"
    device = "cpu"
    backend = "fake"
    precision = "none"
    dimension = 8
    max_tokens = 512

    def __init__(self, *, tokenize_in_parallel: bool = False) -> None:
        self.tokenize_in_parallel = tokenize_in_parallel
        self.calls: list[tuple[str, tuple[str, ...], int]] = []
        self.hold = threading.Event()
        self.release = threading.Event()
        self.embed_started = threading.Event()
        self.tokenized = threading.Event()
        self._lock = threading.Lock()

    def _record(self, op: str, texts: Sequence[str]) -> None:
        with self._lock:
            self.calls.append((op, tuple(texts), threading.get_ident()))

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        self._record("tokenize", texts)
        self.tokenized.set()
        return [[101, *[7] * len(text.split()), 102] for text in texts]

    def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        self._record("embed", texts)
        self.embed_started.set()
        if self.hold.is_set():
            assert self.release.wait(LIMIT), "never released"
        return [text_vector(text) for text in texts]

    def ops(self, op: str) -> list[tuple[str, ...]]:
        with self._lock:
            return [texts for name, texts, _ in self.calls if name == op]


class Adapter(ThreadedEmbedder):
    cost = CostModel(fixed=0.01, per_token=0.0005)


async def until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(LIMIT):
        while not condition():  # noqa: ASYNC110 (a thread sets the condition)
            await trio.sleep(0.005)


async def started(model: BlockingModel, nursery: trio.Nursery) -> EmbeddingService:
    service = make_service(Adapter(model), SETTINGS)  # type: ignore[arg-type]
    await nursery.start(service.batcher.run)
    service.lifecycle.mark_ready()
    return service


async def test_a_lone_text_is_tokenized_and_embedded_in_one_thread_call(nursery: trio.Nursery) -> None:
    model = BlockingModel()
    service = await started(model, nursery)
    with trio.fail_after(LIMIT):
        jobs = await service.embed(["just me"])
    np.testing.assert_allclose(jobs[0].vector, text_vector("just me"))
    assert [op for op, _, _ in model.calls] == ["tokenize", "embed"]
    assert model.calls[0][2] == model.calls[1][2]  # the same worker thread, one hop


async def test_cancelled_callers_get_nothing_and_the_others_get_their_vectors(nursery: trio.Nursery) -> None:
    model = BlockingModel()
    service = await started(model, nursery)
    model.hold.set()
    results: dict[str, object] = {}

    async def caller(text: str, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            jobs = await service.embed([text])
            results[text] = jobs[0].vector

    nursery.start_soon(caller, "warm up")
    await until(model.embed_started.is_set)
    model.embed_started.clear()
    leaving = trio.CancelScope()
    nursery.start_soon(caller, "leaves during the pass", leaving)
    nursery.start_soon(caller, "stays for the result")
    model.release.set()  # the warm-up pass ends; the two queued texts share the next pass
    model.release = threading.Event()
    await until(lambda: len(model.ops("embed")) == 2 and model.embed_started.is_set())
    assert sorted(model.ops("embed")[1]) == ["leaves during the pass", "stays for the result"]
    leaving.cancel()  # the client goes away while its text is in the running pass
    await until(lambda: service.batcher.queue_size == 0)
    model.release.set()
    await until(lambda: "stays for the result" in results)
    np.testing.assert_allclose(results["stays for the result"], text_vector("stays for the result"))
    assert "leaves during the pass" not in results
    registry = service.metrics.registry
    assert (
        registry.get_sample_value(
            "batcher_requests_total", {"model": model.name, "priority": "interactive", "status": "cancelled"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "batcher_requests_total", {"model": model.name, "priority": "interactive", "status": "success"}
        )
        == 2
    )
    # The service goes on serving after the abandoned text.
    model.hold.clear()
    with trio.fail_after(LIMIT):
        jobs = await service.embed(["afterwards"])
    assert jobs[0].vector is not None


async def test_the_next_batch_is_tokenized_while_a_pass_runs(nursery: trio.Nursery) -> None:
    model = BlockingModel(tokenize_in_parallel=True)
    service = await started(model, nursery)
    model.hold.set()
    nursery.start_soon(service.embed, ["busy"])
    await until(model.embed_started.is_set)
    model.tokenized.clear()
    for i in range(3):
        nursery.start_soon(service.embed, [f"next {i}"])
    # Tokenized in another thread while the pass still blocks.
    await until(lambda: len(service.batcher.dispatch.prepared) == 3)
    assert not model.release.is_set()
    assert model.tokenized.is_set()
    model.release.set()
    await until(lambda: len(model.ops("embed")) == 2)
    assert sorted(model.ops("embed")[1]) == [f"next {i}" for i in range(3)]


async def test_without_the_flag_tokenization_waits_for_the_pass(nursery: trio.Nursery) -> None:
    model = BlockingModel(tokenize_in_parallel=False)
    service = await started(model, nursery)
    model.hold.set()
    nursery.start_soon(service.embed, ["busy"])
    await until(model.embed_started.is_set)
    model.tokenized.clear()
    nursery.start_soon(service.embed, ["next"])
    await until(lambda: service.batcher.dispatch.tokenizing)
    # The tokenization call is waiting for the model's limiter, not running beside the pass.
    with trio.move_on_after(0.3):
        await until(model.tokenized.is_set)
    assert not model.tokenized.is_set()
    model.release.set()
    await until(lambda: len(model.ops("embed")) == 2)
