"""One served model: the name clients use, its batcher, and its health as the watchdog sees it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import trio

from .batching import Batcher
from .execution import ModelCall
from .jobs import Vector

log = logging.getLogger(__name__)

# Forward passes that fail in a row before the model turns unhealthy (a broken device, not one bad
# input: a failed batch is retried text by text, and any pass that succeeds resets the count).
FAILED_PASSES_UNHEALTHY = 5


@dataclass(eq=False)
class ServedModel:
    """`name` is the configured name (an alias, or the source as given): what clients send and what
    the `model` metric label holds. `full_name` is the model it was loaded from; clients of the
    OpenAI API may use it too. Holds no tasks: its batcher runs in the caller's nursery.

    `prompts` and `default_prompt_name` are the model's prompts (models.prompts); `calibration_vectors`
    the vectors of the shipped calibration texts (n x dimension) that int8/uint8 ranges come from
    (models.quantization), None where none were computed. Filled at load; the HTTP layer reads them."""

    name: str
    full_name: str
    batcher: Batcher
    watchdog_timeout: float
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    calibration_vectors: Vector | None = None
    _reported_call: ModelCall | None = field(default=None, init=False)
    _reported_failures: bool = field(default=False, init=False)

    @property
    def device(self) -> str:
        return self.batcher.embedder.device

    @property
    def dimension(self) -> int:
        return self.batcher.embedder.dimension

    @property
    def backend(self) -> str:
        return str(getattr(self.batcher.embedder, "backend", "unknown"))

    @property
    def precision(self) -> str:
        return str(getattr(self.batcher.embedder, "precision", "unknown"))

    def answers_to(self, name: str) -> bool:
        """Whether `name` is this model's configured name, its full name or its full name's last part."""
        return name in (self.name, self.full_name, self.full_name.rsplit("/", 1)[-1])

    def stalled(self) -> bool:
        """Whether a model call (tokenization or forward pass) has run past the watchdog timeout."""
        return self.batcher.stalled_for() > self.watchdog_timeout

    def problem(self) -> str | None:
        """Why the model is unhealthy, in words for the `/health` body; None when healthy."""
        if not self.batcher.running:
            return "the batcher is not running"
        call = self.batcher.oldest_call()
        if call is not None and self.stalled():
            age = trio.current_time() - call.started
            return (
                f"a {call.kind} of {len(call.jobs)} text(s) has run {age:.1f} s, "
                f"past the watchdog timeout of {self.watchdog_timeout:g} s"
            )
        failed = self.batcher.failed_in_a_row
        if failed >= FAILED_PASSES_UNHEALTHY:
            return f"the last {failed} forward passes failed"
        return None

    def health(self) -> dict[str, object]:
        """This model's part of `/health`."""
        problem = self.problem()
        body: dict[str, object] = {
            "status": "healthy" if problem is None else "unhealthy",
            "device": self.device,
            "backend": self.backend,
            "precision": self.precision,
            "queue_size": self.batcher.queue_size,
            "queues": self.batcher.queue_sizes(),
            "inflight_batches": self.batcher.inflight_batches,
            "cache": self.batcher.cache.health(),
            "max_batch_tokens": self.batcher.limits.max_batch_tokens,
        }
        if problem is not None:
            body["reason"] = problem
        return body

    def report_trips(self) -> None:
        """Log each watchdog trip once (a stalled call, a run of failed passes), and the recovery."""
        call = self.batcher.oldest_call()
        if call is not None and self.stalled() and call is not self._reported_call:
            self._reported_call = call
            log.error(
                "watchdog: a %s of %d text(s) of model %s has run %.1f s (limit %g s; requests %s); "
                "/health is 503",
                call.kind,
                len(call.jobs),
                self.name,
                trio.current_time() - call.started,
                self.watchdog_timeout,
                call.request_ids(),
            )
        failing = self.batcher.failed_in_a_row >= FAILED_PASSES_UNHEALTHY
        if failing and not self._reported_failures:
            log.error(
                "watchdog: %d forward passes failed in a row (model %s); /health is 503 until one succeeds",
                self.batcher.failed_in_a_row,
                self.name,
            )
        elif self._reported_failures and not failing:
            log.info("watchdog: a forward pass of model %s succeeded; healthy again", self.name)
        self._reported_failures = failing


__all__ = ["FAILED_PASSES_UNHEALTHY", "ServedModel"]
