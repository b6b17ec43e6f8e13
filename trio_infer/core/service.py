"""The embedding service as the HTTP layer sees it: the served models, embedding under a deadline,
health and readiness."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from ..config import Settings
from .batching import Batcher
from .errors import Draining, ModelNotFound, RequestTimeout, Unavailable
from .jobs import Job
from .lifecycle import Lifecycle
from .metrics import Metrics
from .priority import ANONYMOUS, Priority
from .served_model import FAILED_PASSES_UNHEALTHY, ServedModel

log = logging.getLogger(__name__)

_LAG_PROBE = 0.05


@dataclass(frozen=True, slots=True)
class Ticket:
    """Admitted texts: the model they went to, their jobs in order, and the deadline they are
    waited on under."""

    model: ServedModel
    jobs: list[Job]
    deadline: float
    limit: float
    priority: Priority = Priority.INTERACTIVE


class EmbeddingService:
    """Ties the models' batchers to request deadlines, the drain, and health reporting.

    `models` is every served model, the default first; names are unique. Holds no tasks itself: the
    batchers run in the caller's nursery and `monitor` is a long-running task for it.
    """

    def __init__(
        self,
        settings: Settings,
        models: Sequence[ServedModel],
        lifecycle: Lifecycle,
        metrics: Metrics,
    ) -> None:
        if not models:
            raise ValueError("a service needs at least one model")
        self.settings = settings
        self.models = tuple(models)
        self.default = self.models[0]
        self.lifecycle = lifecycle
        self.metrics = metrics
        for model in self.models:
            model.batcher.metrics.describe(
                device=model.device, backend=model.backend, precision=model.precision
            )

    @property
    def batcher(self) -> Batcher:
        """The default model's batcher."""
        return self.default.batcher

    def model(self, name: str | None) -> ServedModel:
        """The model a request named (the default when None): by configured name first, then by full
        name or its last part. Raises ModelNotFound (404)."""
        if name is None:
            return self.default
        for model in self.models:
            if model.name == name:
                return model
        for model in self.models:
            if model.answers_to(name):
                return model
        served = ", ".join(repr(model.name) for model in self.models)
        raise ModelNotFound(f"the model {name!r} does not exist; this server serves {served}")

    def admit(
        self,
        texts: Sequence[str],
        *,
        model: ServedModel | None = None,
        time_limit: float | None = None,
        request_id: str = "",
        truncate: bool = True,
        priority: Priority = Priority.INTERACTIVE,
        caller: str = ANONYMOUS,
    ) -> Ticket:
        """Admit all of `texts` to `model`'s batcher (the default's when None), or none; never blocks.
        Returns the ticket to `wait` on.

        Texts are truncated to the model's token limit, or with `truncate` False a longer one fails
        its request with InputTooLong (400) before any forward pass.

        The deadline is the request timeout, or the shorter `time_limit`. Raises a ServiceError:
        Draining, Unavailable, Overloaded (503 with Retry-After), PayloadTooLarge.
        """
        model = self.default if model is None else model
        if self.lifecycle.closing:
            raise Draining("the server is shutting down")
        if not model.batcher.running:
            raise Unavailable("the model is not loaded yet")
        limit = (
            self.settings.request_timeout
            if time_limit is None
            else min(time_limit, self.settings.request_timeout)
        )
        deadline = trio.current_time() + limit
        jobs = model.batcher.submit(
            texts,
            deadline=deadline,
            request_id=request_id,
            truncate=truncate,
            priority=priority,
            caller=caller,
        )
        return Ticket(model=model, jobs=jobs, deadline=deadline, limit=limit, priority=priority)

    async def wait(self, ticket: Ticket) -> list[Job]:
        """Wait for every job of `ticket`; returns them finished, in order.

        The wait is bounded by the ticket's deadline and the drain. If the caller is cancelled (a
        client disconnect) or times out, its unanswered texts are withdrawn and never computed.
        Raises a ServiceError: Draining, RequestTimeout, InferenceFailed.
        """
        jobs = ticket.jobs
        batcher = ticket.model.batcher
        with self.lifecycle.request_scope(ticket.deadline) as scope:
            try:
                for job in jobs:
                    await job.done.wait()
            finally:
                left = batcher.withdraw(jobs)
                if left:
                    status = "timeout" if scope.cancel_called else "cancelled"
                    batcher.metrics.of(ticket.priority).outcome[status].inc(left)
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
        model: ServedModel | None = None,
        time_limit: float | None = None,
        request_id: str = "",
        truncate: bool = True,
        priority: Priority = Priority.INTERACTIVE,
        caller: str = ANONYMOUS,
    ) -> list[Job]:
        """`admit` then `wait`, for callers with nothing to do between the two."""
        ticket = self.admit(
            texts,
            model=model,
            time_limit=time_limit,
            request_id=request_id,
            truncate=truncate,
            priority=priority,
            caller=caller,
        )
        return await self.wait(ticket)

    def problem(self) -> str | None:
        """Why the service is unhealthy (any model is), in words for the `/health` body; None when
        healthy. The default model's own reason is given as is; another model's names it."""
        for model in self.models:
            problem = model.problem()
            if problem is not None:
                return problem if model is self.default else f"model {model.name}: {problem}"
        return None

    def healthy(self) -> bool:
        return self.problem() is None

    def ready(self) -> bool:
        """Ready once every model is loaded and serving, until the drain starts."""
        return self.lifecycle.ready and self.healthy()

    def health(self) -> dict[str, object]:
        """The `/health` body: the default model's fields at the top level (an unhealthy service
        carries a `reason`), and every model's under `models`."""
        problem = self.problem()
        body: dict[str, object] = {
            "status": "healthy" if problem is None else "unhealthy",
            "model": self.default.name,
            **self.default.health(),
            "models": {model.name: model.health() for model in self.models},
        }
        body["status"] = "healthy" if problem is None else "unhealthy"
        body.pop("reason", None)
        if problem is not None:
            body["reason"] = problem
        return body

    async def monitor(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Measure event-loop lag, keep the health gauges current and log watchdog trips; runs until
        cancelled."""
        task_status.started()
        while True:
            for model in self.models:
                model.report_trips()
            self.metrics.ready.set(1 if self.ready() else 0)
            self.metrics.healthy.set(1 if self.healthy() else 0)
            start = trio.current_time()
            await trio.sleep(_LAG_PROBE)
            self.metrics.loop_lag.observe(max(0.0, trio.current_time() - start - _LAG_PROBE))


__all__ = ["FAILED_PASSES_UNHEALTHY", "EmbeddingService", "ServedModel", "Ticket"]
