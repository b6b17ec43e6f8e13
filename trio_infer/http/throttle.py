"""Bounded request work on the event loop, so probes and the batcher stay responsive under a burst.

trio runs every runnable task once per scheduling round, in turn. When hundreds of requests arrive at
once, each round steps hundreds of request handlers (routing, parsing, validation, logging, response
serialisation) and takes tens to hundreds of milliseconds; a probe needs several rounds (read, dispatch,
headers, body), so it waits for all of them several times over. `WorkLimitMiddleware` lets at most
`limit` requests do such work at a time. The others wait parked, at no cost to the loop, in arrival
order.

A request enters only once its whole body has arrived (a slow or stalled client never holds a slot),
and gives its slot back while it waits for the model (`release_work_slot`), so the number of requests
waiting in the batcher, and therefore batch sizes, are not limited by it. `/health` and `/ready` are
answered ahead of this by `ProbeMiddleware`.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from hypercorn.typing import ASGIReceiveCallable, ASGIReceiveEvent, ASGISendCallable, Scope

ASGIApp = Any

# Requests doing event-loop work at a time. A request's share of that work is about a millisecond of
# CPU, so a scheduling round stays within ~20 ms; under a 400-request burst the worst probe latency
# measured ~20-60 ms with this limit against 130-200 ms without (tests/test_robustness.py).
WORK_LIMIT = 16


class _Slot:
    def __init__(self, semaphore: trio.Semaphore) -> None:
        self._semaphore = semaphore
        self.held = False

    async def acquire(self) -> None:
        await self._semaphore.acquire()
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._semaphore.release()


_current_slot: ContextVar[_Slot | None] = ContextVar("trio_infer_work_slot", default=None)


def release_work_slot() -> None:
    """Give the current request's work slot back (before a long wait); a no-op without one."""
    slot = _current_slot.get()
    if slot is not None:
        slot.release()


class WorkLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size
        self._semaphore = trio.Semaphore(limit)

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        buffered = await self._read_body(scope["headers"], receive)
        if buffered and buffered[-1]["type"] == "http.disconnect":
            return  # the client left before sending its whole request: nobody to answer
        slot = _Slot(self._semaphore)
        await slot.acquire()
        token = _current_slot.set(slot)
        try:
            await self.app(scope, _replay(buffered, receive), send)
        finally:
            _current_slot.reset(token)
            slot.release()

    async def _read_body(
        self, headers: Iterable[tuple[bytes, bytes]], receive: ASGIReceiveCallable
    ) -> list[ASGIReceiveEvent]:
        """The request's messages up to the end of its body (or a disconnect). Stops early, leaving the
        rest to the app, when the body is larger than the app accepts (it answers 413 without reading)."""
        for name, value in headers:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_size:
                return []
        events: list[ASGIReceiveEvent] = []
        size = 0
        while True:
            event = await receive()
            events.append(event)
            if event["type"] != "http.request":
                return events
            size += len(event.get("body", b""))
            if not event.get("more_body", False) or size > self.max_body_size:
                return events


def _replay(events: list[ASGIReceiveEvent], receive: ASGIReceiveCallable) -> ASGIReceiveCallable:
    pending = list(events)

    async def replay() -> ASGIReceiveEvent:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
