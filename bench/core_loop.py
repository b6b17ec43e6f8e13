"""trio-infer's core without HTTP: the real batcher (admission, dispatch, execution) and model, driven
in-process by N closed-loop callers. A reference that splits the server's gap to the sorted-batch
ceiling in two: the batcher's own share (batches formed from at most N waiting texts, thread hops,
the trio loop) and the HTTP serving path's (request handling on the event loop, on the same cores as
the model's threads)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import trio
from prometheus_client import CollectorRegistry

from bench import cpu
from bench.inprocess import Ceiling
from trio_infer.config import Settings
from trio_infer.core.batching import Batcher
from trio_infer.core.metrics import Metrics
from trio_infer.models.embedder import ThreadedEmbedder
from trio_infer.models.loading import LoadedModel, batch_limits, load_model


@dataclass
class CoreBatcher:
    """The bundled model on `--backend torch`, loaded and calibrated as the server loads it."""

    loaded: LoadedModel

    @classmethod
    def load(cls) -> CoreBatcher:
        return cls(load_model(Settings(backend="torch")))

    def closed_loop(self, texts: list[str], clients: int, seconds: float, warmup: float = 2.0) -> Ceiling:
        """`clients` callers, each submitting one text and waiting for its vector before the next;
        texts are taken in corpus order, as the HTTP load generator takes them."""
        return trio.run(self._closed_loop, texts, clients, seconds, warmup)

    async def _closed_loop(self, texts: list[str], clients: int, seconds: float, warmup: float) -> Ceiling:
        limits = batch_limits(Settings(), self.loaded)  # the server's defaults
        metrics = Metrics(CollectorRegistry()).for_model("bench")
        # A fresh adapter per run: its limiters belong to the trio run that created them.
        assert isinstance(self.loaded.embedder, ThreadedEmbedder)
        embedder = ThreadedEmbedder(self.loaded.embedder.model)
        batcher = Batcher(embedder, metrics, limits, self.loaded.cost)
        latencies: list[float] = []
        next_index = 0
        start = time.perf_counter() + warmup
        end = start + seconds

        async def caller() -> None:
            nonlocal next_index
            while True:
                text = texts[next_index % len(texts)]
                next_index += 1
                t0 = time.perf_counter()
                (job,) = batcher.submit([text], deadline=math.inf)
                await job.done.wait()
                t1 = time.perf_counter()
                if job.error is not None:
                    raise job.error
                if t0 >= start and t1 <= end:
                    latencies.append(t1 - t0)

        with cpu.Span(None) as span:
            async with trio.open_nursery() as nursery:
                await nursery.start(batcher.run)
                async with trio.open_nursery() as callers:
                    for _ in range(clients):
                        callers.start_soon(caller)
                    await trio.sleep(max(0.0, end - time.perf_counter()))
                    callers.cancel_scope.cancel()
                batcher.close()  # the texts still admitted are computed, so no model call is abandoned
        return Ceiling(
            f"trio-infer core in-process, {clients} callers", len(latencies), seconds, latencies, span
        )
