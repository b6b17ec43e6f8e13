"""Execution: the model calls (tokenize, forward pass), their timing for the watchdog, and delivery.

A model error fails only the batch that raised it; its texts are retried one by one, so only the text
that causes the error fails. Results go to the callers still waiting; a caller who left gets nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from .admission import Admission
from .embedder import AsyncEmbedder, TokenIds
from .errors import InferenceFailed, InputTooLong
from .jobs import Job, Vector
from .metrics import ModelMetrics
from .share import PassShare

log = logging.getLogger(__name__)

T = TypeVar("T")


class ServiceRate:
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


@dataclass(frozen=True, slots=True, eq=False)
class ModelCall:
    """A model call in progress: what it does, since when, for which texts."""

    kind: str  # "tokenization" or "forward pass"
    started: float
    jobs: tuple[Job, ...]

    def request_ids(self) -> str:
        return ",".join(sorted({job.request_id for job in self.jobs})) or "-"


def _ids(jobs: list[Job]) -> str:
    return ",".join(sorted({job.request_id for job in jobs}))


def _set_tokens(job: Job, ids: list[int]) -> None:
    job.tokens = list(ids) or [0]
    if isinstance(ids, TokenIds):
        job.text_tokens, job.text_tokens_exact = ids.total, ids.exact
    else:
        job.text_tokens = len(ids)


class Execution:
    """Runs model calls for the dispatcher. At most one tokenization and one forward pass run at a time
    (the dispatcher's doing); both are timed, so a hung tokenizer trips the watchdog like a hung pass."""

    def __init__(
        self, embedder: AsyncEmbedder, admission: Admission, metrics: ModelMetrics, share: PassShare
    ) -> None:
        """`share`: where each pass's time is accounted by class (bulk's minimum share)."""
        self.embedder = embedder
        self.admission = admission
        self.cache = admission.cache
        self.metrics = metrics
        self.share = share
        self.rate = ServiceRate()
        self.failed_in_a_row = 0  # forward passes that raised since the last one that succeeded
        self.calls: list[ModelCall] = []
        self.passes_running = 0

    def oldest_call(self) -> ModelCall | None:
        """The model call running longest, if any."""
        return min(self.calls, key=lambda call: call.started, default=None)

    def stalled_for(self) -> float:
        """Seconds the longest-running model call has taken so far (0 when none runs)."""
        call = self.oldest_call()
        return 0.0 if call is None else trio.current_time() - call.started

    async def _timed(self, kind: str, jobs: list[Job], call: Callable[[], Awaitable[T]]) -> T:
        record = ModelCall(kind, trio.current_time(), tuple(jobs))
        self.calls.append(record)
        try:
            return await call()
        finally:
            self.calls.remove(record)

    # -- tokenization ------------------------------------------------------------------------------

    async def tokenize(self, jobs: list[Job]) -> list[Job]:
        """Tokenize `jobs`; returns those that got tokens. A failure is narrowed to the text that
        caused it, which fails; its batch-mates go on."""
        texts = [job.text for job in jobs]
        try:
            token_ids = await self._timed("tokenization", jobs, lambda: self.embedder.tokenize(texts))
        except Exception:
            if len(jobs) == 1:
                log.warning("tokenization failed (request %s)", jobs[0].request_id, exc_info=True)
                self._fail(jobs, "tokenization failed")
                return []
            done: list[Job] = []
            for job in jobs:
                done += await self.tokenize([job])
            return done
        limit = self.embedder.max_tokens
        tokenized: list[Job] = []
        for job, ids in zip(jobs, token_ids, strict=True):
            _set_tokens(job, ids)
            if not job.truncate and job.text_tokens > limit:
                # A client error, not a batcher outcome: counted by the HTTP metrics (400) only.
                self.admission.release(job)
                self.admission.forget(job)
                if not job.done.is_set() and not job.abandoned:
                    job.fail(InputTooLong.counted(job.text_tokens, job.text_tokens_exact, limit))
            else:
                tokenized.append(job)
        return tokenized

    # -- forward passes ----------------------------------------------------------------------------

    async def forward(self, batch: list[Job]) -> None:
        """One forward pass over tokenized `batch`; on a model error, each live text alone."""
        self._start(batch)
        texts = [job.text for job in batch]
        tokens = [job.tokens or [0] for job in batch]
        vectors = await self._pass(batch, lambda: self.embedder.embed(texts, tokens))
        if vectors is not None:
            self._deliver(batch, vectors)
        elif len(batch) == 1:
            self._fail(batch, "inference failed")
        else:
            for job in batch:
                if job.live(trio.current_time()):
                    await self.forward([job])
                else:
                    self.admission.forget(job)

    async def lone(self, job: Job) -> None:
        """Tokenize and embed one fresh text in a single model call."""
        self._start([job])

        async def both() -> list[Vector]:
            token_ids, vectors = await self.embedder.tokenize_and_embed([job.text])
            _set_tokens(job, token_ids[0])
            return vectors

        vectors = await self._pass([job], both)
        if vectors is None:
            self._fail([job], "inference failed")
        else:
            self._deliver([job], vectors)

    def _start(self, batch: list[Job]) -> None:
        start = trio.current_time()
        for job in batch:
            if job.waiting:
                self.metrics.of(job.priority).batch_wait.observe(start - job.admitted_at)
            self.admission.release(job)

    async def _pass(
        self, batch: list[Job], call: Callable[[], Awaitable[list[Vector]]]
    ) -> list[Vector] | None:
        """The vectors of one pass, or None (logged) when the model raised."""
        self.passes_running += 1
        self.metrics.inflight_batches.set(self.passes_running)
        start = trio.current_time()
        try:
            vectors = await self._timed("forward pass", batch, call)
            if len(vectors) != len(batch):
                raise RuntimeError(f"model returned {len(vectors)} vectors for {len(batch)} texts")
        except Exception:
            self.failed_in_a_row += 1
            log.warning(
                "forward pass of %d text(s) failed (requests %s); %d in a row",
                len(batch),
                _ids(batch),
                self.failed_in_a_row,
                exc_info=True,
            )
            return None
        finally:
            self.passes_running -= 1
            self.metrics.inflight_batches.set(self.passes_running)
        self.failed_in_a_row = 0
        self._record(batch, trio.current_time() - start)
        return vectors

    def _record(self, batch: list[Job], seconds: float) -> None:
        real = sum(job.n_tokens for job in batch)
        padded = len(batch) * max(job.n_tokens for job in batch)
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_tokens.observe(padded)
        self.metrics.padding_efficiency.observe(real / padded if padded else 1.0)
        self.metrics.inference_time.observe(seconds)
        self.rate.record(len(batch), seconds)
        for priority, share in self.share.split(seconds, batch).items():
            self.metrics.of(priority).pass_seconds.inc(share)

    def _deliver(self, batch: list[Job], vectors: list[Vector]) -> None:
        """Answer the callers still waiting, and store every vector, also those whose callers all
        left during the pass (the text was computed; the next caller gets it for free)."""
        now = trio.current_time()
        for job, vector in zip(batch, vectors, strict=True):
            if self.cache.enabled:
                self.cache.put(
                    job.key,
                    vector,
                    n_tokens=job.n_tokens,
                    text_tokens=job.text_tokens,
                    exact=job.text_tokens_exact,
                )
            self.admission.forget(job)
            if not job.abandoned and not job.done.is_set():
                job.succeed(vector)
                classes = self.metrics.of(job.priority)
                classes.outcome["success"].inc()
                classes.request_latency.observe(now - job.admitted_at)

    def _fail(self, jobs: list[Job], what: str) -> None:
        log.error("%s for %d text(s) (requests %s)", what, len(jobs), _ids(jobs))
        for job in jobs:
            self.admission.release(job)
            self.admission.forget(job)
            if not job.done.is_set() and not job.abandoned:
                job.fail(InferenceFailed("inference failed; see the server log"))
                self.metrics.of(job.priority).outcome["error"].inc()
