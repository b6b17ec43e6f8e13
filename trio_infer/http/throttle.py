"""Bounded request work on the event loop, so probes and the batcher stay responsive under a burst.

trio runs every runnable task once per scheduling round, in turn. When hundreds of requests arrive at
once, each round steps hundreds of request handlers (parsing, validation, logging, response
serialisation) and takes tens to hundreds of milliseconds; a probe needs several rounds (read, dispatch,
headers, body), so it waits for all of them several times over. `WorkSlots` lets at most `limit`
requests do such work at a time; the others wait parked, at no cost to the loop, in arrival order.

The pipeline takes a request's slot only once its whole body has arrived (a slow or stalled client
never holds one) and gives it back when the request is answered. A handler that waits for the model
releases it explicitly before the wait (`Slot.release`), so the number of requests waiting in the
batcher, and therefore batch sizes, are not limited by it. Probes take no slot.
"""

from __future__ import annotations

import trio

# Requests doing event-loop work at a time. A request's share of that work is about a millisecond of
# CPU, so a scheduling round stays within ~20 ms even under a burst of hundreds of requests.
WORK_LIMIT = 16


class Slot:
    """One request's claim on a `WorkSlots` place. `release` is idempotent; a slot that was never
    acquired releases nothing."""

    __slots__ = ("_semaphore", "held")

    def __init__(self, semaphore: trio.Semaphore | None) -> None:
        self._semaphore = semaphore
        self.held = False

    async def acquire(self) -> None:
        if self._semaphore is not None:
            await self._semaphore.acquire()
            self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            assert self._semaphore is not None
            self._semaphore.release()


class WorkSlots:
    def __init__(self, limit: int = WORK_LIMIT) -> None:
        self._semaphore = trio.Semaphore(limit)

    def slot(self) -> Slot:
        return Slot(self._semaphore)


NO_SLOT = Slot(None)  # for probes: nothing to wait for, nothing to release
