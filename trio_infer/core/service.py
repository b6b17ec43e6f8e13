"""The embedding service as the HTTP layer sees it: embed texts under a deadline, report health."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from ..config import Settings
from .batching import Batcher
from .errors import Draining, RequestTimeout, Unavailable
from .jobs import Job
from .lifecycle import Lifecycle
from .metrics import Metrics

log = logging.getLogger(__name__)

_LAG_PROBE = 0.05


@dataclass(frozen=True, slots=True)
class Ticket:
    """Admitted texts: their jobs, in order, and the deadline they are waited on under."""

    jobs: list[Job]
    deadline: float
    limit: float


class EmbeddingService:
    """Ties the batcher to request deadlines, the drain, and health reporting. Holds no tasks itself;
    `monitor` is a long-running task for the caller's nursery."""

    def __init__(self, settings: Settings, batcher: Batcher, lifecycle: Lifecycle, metrics: Metrics) -> None:
        self.settings = settings
        self.batcher = batcher
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.model_name = batcher.embedder.name
        self.device = batcher.embedder.device
        self.dimension = batcher.embedder.dimension
        metrics.model_info.labels(model=self.model_name, device=self.device).set(1)
        self.backend, self.precision = (
            getattr(batcher.embedder, k, "unknown") for k in ("backend", "precision")
        )
        metrics.backend_info.labels(backend=self.backend, precision=self.precision).set(1)

    def admit(self, texts: Sequence[str], *, time_limit: float | None = None, request_id: str = "") -> Ticket:
        """Admit all of `texts` to the batcher, or none; never blocks. Returns the ticket to `wait` on.

        The deadline is the request timeout, or the shorter `time_limit`. Raises a ServiceError:
        Draining, Unavailable, Overloaded (503 with Retry-After), PayloadTooLarge.
        """
        if self.lifecycle.closing:
            raise Draining("the server is shutting down")
        if not self.batcher.running:
            raise Unavailable("the model is not loaded yet")
        limit = (
            self.settings.request_timeout
            if time_limit is None
            else min(time_limit, self.settings.request_timeout)
        )
        deadline = trio.current_time() + limit
        jobs = self.batcher.submit(texts, deadline=deadline, request_id=request_id)
        return Ticket(jobs=jobs, deadline=deadline, limit=limit)

    async def wait(self, ticket: Ticket) -> list[Job]:
        """Wait for every job of `ticket`; returns them finished, in order.

        The wait is bounded by the ticket's deadline and the drain. If the caller is cancelled (a
        client disconnect) or times out, its unanswered texts are withdrawn and never computed.
        Raises a ServiceError: Draining, RequestTimeout, InferenceFailed.
        """
        jobs = ticket.jobs
        with self.lifecycle.request_scope(ticket.deadline) as scope:
            try:
                for job in jobs:
                    await job.done.wait()
            finally:
                left = self.batcher.withdraw(jobs)
                if left:
                    status = "timeout" if scope.cancel_called else "cancelled"
                    self.metrics.outcome[status].inc(left)
            for job in jobs:
                if job.error is not None:
                    raise job.error
            return jobs
        if self.lifecycle.drain_expired():
            raise Draining("the server shut down before this request was served")
        raise RequestTimeout(f"no result within {ticket.limit:g} s")

    async def embed(
        self, texts: Sequence[str], *, time_limit: float | None = None, request_id: str = ""
    ) -> list[Job]:
        """`admit` then `wait`, for callers with nothing to do between the two."""
        return await self.wait(self.admit(texts, time_limit=time_limit, request_id=request_id))

    def stalled(self) -> bool:
        return self.batcher.stalled_for() > self.settings.watchdog_timeout

    def healthy(self) -> bool:
        return self.batcher.running and not self.stalled()

    def ready(self) -> bool:
        return self.lifecycle.ready and self.healthy()

    def health(self) -> dict[str, object]:
        return {
            "status": "healthy" if self.healthy() else "unhealthy",
            "model": self.model_name,
            "device": self.device,
            "backend": self.backend,
            "precision": self.precision,
            "queue_size": self.batcher.queue_size,
            "inflight_batches": self.batcher.inflight_batches,
            "max_batch_tokens": self.batcher.limits.max_batch_tokens,
        }

    async def monitor(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Measure event-loop lag and keep the health gauges current; runs until cancelled."""
        task_status.started()
        while True:
            self.metrics.ready.set(1 if self.ready() else 0)
            self.metrics.healthy.set(1 if self.healthy() else 0)
            start = trio.current_time()
            await trio.sleep(_LAG_PROBE)
            self.metrics.loop_lag.observe(max(0.0, trio.current_time() - start - _LAG_PROBE))
