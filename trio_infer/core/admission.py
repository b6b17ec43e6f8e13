"""Admission: the one bound on waiting work, and the queue of admitted texts not yet tokenized.

A text is *waiting* from the moment it is admitted until it enters a forward pass or leaves (its
caller withdrew, its deadline passed, tokenization failed). Waiting texts may sit in this queue or,
tokenized, in the dispatcher's prepared set; all of them count against `max_queue_size`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import trio

from .errors import Draining, Overloaded, PayloadTooLarge
from .jobs import Job
from .metrics import ModelMetrics
from .priority import ANONYMOUS, Priority


class Wakeup:
    """A condition without a lock (trio runs one task at a time): waiters re-check their own
    condition after each `notify`."""

    def __init__(self) -> None:
        self._lot = trio.lowlevel.ParkingLot()

    async def wait(self) -> None:
        await self._lot.park()

    def notify(self) -> None:
        self._lot.unpark_all()


class Admission:
    """Admits texts all-or-none under the bound and keeps them in arrival order until dispatch takes them.

    `changed` is notified on every arrival and on `close`. Never blocks.
    """

    def __init__(self, max_queue_size: int, metrics: ModelMetrics) -> None:
        self.max_queue_size = max_queue_size
        self.metrics = metrics
        self.queue: deque[Job] = deque()  # admitted, not yet taken for tokenization, oldest first
        self.waiting = 0  # jobs with `waiting` set, wherever they are
        self.closed = False
        self.changed = Wakeup()

    def admit(
        self,
        texts: Sequence[str],
        *,
        deadline: float,
        request_id: str,
        predicted_wait: float | None,
        truncate: bool = True,
        priority: Priority = Priority.INTERACTIVE,
        caller: str = ANONYMOUS,
        truncate_left: bool = False,
        normalize: bool = True,
    ) -> list[Job]:
        """Jobs for all of `texts`, queued; or a ServiceError and nothing queued.

        Raises Draining after `close`, PayloadTooLarge when the list can never fit the bound,
        Overloaded (Retry-After) when the bound would be passed or `predicted_wait` (seconds until
        these texts would be done) ends after `deadline`.
        """
        count = len(texts)
        if count > self.max_queue_size:
            raise PayloadTooLarge(f"{count} texts exceed the queue's capacity of {self.max_queue_size}")
        if self.closed:
            raise Draining("the server is shutting down")
        now = trio.current_time()
        if self.waiting + count > self.max_queue_size:
            self.metrics.outcome["rejected"].inc(count)
            raise Overloaded("the request queue is full", retry_after=predicted_wait or 1.0)
        if predicted_wait is not None and now + predicted_wait > deadline:
            self.metrics.outcome["rejected"].inc(count)
            raise Overloaded(
                f"the predicted wait of {predicted_wait:.1f} s exceeds the request's deadline",
                retry_after=predicted_wait,
            )
        jobs = [
            Job(
                text=text,
                admitted_at=now,
                deadline=deadline,
                request_id=request_id,
                waiting=True,
                truncate=truncate,
                priority=priority,
                caller=caller,
                truncate_left=truncate_left,
                normalize=normalize,
            )
            for text in texts
        ]
        self.queue.extend(jobs)
        self.waiting += count
        self.metrics.queue_size.set(self.waiting)
        self.changed.notify()
        return jobs

    def withdraw(self, jobs: Sequence[Job]) -> int:
        """Mark unanswered jobs abandoned (never computed; they stop counting at once); returns how many."""
        count = 0
        for job in jobs:
            if not job.done.is_set() and not job.abandoned:
                job.abandoned = True
                self.release(job)
                count += 1
        return count

    def release(self, job: Job) -> None:
        """`job` stops counting against the bound (it entered a pass, or left). Idempotent."""
        if job.waiting:
            job.waiting = False
            self.waiting -= 1
            self.metrics.queue_size.set(self.waiting)

    def keep(self, job: Job, now: float) -> bool:
        """Whether to compute `job`. A job whose caller left or whose deadline passed is released and
        counted as skipped, once."""
        if job.live(now):
            return True
        self.release(job)
        if not job.done.is_set() and not job.dropped:
            job.dropped = True
            self.metrics.skipped.inc()
        return False

    def has_live(self) -> bool:
        """Whether a job worth computing is queued (dead ones at the front are dropped)."""
        now = trio.current_time()
        while self.queue and not self.keep(self.queue[0], now):
            self.queue.popleft()
        return bool(self.queue)

    def oldest(self) -> Job | None:
        return self.queue[0] if self.has_live() else None

    def take(self, limit: int) -> list[Job]:
        """Up to `limit` live jobs from the front of the queue, oldest first."""
        now = trio.current_time()
        taken: list[Job] = []
        while self.queue and len(taken) < limit:
            job = self.queue.popleft()
            if self.keep(job, now):
                taken.append(job)
        return taken

    def close(self) -> None:
        """Refuse new texts; what is queued is still served."""
        self.closed = True
        self.changed.notify()
