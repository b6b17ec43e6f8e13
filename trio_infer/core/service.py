"""The embedding service as the HTTP layer sees it: embed texts under a deadline, report health."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from ..config import Settings
from .batching import Batcher
from .errors import Draining, RequestTimeout, Unavailable
from .execution import ModelCall
from .jobs import Job
from .lifecycle import Lifecycle
from .metrics import Metrics

log = logging.getLogger(__name__)

_LAG_PROBE = 0.05

# Forward passes that fail in a row before `/health` turns 503 (a broken device, not one bad input:
# a failed batch is retried text by text, and any pass that succeeds resets the count).
FAILED_PASSES_UNHEALTHY = 5


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
        self._reported_call: ModelCall | None = None
        self._reported_failures = False
        self.backend, self.precision = (
            getattr(batcher.embedder, k, "unknown") for k in ("backend", "precision")
        )
        metrics.backend_info.labels(backend=self.backend, precision=self.precision).set(1)

    def admit(
        self,
        texts: Sequence[str],
        *,
        time_limit: float | None = None,
        request_id: str = "",
        truncate: bool = True,
    ) -> Ticket:
        """Admit all of `texts` to the batcher, or none; never blocks. Returns the ticket to `wait` on.

        Texts are truncated to the model's token limit, or with `truncate` False a longer one fails
        its request with InputTooLong (400) before any forward pass.

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
        jobs = self.batcher.submit(texts, deadline=deadline, request_id=request_id, truncate=truncate)
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
        self,
        texts: Sequence[str],
        *,
        time_limit: float | None = None,
        request_id: str = "",
        truncate: bool = True,
    ) -> list[Job]:
        """`admit` then `wait`, for callers with nothing to do between the two."""
        ticket = self.admit(texts, time_limit=time_limit, request_id=request_id, truncate=truncate)
        return await self.wait(ticket)

    def stalled(self) -> bool:
        """Whether a model call (tokenization or forward pass) has run past `--watchdog-timeout`."""
        return self.batcher.stalled_for() > self.settings.watchdog_timeout

    def problem(self) -> str | None:
        """Why the service is unhealthy, in words for the `/health` body; None when healthy."""
        if not self.batcher.running:
            return "the batcher is not running"
        call = self.batcher.oldest_call()
        if call is not None and self.stalled():
            age = trio.current_time() - call.started
            return (
                f"a {call.kind} of {len(call.jobs)} text(s) has run {age:.1f} s, "
                f"past the watchdog timeout of {self.settings.watchdog_timeout:g} s"
            )
        failed = self.batcher.failed_in_a_row
        if failed >= FAILED_PASSES_UNHEALTHY:
            return f"the last {failed} forward passes failed"
        return None

    def healthy(self) -> bool:
        return self.problem() is None

    def ready(self) -> bool:
        return self.lifecycle.ready and self.healthy()

    def health(self) -> dict[str, object]:
        """The `/health` body; an unhealthy one carries a `reason`."""
        problem = self.problem()
        body: dict[str, object] = {
            "status": "healthy" if problem is None else "unhealthy",
            "model": self.model_name,
            "device": self.device,
            "backend": self.backend,
            "precision": self.precision,
            "queue_size": self.batcher.queue_size,
            "inflight_batches": self.batcher.inflight_batches,
            "max_batch_tokens": self.batcher.limits.max_batch_tokens,
        }
        if problem is not None:
            body["reason"] = problem
        return body

    def _report_trips(self) -> None:
        """Log each watchdog trip once (a stalled call, a run of failed passes), and the recovery."""
        call = self.batcher.oldest_call()
        if call is not None and self.stalled() and call is not self._reported_call:
            self._reported_call = call
            log.error(
                "watchdog: a %s of %d text(s) has run %.1f s (limit %g s; requests %s); /health is 503",
                call.kind,
                len(call.jobs),
                trio.current_time() - call.started,
                self.settings.watchdog_timeout,
                call.request_ids(),
            )
        failing = self.batcher.failed_in_a_row >= FAILED_PASSES_UNHEALTHY
        if failing and not self._reported_failures:
            log.error(
                "watchdog: %d forward passes failed in a row; /health is 503 until one succeeds",
                self.batcher.failed_in_a_row,
            )
        elif self._reported_failures and not failing:
            log.info("watchdog: a forward pass succeeded; healthy again")
        self._reported_failures = failing

    async def monitor(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Measure event-loop lag, keep the health gauges current and log watchdog trips; runs until
        cancelled."""
        task_status.started()
        while True:
            self._report_trips()
            self.metrics.ready.set(1 if self.ready() else 0)
            self.metrics.healthy.set(1 if self.healthy() else 0)
            start = trio.current_time()
            await trio.sleep(_LAG_PROBE)
            self.metrics.loop_lag.observe(max(0.0, trio.current_time() - start - _LAG_PROBE))
