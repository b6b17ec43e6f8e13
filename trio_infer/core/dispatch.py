"""Dispatch: when the next forward pass starts and which texts it holds. One pass runs at a time.

- Model idle, texts queued: wait for batch-mates until the oldest text has waited `batch_timeout`
  (0: not at all) or a full batch is queued; then a lone text is tokenized and embedded in one model
  call (unless it must not be truncated: it is tokenized first, to be counted), and several are
  tokenized and planned.
- Model busy: texts that arrive are tokenized in batch-sized chunks while the pass runs, up to
  `batches_ahead` batches' worth of each class (interactive texts are tokenized ahead even when the
  window is full of bulk ones); when it ends, the next pass is planned over them at once.

Each pass is built for one *lead* class: interactive, unless no interactive text is prepared or
bulk has had less than `bulk_min_share` of recent forward-pass time (`share.PassShare`). The lead
class's texts are planned by `formation.plan_batches` (length-sorted, cost-model cuts, size and
padded-token limits) and the planned batch holding the text taken first (`Job.turn`: fair order
between callers) runs; texts of the other class then fill the pass where they add no padding
(no longer than its longest text), within the budget. So the model never idles while any text
waits, and bulk texts ride along in interactive passes.

While interactive traffic is active (a text within `admission.INTERACTIVE_ACTIVE_FOR`), a pass that
holds bulk texts is capped to `bulk_batch_tokens` padded tokens, so a query that arrives meanwhile
waits at most one short pass.

Every model call that runs a pass takes a turn on the device's `scheduler.DeviceScheduler` first,
so the passes of models sharing a device never overlap; the turn goes to the most urgent class
first, then to the oldest text among them.
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
from .priority import Priority
from .scheduler import DeviceScheduler, TurnKey

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
        self.share = execution.share
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
                work, key = next_work
                # Busy from here: while this model waits for its turn, arrivals are tokenized ahead.
                self._busy = True
                self.changed.notify()
                try:
                    async with self.scheduler.turn(key.oldest, key.priority):
                        await work()
                finally:
                    self._busy = False
            nursery.cancel_scope.cancel()

    @property
    def tokenizing(self) -> bool:
        """Whether a tokenization call is running (for the preparer or an idle model)."""
        return self._tokenizing

    def _prune(self) -> None:
        now = trio.current_time()
        self.prepared[:] = [job for job in self.prepared if self.admission.keep(job, now)]

    async def _next_work(self) -> tuple[Work, TurnKey] | None:
        """The next pass to run and its claim on the device, once there is one; None when closed and
        nothing is left."""
        while True:
            self._prune()
            if self.prepared:
                # Planned once the turn is granted: texts that left meanwhile are not computed, and
                # those tokenized meanwhile can join.
                return self._forward_planned, _claim(self.prepared)
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
            jobs = self.admission.take(self.limits.window, bulk_first=self.share.bulk_owed())
            if len(jobs) == 1 and jobs[0].truncate:
                # One model call; a text that must not be truncated is counted (tokenized) first.
                return partial(self._lone, jobs[0]), _claim(jobs)
            await self._tokenize(jobs)

    async def _forward_planned(self) -> None:
        self._prune()
        if self.prepared:
            contended = self._contended()
            batch = self._plan()
            start = trio.current_time()
            await self.execution.forward(batch)
            if contended:
                self.share.record(trio.current_time() - start, batch)

    def _contended(self) -> bool:
        """Whether texts of both classes wait (prepared or queued): the passes bulk's share counts."""
        waiting = {job.priority for job in self.prepared}
        for priority in Priority:
            if priority not in waiting and self.admission.waiting_by[priority]:
                waiting.add(priority)
        return len(waiting) == len(Priority)

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
            or self.admission.queued >= self.limits.max_batch_size
        ):
            return True
        with trio.move_on_at(deadline):
            await self.changed.wait()
        return False

    async def _prepare_ahead(self) -> None:
        """While a pass runs, tokenize arrivals in batch-sized chunks, up to the window of each class."""
        while True:
            jobs = self._take_ahead() if self._busy and not self._tokenizing else []
            if jobs:
                await self._tokenize(jobs)
            else:
                await self.changed.wait()

    def _take_ahead(self) -> list[Job]:
        window, chunk = self.limits.window, self.limits.max_batch_size
        interactive = sum(job.priority is Priority.INTERACTIVE for job in self.prepared)
        bulk = len(self.prepared) - interactive
        room = window - len(self.prepared)
        # Interactive texts may fill a window of their own: a window full of bulk never delays them.
        limit = min(chunk, window - interactive)
        if limit <= 0:
            return []
        owed = self.share.bulk_owed() and bulk == 0
        return self.admission.take(limit, bulk_limit=max(0, min(chunk, room)), bulk_first=owed)

    async def _tokenize(self, jobs: list[Job]) -> None:
        self._tokenizing = True
        try:
            self.prepared += await self.execution.tokenize(jobs)
        finally:
            self._tokenizing = False
            self.changed.notify()

    def _lead(self) -> Priority:
        """The class the next pass is built for."""
        classes = {job.priority for job in self.prepared}
        if Priority.INTERACTIVE in classes and (Priority.BULK not in classes or not self.share.bulk_owed()):
            return Priority.INTERACTIVE
        return Priority.BULK

    def _plan(self) -> list[Job]:
        """Remove and return the next pass: the planned batch of the lead class holding its first
        text, filled with the other class's texts that add no padding."""
        lead = self._lead()
        limits = self.limits
        active = self.admission.interactive_active(trio.current_time())
        capped = active and any(job.priority is Priority.BULK for job in self.prepared)
        budget = limits.bulk_budget if capped and lead is Priority.BULK else limits.max_batch_tokens
        primary = [job for job in self.prepared if job.priority is lead]
        plan = plan_batches([job.n_tokens for job in primary], self.cost, budget, limits.max_batch_size)
        first = min(range(len(primary)), key=lambda i: primary[i].turn)
        batch = [primary[i] for i in next(group for group in plan if first in group)]
        longest = max(job.n_tokens for job in batch)
        # Filling: bulk texts join an interactive pass only up to the bulk budget while interactive
        # traffic is active (the pass stays short); otherwise up to the full budget.
        fill_budget = max(len(batch) * longest, limits.bulk_budget if active else budget)
        room = min(limits.max_batch_size - len(batch), fill_budget // max(1, longest) - len(batch))
        if room > 0:
            others = sorted(
                (job for job in self.prepared if job.priority is not lead and job.n_tokens <= longest),
                key=lambda job: job.turn,
            )
            batch += others[:room]
        chosen = set(map(id, batch))
        self.prepared[:] = [job for job in self.prepared if id(job) not in chosen]
        return batch


def _claim(jobs: list[Job]) -> TurnKey:
    """The device claim of a pass over `jobs`: its most urgent class, and that class's oldest text."""
    priority = min(job.priority for job in jobs)
    oldest = min(job.admitted_at for job in jobs if job.priority is priority)
    return TurnKey(priority, oldest)
