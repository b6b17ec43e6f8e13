"""Dispatch: when the next forward pass starts and which texts it holds. One pass runs at a time.

- Model idle, texts queued: wait for batch-mates until the oldest text has waited `batch_timeout`
  (0: not at all) or a full batch is queued; then a lone text is tokenized and embedded in one model
  call (unless it must not be truncated: it is tokenized first, to be counted), and several are
  tokenized and planned.
- Model busy: texts that arrive are tokenized in batch-sized chunks, up to `batches_ahead` batches'
  worth, while the pass runs; when it ends, the next pass is planned over them at once.

Every model call that runs a pass takes a turn on the device's `scheduler.DeviceScheduler` first,
so the passes of models sharing a device never overlap and the oldest text among them goes first.

Each plan is `formation.plan_batches` over the tokenized texts (length-sorted, cost-model cuts, size
and padded-token limits); the planned batch holding the oldest text runs, so texts are served in
arrival order by length group and none waits behind an endless stream of shorter ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import trio

from .admission import Admission
from .execution import Execution
from .formation import CostModel, plan_batches
from .jobs import Job
from .limits import BatchLimits
from .scheduler import DeviceScheduler

Work = Callable[[], Awaitable[None]]


class Dispatch:
    """Owns the prepared (tokenized, waiting) texts and the loop that feeds `Execution` one pass at a time."""

    def __init__(
        self,
        admission: Admission,
        execution: Execution,
        limits: BatchLimits,
        cost: CostModel,
        scheduler: DeviceScheduler,
    ) -> None:
        self.admission = admission
        self.scheduler = scheduler
        self.execution = execution
        self.limits = limits
        self.cost = cost
        self.changed = admission.changed  # one wake-up for arrivals, close, and the state below
        self.prepared: list[Job] = []  # mutated in place only
        self._busy = False  # a forward pass runs
        self._tokenizing = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run passes until admission is closed and nothing is left to compute.

        Cancelling it abandons the model call in progress (its callers are answered by their own
        deadlines)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._prepare_ahead)
            task_status.started()
            while (next_work := await self._next_work()) is not None:
                work, oldest = next_work
                # Busy from here: while this model waits for its turn, arrivals are tokenized ahead.
                self._busy = True
                self.changed.notify()
                try:
                    async with self.scheduler.turn(oldest):
                        await work()
                finally:
                    self._busy = False
            nursery.cancel_scope.cancel()

    @property
    def tokenizing(self) -> bool:
        """Whether a tokenization call is running (for the preparer or an idle model)."""
        return self._tokenizing

    async def _next_work(self) -> tuple[Work, float] | None:
        """The next pass to run and the admission time of its oldest text, once there is one; None
        when closed and nothing is left."""
        while True:
            now = trio.current_time()
            self.prepared[:] = [job for job in self.prepared if self.admission.keep(job, now)]
            if self.prepared:
                # Planned once the turn is granted: texts that left meanwhile are not computed, and
                # those tokenized meanwhile can join.
                return self._forward_planned, min(job.admitted_at for job in self.prepared)
            if self._tokenizing:  # the texts being prepared are next
                await self.changed.wait()
                continue
            oldest = self.admission.oldest()
            if oldest is None:
                if self.admission.closed:
                    return None
                await self.changed.wait()
                continue
            if not await self._batch_mates_gathered(oldest):
                continue
            jobs = self.admission.take(self.limits.window)
            if len(jobs) == 1 and jobs[0].truncate:
                # One model call; a text that must not be truncated is counted (tokenized) first.
                return partial(self._lone, jobs[0]), jobs[0].admitted_at
            await self._tokenize(jobs)

    async def _forward_planned(self) -> None:
        now = trio.current_time()
        self.prepared[:] = [job for job in self.prepared if self.admission.keep(job, now)]
        if self.prepared:
            await self.execution.forward(self._plan())

    async def _lone(self, job: Job) -> None:
        if self.admission.keep(job, trio.current_time()):
            await self.execution.lone(job)

    async def _batch_mates_gathered(self, oldest: Job) -> bool:
        """With the model idle: True to run now; else waits for an arrival or the timeout and returns
        False (the caller looks again)."""
        deadline = oldest.admitted_at + self.limits.batch_timeout
        if (
            trio.current_time() >= deadline
            or self.admission.closed
            or len(self.admission.queue) >= self.limits.max_batch_size
        ):
            return True
        with trio.move_on_at(deadline):
            await self.changed.wait()
        return False

    async def _prepare_ahead(self) -> None:
        """While a pass runs, tokenize arrivals in batch-sized chunks, up to the window."""
        while True:
            room = self.limits.window - len(self.prepared)
            if self._busy and not self._tokenizing and room > 0 and self.admission.has_live():
                await self._tokenize(self.admission.take(min(room, self.limits.max_batch_size)))
            else:
                await self.changed.wait()

    async def _tokenize(self, jobs: list[Job]) -> None:
        self._tokenizing = True
        try:
            self.prepared += await self.execution.tokenize(jobs)
        finally:
            self._tokenizing = False
            self.changed.notify()

    def _plan(self) -> list[Job]:
        """Remove and return the planned batch that holds the oldest prepared text."""
        ready = self.prepared
        plan = plan_batches(
            [job.n_tokens for job in ready],
            self.cost,
            self.limits.max_batch_tokens,
            self.limits.max_batch_size,
        )
        oldest = min(range(len(ready)), key=lambda i: ready[i].admitted_at)
        chosen = set(next(indices for indices in plan if oldest in indices))
        batch = [job for i, job in enumerate(ready) if i in chosen]
        self.prepared[:] = [job for i, job in enumerate(ready) if i not in chosen]
        return batch
