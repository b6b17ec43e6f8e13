"""Fixes for hypercorn's trio worker (0.17-0.18) that matter under hostile or careless traffic.

1. When a client goes away (EOF, a reset, a read timeout), `TCPServer._read_data` returns but leaves
   the connection's keep-alive idle timer running, and the connection's task group, with its socket
   and tasks, waits for that timer: `keep_alive_timeout` (75 s here) per connection. A client that
   connects and leaves before sending a whole request head (a port scan, a load balancer's TCP check,
   a caller that crashed) would hold a file descriptor and two tasks that long, and a storm of them
   exhausts the descriptor limit. Nothing more can be read once the read loop has ended, so there is
   nothing to keep alive: the timer is stopped and the connection closes as soon as any request in
   flight is answered.
2. When the client closes while a response is being written, the read loop's `_close()` (`send_eof`)
   can race the response's `send_all`, which then raises `trio.BusyResourceError`. hypercorn treats a
   broken or closed stream as the client leaving but not this, so the app fails with "Error in ASGI
   Framework" and a stack trace in the log for an ordinary disconnect. It is handled the same way here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.events import Closed, Event
from hypercorn.trio.tcp_server import TCPServer

_original_read_data: Callable[[Any], Awaitable[None]] = TCPServer._read_data
_original_protocol_send: Callable[[Any, Event], Awaitable[None]] = TCPServer.protocol_send


async def _read_data_then_stop_idle_timer(self: Any) -> None:
    try:
        await _original_read_data(self)
    finally:
        await self.idle_task.stop()


async def _protocol_send_closing_race_is_a_close(self: Any, event: Event) -> None:
    try:
        await _original_protocol_send(self, event)
    except trio.BusyResourceError:  # `_close()` is sending EOF: the connection is going away
        await self.protocol.handle(Closed())


def install() -> None:
    """Patch hypercorn's trio TCPServer (idempotent)."""
    TCPServer._read_data = _read_data_then_stop_idle_timer  # type: ignore[method-assign]
    TCPServer.protocol_send = _protocol_send_closing_race_is_a_close  # type: ignore[method-assign]
