"""The batcher: bounded admission, a nursery of batch collectors, and token-aware forward passes.

Texts enter through a bounded trio memory channel (`submit`, never blocking: a full queue is a 503).
Collector tasks take them out, form batches and run the model; each caller waits on its own job.

Dispatch is work-conserving: when the model is idle, a collector runs whatever is queued at once (a
lone request never waits for batch-mates). While the model is busy, another collector keeps pulling
requests into the shared pool for up to `batch_timeout`, and before every forward pass the model's
holder also takes what queued since, so batches grow exactly when waiting costs nothing. Each pass is
planned over everything waiting by `formation.plan_batches` (length-sorted, cost-model cuts, size and
padded-token limits); the planned batch holding the oldest text runs next.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from .embedder import AsyncEmbedder, TokenIds
from .errors import Draining, InferenceFailed, InputTooLong, Overloaded, PayloadTooLarge
from .formation import CostModel, plan_batches
from .jobs import Job, Vector
from .metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_batch_size: int = 32
    max_batch_tokens: int = 4096
    batch_timeout: float = 0.01
    num_workers: int = 2
    max_queue_size: int = 4096
    # Most texts pulled out of the queue and planned together (sorting a wider window pads less).
    window_factor: int = 4

    @property
    def window(self) -> int:
        return self.max_batch_size * self.window_factor


class _ServiceRate:
    """Texts per second of recent forward passes, decayed so it follows the load."""

    def __init__(self, decay: float = 0.8) -> None:
        self._decay = decay
        self._texts = 0.0
        self._seconds = 0.0

    def record(self, texts: int, seconds: float) -> None:
        self._texts = self._texts * self._decay + texts
        self._seconds = self._seconds * self._decay + seconds

    @property
    def per_second(self) -> float | None:
        return self._texts / self._seconds if self._seconds > 0 else None


class _Average:
    """An exponentially weighted mean (0 until the first sample)."""

    def __init__(self, weight: float = 0.1) -> None:
        self._weight = weight
        self.value = 0.0
        self._seen = False

    def record(self, sample: float) -> None:
        self.value = sample if not self._seen else self.value + self._weight * (sample - self.value)
        self._seen = True


class Batcher:
    """Owns the queue and the collectors. Create it, `await nursery.start(batcher.run)`, then `submit`.

    `close()` stops admission; `run` returns once every admitted job is answered or skipped. An
    exception from a collector (a bug, never a model error, which fails only its batch) propagates out
    of `run` so the process can exit instead of leaving callers to hang.
    """

    def __init__(
        self, embedder: AsyncEmbedder, metrics: Metrics, limits: BatchLimits, cost: CostModel
    ) -> None:
        self.embedder = embedder
        self.metrics = metrics
        self.limits = limits
        self.cost = cost
        self._send, self._receive = trio.open_memory_channel[Job](limits.max_queue_size)
        # One round on the model at a time; its holder is the model's only user.
        self._model_slot = trio.CapacityLimiter(1)
        self._idle_waiters: set[trio.CancelScope] = set()
        # Jobs taken out of the channel and not yet in a forward pass, shared by the collectors.
        # Only ever mutated in place, never rebound: a collector may hold it across an await.
        self._pool: list[Job] = []
        self._queued: set[Job] = set()
        self._inflight = 0
        self._forward_started: float | None = None
        self._rate = _ServiceRate()
        self._gap = _Average()
        self.running = False
        self._send_closed = False
        metrics.max_batch_tokens.set(limits.max_batch_tokens)

    # -- observation ---------------------------------------------------------------------------

    @property
    def queue_size(self) -> int:
        """Live texts admitted and not yet in a forward pass."""
        return len(self._queued)

    @property
    def inflight_batches(self) -> int:
        return self._inflight

    def stalled_for(self) -> float:
        """Seconds the running forward pass has taken so far (0 when none runs)."""
        if self._forward_started is None:
            return 0.0
        return trio.current_time() - self._forward_started

    def predicted_wait(self, extra: int = 0) -> float | None:
        """Seconds until `extra` more texts would be done, from the measured service rate.

        None when the rate is unknown, and when nothing is queued or running: an idle model serves a
        newcomer at once however slow its recent passes were (else one pass slower than the request
        timeout, a hang, would close admission for good: no pass runs to measure the rate again).
        """
        rate = self._rate.per_second
        if rate is None or (not self._queued and not self._inflight):
            return None
        return (self.queue_size + extra) / rate + self.stalled_for()

    # -- admission -------------------------------------------------------------------------------

    def submit(
        self, texts: Sequence[str], *, deadline: float, request_id: str = "", truncate: bool = True
    ) -> list[Job]:
        """Admit all of `texts` or none. Never blocks. With `truncate` False, a text over the model's
        token limit fails with InputTooLong (400) instead of being truncated.

        Raises Overloaded (503, Retry-After) when the queue is full or the predicted wait would pass
        the deadline, Draining after `close()`, PayloadTooLarge when the list can never fit the queue.
        """
        count = len(texts)
        if count > self.limits.max_queue_size:
            raise PayloadTooLarge(
                f"{count} texts exceed the queue's capacity of {self.limits.max_queue_size}"
            )
        stats = self._send.statistics()
        if stats.open_receive_channels == 0 or self._send_closed:
            raise Draining("the server is shutting down")
        now = trio.current_time()
        wait = self.predicted_wait(count)
        if stats.current_buffer_used + count > stats.max_buffer_size:
            self._reject(count)
            raise Overloaded("the request queue is full", retry_after=wait or 1.0)
        if wait is not None and now + wait > deadline:
            self._reject(count)
            raise Overloaded(
                f"the predicted wait of {wait:.1f} s exceeds the request's deadline", retry_after=wait
            )
        jobs = [
            Job(text=text, admitted_at=now, deadline=deadline, request_id=request_id, truncate=truncate)
            for text in texts
        ]
        for job in jobs:
            self._send.send_nowait(job)
            self._queued.add(job)
        self._update_queue_gauge()
        return jobs

    def withdraw(self, jobs: Sequence[Job]) -> int:
        """Mark unanswered jobs abandoned so no compute is spent on them; returns how many."""
        count = 0
        for job in jobs:
            if not job.done.is_set() and not job.abandoned:
                job.abandoned = True
                self._queued.discard(job)
                count += 1
        if count:
            self._update_queue_gauge()
        return count

    def close(self) -> None:
        """Stop admission; queued jobs are still served."""
        self._send_closed = True
        self._send.close()

    def _reject(self, count: int) -> None:
        self.metrics.outcome["rejected"].inc(count)

    def _update_queue_gauge(self) -> None:
        self.metrics.queue_size.set(len(self._queued))

    # -- collectors --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the collectors until closed and drained. Reports started once all collectors run."""
        try:
            async with trio.open_nursery() as nursery:
                for index in range(self.limits.num_workers):
                    await nursery.start(self._collector, index)
                self.running = True
                task_status.started()
        finally:
            self.running = False

    async def _collector(
        self, index: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            try:
                job = await self._receive.receive()
            except trio.EndOfChannel:
                return
            self._pool.append(job)
            await self._gather()
            async with self._model_slot:
                await self._drain_pool()
                for scope in self._idle_waiters:
                    scope.cancel()  # the model is about to be free: gatherers stop waiting

    async def _gather(self) -> None:
        """While the model is busy, pull more jobs into the pool for up to `batch_timeout`."""
        with trio.move_on_after(self.limits.batch_timeout):
            while len(self._pool) < self.limits.window and self._model_slot.borrowed_tokens:
                with trio.CancelScope() as wake:
                    self._idle_waiters.add(wake)
                    try:
                        job = await self._receive.receive()
                        self._pool.append(job)
                    except trio.EndOfChannel:
                        return
                    finally:
                        self._idle_waiters.discard(wake)
                if wake.cancelled_caught:
                    return

    async def _drain_pool(self) -> None:
        """Run forward passes until nothing is left, refilling the pool from the queue before each.

        Texts that arrive while a pass runs join the next plan at once instead of waiting for a
        whole round to end, so each plan sees (and length-sorts) everything waiting. Each pass is the
        planned batch that holds the oldest text: passes are grouped by length, served in arrival order,
        and no text waits behind an endless stream of shorter ones.
        """
        previous_end: float | None = None
        while True:
            self._take_queued()
            if not self._pool:
                return
            fresh = [job for job in self._pool if job.tokens is None]
            if fresh:
                await self._tokenize(fresh)
            now = trio.current_time()
            self._pool[:] = [job for job in self._pool if self._keep(job, now)]
            ready = [job for job in self._pool if job.tokens is not None]
            if not ready:  # tokenization failed them, or only newcomers arrived meanwhile
                continue
            batch = self._next_batch(ready)
            taken = set(batch)
            self._pool[:] = [job for job in self._pool if job not in taken]
            start = trio.current_time()
            if previous_end is not None:
                self._gap.record(start - previous_end)
            await self._forward(batch)
            previous_end = trio.current_time()

    def _next_batch(self, ready: list[Job]) -> list[Job]:
        plan = plan_batches(
            [job.n_tokens for job in ready],
            self.cost,
            self.limits.max_batch_tokens,
            self.limits.max_batch_size,
        )
        oldest = min(range(len(ready)), key=lambda i: ready[i].admitted_at)
        indices = next(indices for indices in plan if oldest in indices)
        return [ready[i] for i in indices]

    def _take_queued(self) -> None:
        """Add what is queued right now to the pool, up to the window, dropping jobs nobody waits for."""
        now = trio.current_time()
        self._pool[:] = [job for job in self._pool if self._keep(job, now)]
        while len(self._pool) < self.limits.window:
            try:
                job = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if self._keep(job, now):
                self._pool.append(job)

    def _keep(self, job: Job, now: float) -> bool:
        """Whether to compute `job`; a job whose caller left or whose deadline passed is skipped."""
        if job.live(now):
            return True
        if not job.done.is_set() and not job.dropped:
            job.dropped = True
            self.metrics.skipped.inc()
            self._queued.discard(job)
            self._update_queue_gauge()
        return False

    async def _tokenize(self, jobs: list[Job]) -> None:
        try:
            token_ids = await self.embedder.tokenize([job.text for job in jobs])
        except Exception:
            if len(jobs) == 1:
                log.warning("tokenization failed (request %s)", jobs[0].request_id, exc_info=True)
                self._fail(jobs, "tokenization failed")
                return
            for job in jobs:  # find the text to blame; its batch-mates go on
                await self._tokenize([job])
            return
        for job, ids in zip(jobs, token_ids, strict=True):
            job.tokens = list(ids) or [0]
            if isinstance(ids, TokenIds):
                job.text_tokens, job.text_tokens_exact = ids.total, ids.exact
            else:
                job.text_tokens = len(ids)
            if not job.truncate and job.text_tokens > self.embedder.max_tokens:
                # A client error, not a batcher outcome: counted by the HTTP metrics (400) only.
                job.fail(InputTooLong(_too_long(job, self.embedder.max_tokens)))
                self._queued.discard(job)
                self._update_queue_gauge()

    async def _forward(self, batch: list[Job]) -> None:
        """One forward pass. A model error fails only this batch, and retrying its members one by one
        narrows the failure to the text that caused it."""
        start = trio.current_time()
        for job in batch:
            if job in self._queued:
                self._queued.discard(job)
                self.metrics.batch_wait.observe(start - job.admitted_at)
        self._update_queue_gauge()
        vectors = await self._run_model(batch)
        if vectors is None:
            if len(batch) == 1:
                self._fail(batch, "inference failed")
                return
            for job in batch:
                if job.live(trio.current_time()):
                    await self._forward([job])
            return
        self._record_batch(batch, trio.current_time() - start)
        now = trio.current_time()
        for job, vector in zip(batch, vectors, strict=True):
            if not job.abandoned:
                job.succeed(vector)
                self.metrics.outcome["success"].inc()
                self.metrics.request_latency.observe(now - job.admitted_at)

    async def _run_model(self, batch: list[Job]) -> list[Vector] | None:
        """The model's vectors for `batch`, or None (logged) when it raised."""
        self._inflight += 1
        self.metrics.inflight_batches.set(self._inflight)
        self._forward_started = trio.current_time()
        try:
            vectors = await self.embedder.embed(
                [job.text for job in batch], [job.tokens or [0] for job in batch]
            )
            if len(vectors) != len(batch):
                raise RuntimeError(f"model returned {len(vectors)} vectors for {len(batch)} texts")
            return vectors
        except Exception:
            log.warning(
                "forward pass of %d text(s) failed (requests %s)",
                len(batch),
                ",".join(sorted({job.request_id for job in batch})),
                exc_info=True,
            )
            return None
        finally:
            self._inflight -= 1
            self._forward_started = None
            self.metrics.inflight_batches.set(self._inflight)

    def _record_batch(self, batch: list[Job], seconds: float) -> None:
        real = sum(job.n_tokens for job in batch)
        padded = len(batch) * max(job.n_tokens for job in batch)
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_tokens.observe(padded)
        self.metrics.padding_efficiency.observe(real / padded if padded else 1.0)
        self.metrics.inference_time.observe(seconds)
        self._rate.record(len(batch), seconds)

    def _fail(self, jobs: list[Job], what: str) -> None:
        ids = ",".join(sorted({job.request_id for job in jobs}))
        log.error("%s for %d text(s) (requests %s)", what, len(jobs), ids)
        for job in jobs:
            if not job.done.is_set():
                job.fail(InferenceFailed("inference failed; see the server log"))
                self.metrics.outcome["error"].inc()
                self._queued.discard(job)
        self._update_queue_gauge()


def _too_long(job: Job, limit: int) -> str:
    count = f"{job.text_tokens}" if job.text_tokens_exact else f"at least {job.text_tokens}"
    return (
        f"the text has {count} tokens, over this model's limit of {limit}; "
        "shorten it, or send truncate: true to embed its first tokens"
    )
