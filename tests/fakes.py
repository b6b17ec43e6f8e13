"""Pure-trio stand-ins for the model, so timing logic runs on a virtual clock (autojump_clock)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import numpy as np
import trio

from trio_infer.config import Settings
from trio_infer.core.batching import Batcher, BatchLimits
from trio_infer.core.formation import CostModel
from trio_infer.core.jobs import Vector
from trio_infer.core.lifecycle import Lifecycle
from trio_infer.core.metrics import Metrics
from trio_infer.core.service import EmbeddingService, ServedModel

FAKE_COST = CostModel(fixed=0.010, per_token=0.0005)


def text_vector(text: str, dimension: int = 8) -> Vector:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    return vector / np.linalg.norm(vector)


class FakeEmbedder:
    """Tokens = whitespace words + 2; a forward pass sleeps `FAKE_COST` of its padded shape and
    tokenization `tokenize_seconds` (0: a checkpoint) after `tokenize_gate`, when set.

    `poison` texts make the whole forward pass raise (like a model error); `gate`, when set, makes
    every forward pass wait for it (a busy or hung model). Records every batch it ran.
    """

    name = "fake-model"
    device = "cpu"
    backend = "fake"
    precision = "none"
    dimension = 8
    max_tokens = 512
    normalizes = False  # its vectors are unit length already

    def __init__(self, *, poison: Sequence[str] = (), cost: CostModel = FAKE_COST) -> None:
        self.poison = set(poison)
        self.cost = cost
        self.batches: list[list[str]] = []
        self.gate: trio.Event | None = None
        self.started = trio.Event()
        self.one_hop_calls = 0
        self.tokenize_seconds = 0.0
        self.tokenize_gate: trio.Event | None = None
        self.pass_times: list[tuple[float, float]] = []

    async def tokenize(self, texts: Sequence[str], tails: Sequence[bool] = ()) -> list[list[int]]:
        if self.tokenize_gate is not None:
            await self.tokenize_gate.wait()
        await trio.sleep(self.tokenize_seconds)
        return [[101, *[7] * len(text.split()), 102] for text in texts]

    async def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        self.batches.append(list(texts))
        start = trio.current_time()
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        await trio.sleep(self.cost.batch_cost(len(texts), max(len(ids) for ids in token_ids)))
        self.pass_times.append((start, trio.current_time()))
        if self.poison.intersection(texts):
            raise RuntimeError("poisoned batch")
        return [text_vector(text) for text in texts]

    async def tokenize_and_embed(
        self, texts: Sequence[str], tails: Sequence[bool] = ()
    ) -> tuple[list[list[int]], list[Vector]]:
        self.one_hop_calls += 1
        token_ids = await self.tokenize(texts, tails)
        return token_ids, await self.embed(texts, token_ids)

    @property
    def texts_computed(self) -> list[str]:
        return [text for batch in self.batches for text in batch]


def make_service(
    embedder: FakeEmbedder | None = None, settings: Settings | None = None, **limits: float
) -> EmbeddingService:
    settings = settings or Settings(request_timeout=5.0, graceful_timeout=2.0)
    embedder = embedder or FakeEmbedder()
    batch_limits = BatchLimits(
        max_batch_size=int(limits.get("max_batch_size", settings.max_batch_size)),
        max_batch_tokens=int(limits.get("max_batch_tokens", 4096)),
        batch_timeout=float(limits.get("batch_timeout", settings.batch_timeout)),
        batches_ahead=int(limits.get("num_workers", settings.num_batching_workers)),
        max_queue_size=int(limits.get("max_queue_size", settings.max_queue_size)),
        max_bulk_queue_size=int(limits.get("max_bulk_queue_size", settings.max_bulk_queue_size)),
        bulk_batch_tokens=int(limits["bulk_batch_tokens"]) if "bulk_batch_tokens" in limits else None,
        bulk_min_share=float(limits.get("bulk_min_share", settings.bulk_min_share)),
    )
    metrics = Metrics()
    batcher = Batcher(
        embedder,
        metrics.for_model(embedder.name),
        batch_limits,
        embedder.cost,
        cache_size=int(limits.get("cache_size", 0)),
    )
    lifecycle = Lifecycle(graceful_timeout=settings.graceful_timeout, drain_delay=settings.drain_delay)
    model = ServedModel(embedder.name, embedder.name, batcher, settings.watchdog_timeout)
    return EmbeddingService(settings, [model], lifecycle, metrics)


@asynccontextmanager
async def running(service: EmbeddingService) -> AsyncIterator[trio.Nursery]:
    """The service's batcher running in a nursery of its own, ready; closed when the block ends."""
    async with trio.open_nursery() as nursery:
        await nursery.start(service.batcher.run)
        service.lifecycle.mark_ready()
        yield nursery
        service.batcher.close()


@asynccontextmanager
async def model_busy(service: EmbeddingService, embedder: FakeEmbedder) -> AsyncIterator[trio.Nursery]:
    """The model runs one pass that waits for the block to end; meanwhile texts queue up."""
    embedder.gate = trio.Event()
    embedder.started = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.embed, ["warm up"])
        await embedder.started.wait()
        yield nursery
        embedder.gate.set()
        embedder.gate = None
