"""Plaintext HTTP/2 under hypercorn: off unless `--http2`, and safe against two known attacks when on.

hypercorn's HTTP/1.1 protocol switches a connection to HTTP/2 when a request starts with the HTTP/2
preface (prior knowledge) or asks `Upgrade: h2c`. With HTTP/2 off (the default):

* the preface (`PRI * HTTP/2.0`) is answered `505 HTTP Version Not Supported` and the connection
  closes (`HTTP2Refused`, which the connection handler closes quietly);
* `Upgrade: h2c` is ignored, as RFC 9110 allows: the request is answered over HTTP/1.1.

With HTTP/2 on, two fixes of hypercorn's frame handling:

* A DATA frame for a stream hypercorn has already answered and forgotten (the client had not ended
  its side yet) is acknowledged for flow control and dropped. hypercorn 0.18 raised `KeyError`
  there, out of the connection's task and, without `GuardedTCPServer`, out of the server.
* Rapid reset (CVE-2023-44487): every HEADERS frame starts an application task, and a client that
  resets each stream at once is never held back by the concurrent-stream limit. A connection whose
  client resets more than `RESET_BURST` streams, refilled at `RESET_RATE` per second, gets GOAWAY
  ENHANCE_YOUR_CALM and is closed.

With a plain hypercorn `Config` HTTP/2 stays as hypercorn has it (on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import h2.errors
import h2.events
import h11
import trio
from hypercorn.config import Config
from hypercorn.events import Closed
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol

from .connections import CloseConnection, ServerConfig

log = logging.getLogger(__name__)

CheckProtocol = Callable[[H11Protocol, h11.Request], Coroutine[Any, Any, None]]
HandleEvents = Callable[[H2Protocol, list[h2.events.Event]], Coroutine[Any, Any, None]]

RESET_BURST = 200
RESET_RATE = 20.0


class HTTP2Refused(CloseConnection):
    """A client spoke HTTP/2 to a server with HTTP/2 off; it has been answered 505."""


def http2_enabled(config: Config) -> bool:
    return config.guard.limits.http2 if isinstance(config, ServerConfig) else True


def check_protocol(original: CheckProtocol) -> CheckProtocol:
    """Wrap `H11Protocol._check_protocol`, which raises to switch the connection to HTTP/2."""

    async def check_protocol_http1_unless_enabled(self: H11Protocol, event: h11.Request) -> None:
        if http2_enabled(self.config):
            await original(self, event)
        elif event.method == b"PRI" and event.target == b"*" and event.http_version == b"2.0":
            await self._send_error_response(505)
            raise HTTP2Refused
        # else an `Upgrade: h2c` header, if any, is ignored and the request is served over HTTP/1.1

    return check_protocol_http1_unless_enabled


class _ResetBudget:
    """Token bucket of client stream resets for one connection."""

    def __init__(self) -> None:
        self.tokens = float(RESET_BURST)
        self.stamp = trio.current_time()

    def spend(self) -> bool:
        now = trio.current_time()
        self.tokens = min(float(RESET_BURST), self.tokens + (now - self.stamp) * RESET_RATE)
        self.stamp = now
        self.tokens -= 1
        return self.tokens >= 0


def handle_events(original: HandleEvents) -> HandleEvents:
    """Wrap `H2Protocol._handle_events`: events go to hypercorn one at a time, so that a DATA frame is
    checked against the streams as they are after the events before it."""

    async def handle_events_guarded(self: H2Protocol, events: list[h2.events.Event]) -> None:
        state: Any = self
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                continue
            if isinstance(event, h2.events.StreamReset) and event.remote_reset:
                budget = getattr(state, "_trio_infer_resets", None)
                if budget is None:
                    budget = state._trio_infer_resets = _ResetBudget()
                if not budget.spend():
                    log.warning("closed an HTTP/2 connection that reset streams too fast (rapid reset)")
                    self.connection.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                    await self._flush()
                    await self.send(Closed())
                    return
            await original(self, [event])
        await self._flush()

    return handle_events_guarded


__all__ = ["HTTP2Refused", "check_protocol", "handle_events", "http2_enabled"]
