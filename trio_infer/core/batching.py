"""The batcher: admission -> dispatch -> execution, behind one small facade.

- `admission.Admission`: the one bound on waiting work and the queue of admitted texts.
- `dispatch.Dispatch`: when a forward pass starts and which texts it holds.
- `execution.Execution`: the model calls, their timing (the watchdog's input) and delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from .admission import Admission
from .cache import VectorCache, cache_key, model_salt
from .dispatch import Dispatch
from .embedder import AsyncEmbedder
from .execution import Execution, ModelCall
from .formation import CostModel
from .jobs import Job
from .limits import BatchLimits
from .metrics import ModelMetrics
from .priority import ANONYMOUS, Priority
from .scheduler import DeviceScheduler
from .share import PassShare

log = logging.getLogger(__name__)

__all__ = ["BatchLimits", "Batcher", "ShutdownStalled"]


class ShutdownStalled(RuntimeError):
    """A model call was still running when the shutdown deadline passed; the process should exit
    non-zero (the call's thread is abandoned)."""


class Batcher:
    """Create it, `await nursery.start(batcher.run)`, then `submit`; `close` to drain.

    `run` returns once admission is closed and every admitted text is answered or skipped. It raises
    ShutdownStalled if that has not happened by the deadline given to `close`, and passes on any
    exception from its tasks (a bug; a model error fails only its batch) so the process exits
    instead of leaving callers to hang.
    """

    def __init__(
        self,
        embedder: AsyncEmbedder,
        metrics: ModelMetrics,
        limits: BatchLimits,
        cost: CostModel,
        scheduler: DeviceScheduler | None = None,
        cache_size: int = 0,
    ) -> None:
        """`scheduler`: the device's, shared with the other models on the same device (a private one
        when None: the model has its device to itself). `cache_size`: bytes of finished vectors kept
        to answer repeated texts (0: none; identical texts in flight are still computed once)."""
        self.embedder = embedder
        self.metrics = metrics
        self.limits = limits
        self.cache = VectorCache(cache_size, metrics.cache)
        self._salt = model_salt(
            embedder.name,
            str(getattr(embedder, "backend", "")),
            str(getattr(embedder, "precision", "")),
            embedder.dimension,
        )
        self.admission = Admission(limits.bounds, metrics, self.cache, embedder.max_tokens)
        self.execution = Execution(embedder, self.admission, metrics, PassShare(limits.bulk_min_share))
        self.scheduler = DeviceScheduler(embedder.device) if scheduler is None else scheduler
        self.dispatch = Dispatch(self.admission, self.execution, limits, cost, self.scheduler)
        self.running = False
        self._shutdown_deadline = trio.Event()
        self._deadline = float("inf")
        metrics.max_batch_tokens.set(limits.max_batch_tokens)

    # -- observation ---------------------------------------------------------------------------

    @property
    def queue_size(self) -> int:
        """Live texts admitted and not yet in a forward pass, of every class."""
        return self.admission.waiting

    def queue_sizes(self) -> dict[str, int]:
        """Texts waiting per class (what `max_queue_size` and `max_bulk_queue_size` bound)."""
        return {priority.label: count for priority, count in self.admission.waiting_by.items()}

    @property
    def inflight_batches(self) -> int:
        return self.execution.passes_running

    @property
    def failed_in_a_row(self) -> int:
        """Forward passes that raised since the last one that succeeded."""
        return self.execution.failed_in_a_row

    def stalled_for(self) -> float:
        """Seconds the longest-running model call (tokenization or forward pass) has taken so far."""
        return self.execution.stalled_for()

    def oldest_call(self) -> ModelCall | None:
        return self.execution.oldest_call()

    def predicted_wait(self, extra: int = 0, priority: Priority = Priority.BULK) -> float | None:
        """Seconds until `extra` more texts of `priority` would be done, from the measured service
        rate: an interactive text waits for the interactive texts ahead of it, a bulk one for all.

        None when the rate is unknown, and when nothing waits or runs: an idle model serves a newcomer
        at once however slow its recent passes were (else one pass slower than the request timeout
        would close admission for good: no pass would run to measure the rate again).
        """
        rate = self.execution.rate.per_second
        if rate is None or (not self.admission.waiting and not self.execution.calls):
            return None
        ahead = sum(count for cls, count in self.admission.waiting_by.items() if cls <= priority)
        return (ahead + extra) / rate + self.stalled_for()

    def key(self, text: str) -> bytes:
        """The cache key of `text` for this model (see `cache.cache_key`)."""
        return cache_key(self._salt, text)

    # -- admission -------------------------------------------------------------------------------

    def submit(
        self,
        texts: Sequence[str],
        *,
        deadline: float,
        request_id: str = "",
        truncate: bool = True,
        priority: Priority = Priority.INTERACTIVE,
        caller: str = ANONYMOUS,
    ) -> list[Job]:
        """A finished or admitted job per text, in order; never blocks. A text in the cache comes back
        done, one identical to a text in flight shares its job, the others are admitted all or none.
        See `Admission.admit` for the errors. With `truncate` False, a text over the model's token
        limit fails with InputTooLong (400) once tokenized, instead of being truncated."""
        return self.admission.admit(
            texts,
            [self.key(text) for text in texts],
            deadline=deadline,
            request_id=request_id,
            truncate=truncate,
            priority=priority,
            caller=caller,
            predict=lambda cls, extra: self.predicted_wait(extra, cls),
        )

    def withdraw(self, jobs: Sequence[Job]) -> int:
        """Mark unanswered jobs abandoned so no compute is spent on them; returns how many."""
        return self.admission.withdraw(jobs)

    def close(self, deadline: float | None = None) -> None:
        """Stop admission; what is admitted is still served, until `deadline` (trio time) if given."""
        self.admission.close()
        if deadline is not None:
            self._deadline = min(self._deadline, deadline)
            self._shutdown_deadline.set()

    # -- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Dispatch passes until closed and drained. Reports started once passes can run."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._enforce_deadline)
                self.running = True
                await self.dispatch.run(task_status=task_status)
                nursery.cancel_scope.cancel()
        finally:
            self.running = False

    async def _enforce_deadline(self) -> None:
        await self._shutdown_deadline.wait()
        await trio.sleep_until(self._deadline)
        call = self.execution.oldest_call()
        what = (
            f"a {call.kind} of {len(call.jobs)} text(s) has run {trio.current_time() - call.started:.1f} s"
            f" (requests {call.request_ids()})"
            if call is not None
            else "texts are still waiting"
        )
        log.error("shutdown deadline passed and %s: abandoning it and exiting", what)
        raise ShutdownStalled(f"shutdown deadline passed: {what}")
