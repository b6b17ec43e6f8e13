"""One client connection under hypercorn's trio worker: contained, capped and on deadlines.

`GuardedTCPServer` takes the place of hypercorn's `TCPServer` (see `hypercorn_fixes.install`) and
changes what one connection can do to the process:

* Containment. An exception that escapes hypercorn's handling of one connection (a protocol bug, such
  as hypercorn 0.18's KeyError on a DATA frame for a stream it has already answered) closes that
  connection only and is logged; it never reaches the listener's nursery, which would end the server.
  `trio.Cancelled` is never caught.
* A cap on open connections (`--max-connections`). A connection over the cap is answered `503` with
  `Retry-After` and closed at once, before a byte of it is read.
* A deadline on the request head (`--header-timeout`). The head of the first request must arrive
  within it of the connect; the head of a later request within it of that request's first byte (the
  wait for that first byte is the keep-alive timeout). A client that dribbles header bytes
  (slowloris) is disconnected when it passes.
* A deadline on every write (`--write-timeout`): a client that does not read its response is
  disconnected when one 64 KiB slice of it has waited that long for room in the socket. Once the
  drain starts no write may outlast hypercorn's own drain deadline, so such a client cannot hold the
  process past `--graceful-timeout`.
* Two fixes of hypercorn's connection handling: the keep-alive timer is stopped when the read loop
  ends (else a client that left before sending a whole head would hold its socket and tasks for the
  whole keep-alive timeout), and a `BusyResourceError` from a write that races the close (`send_eof`)
  is the client leaving, not an application error.

With a plain hypercorn `Config` (no `ServerConfig`) the connection behaves as hypercorn's own.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from math import inf

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer

log = logging.getLogger(__name__)

# Longest slice handed to one `send_all`: the write deadline is a bound on the client making no
# progress, not on the size of the response.
WRITE_SLICE = 64 * 1024
# What a connection over the cap gets: it is written before anything is read, and the socket closes.
_BUSY_BODY = b'{"error":"overloaded","detail":"too many open connections; retry later"}'
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n"
    b"\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
# A refused connection may take this long to accept the 503 before it is closed anyway.
_REFUSAL_WRITE_TIMEOUT = 1.0
# At most one log line per this many seconds per kind of event a client can cause at will.
_LOG_INTERVAL = 10.0


class CloseConnection(Exception):
    """Raised inside a connection's handling to close it on purpose: closed quietly, not logged."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int = 1024
    header_timeout: float = 10.0
    write_timeout: float = 30.0
    http2: bool = False


class _LogLimiter:
    """Logs the first event of a kind, then at most one line per interval with the count since."""

    def __init__(self, interval: float = _LOG_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, kind: str) -> int | None:
        """None: stay quiet; else how many events of this kind went unlogged before this one."""
        now = time.monotonic()
        if now - self._last.get(kind, -inf) < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self._suppressed.pop(kind, 0)


class ConnectionGuard:
    """The state the connections of one worker process share: the open count and the drain deadline.

    Lives as long as the server; not thread-safe (used from the event loop only).
    """

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self.refused = 0
        self.logs = _LogLimiter()
        self._drain_deadline = inf
        self._writes: set[trio.CancelScope] = set()

    def admit(self) -> bool:
        if self.open >= self.limits.max_connections:
            self.refused += 1
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1

    @contextmanager
    def write_deadline(self) -> Iterator[trio.CancelScope]:
        """A cancel scope for one write: the write timeout, or the drain deadline if sooner."""
        deadline = min(trio.current_time() + self.limits.write_timeout, self._drain_deadline)
        with trio.CancelScope(deadline=deadline) as scope:
            self._writes.add(scope)
            try:
                yield scope
            finally:
                self._writes.discard(scope)

    def start_drain(self, grace: float) -> None:
        """From now on no write outlasts `grace` seconds, including those already waiting."""
        self._drain_deadline = min(self._drain_deadline, trio.current_time() + grace)
        for scope in self._writes:
            scope.deadline = min(scope.deadline, self._drain_deadline)

    def shutdown_trigger(
        self, trigger: Callable[[], Awaitable[None]], grace: float
    ) -> Callable[[], Awaitable[None]]:
        """`trigger`, then the drain deadline is set: pass the result to hypercorn's `serve`."""

        async def trigger_then_bound_writes() -> None:
            await trigger()
            self.start_drain(grace)

        return trigger_then_bound_writes


class ServerConfig(Config):
    """hypercorn's Config plus the guard its connections share."""

    def __init__(self, limits: ConnectionLimits) -> None:
        super().__init__()
        self.guard = ConnectionGuard(limits)


def _guard_of(config: Config) -> ConnectionGuard | None:
    return config.guard if isinstance(config, ServerConfig) else None


class GuardedTCPServer(TCPServer):
    """hypercorn's TCPServer with the containment, cap and deadlines of the module docstring."""

    # Between the end of one request's head and the first byte of the next, the connection waits
    # up to the keep-alive timeout; from that first byte (or from the connect), the header timeout.
    _awaiting_head = True
    _head_clock_running = True

    async def run(self) -> None:
        guard = _guard_of(self.config)
        if guard is None:
            await super().run()
            return
        if not guard.admit():
            await self._refuse(guard)
            return
        try:
            await super().run()
        except* CloseConnection:
            pass
        except* Exception as group:  # trio.Cancelled is a BaseException: it passes through
            self._log_contained(guard, group)
        finally:
            guard.release()

    async def _refuse(self, guard: ConnectionGuard) -> None:
        unlogged = guard.logs.allow("refused")
        if unlogged is not None:
            log.warning(
                "connection refused: %d open, the cap is --max-connections=%d (%d more refused unlogged)",
                guard.open,
                guard.limits.max_connections,
                unlogged,
            )
        with trio.move_on_after(_REFUSAL_WRITE_TIMEOUT):
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self.stream.send_all(_BUSY_RESPONSE)
        with trio.CancelScope(shield=True):
            await self.stream.aclose()

    def _log_contained(self, guard: ConnectionGuard, group: BaseExceptionGroup[Exception]) -> None:
        unlogged = guard.logs.allow("contained")
        if unlogged is None:
            return
        log.error(
            "closed a connection after an error in its HTTP handling; the server keeps serving "
            "(%d more unlogged)",
            unlogged,
            exc_info=group,
        )

    async def protocol_send(self, event: Event) -> None:
        guard = _guard_of(self.config)
        if isinstance(event, Updated):
            self._awaiting_head = event.idle
            self._head_clock_running = False
            await super().protocol_send(event)
        elif isinstance(event, RawData) and guard is not None:
            await self._write(guard, event.data)
        else:
            try:
                await super().protocol_send(event)
            except trio.BusyResourceError:  # `_close()` is sending EOF: the client is going away
                await self.protocol.handle(Closed())

    async def _write(self, guard: ConnectionGuard, data: bytes) -> None:
        """Write under the write deadline; a client that makes no progress is disconnected.

        Shielded as hypercorn's own write is (a write cut short would leave a partial frame on the
        wire): only the deadline ends it, and then the socket is closed.
        """
        view = memoryview(data)
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True):
                    for start in range(0, len(view), WRITE_SLICE):
                        with guard.write_deadline() as deadline:
                            await self.stream.send_all(view[start : start + WRITE_SLICE])
                        if deadline.cancelled_caught:
                            unlogged = guard.logs.allow("write-timeout")
                            if unlogged is not None:
                                log.info(
                                    "disconnected a client that did not read its response "
                                    "(--write-timeout=%s; %d more unlogged)",
                                    guard.limits.write_timeout,
                                    unlogged,
                                )
                            await self._abort()
                            await self.protocol.handle(Closed())
                            return
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                await self.protocol.handle(Closed())

    async def _abort(self) -> None:
        """Close with a reset: what the client did not read is discarded, not kept in kernel memory
        and trickled to it after the close."""
        sock = getattr(self.stream, "socket", None)
        if sock is not None:
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.stream.aclose()

    async def _read_data(self) -> None:
        """hypercorn's read loop, plus: the first byte of a request head starts the header deadline,
        and the keep-alive timer stops when the loop ends (nothing more can be read)."""
        guard = _guard_of(self.config)
        try:
            while True:
                try:
                    with trio.fail_after(self.config.read_timeout or inf):
                        data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                    break
                if data and guard is not None and self._awaiting_head and not self._head_clock_running:
                    self._head_clock_running = True
                    await self.idle_task.restart(self._task_group, self._header_timeout)
                await self.protocol.handle(RawData(bytes(data)))
                if data == b"":
                    break
            await self.protocol.handle(Closed())
        finally:
            await self.idle_task.stop()

    async def _idle_timeout(self) -> None:
        guard = _guard_of(self.config)
        if guard is not None and self._awaiting_head and self._head_clock_running:
            # no request has been read on this connection yet: its head is due from the connect
            limit = min(guard.limits.header_timeout, self.config.keep_alive_timeout)
        else:
            limit = self.config.keep_alive_timeout
        await self._close_after(limit)

    async def _header_timeout(self) -> None:
        guard = _guard_of(self.config)
        assert guard is not None
        await self._close_after(guard.limits.header_timeout)

    async def _close_after(self, limit: float) -> None:
        with trio.move_on_after(limit):
            await self.context.terminated.wait()
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()


__all__ = ["CloseConnection", "ConnectionGuard", "ConnectionLimits", "GuardedTCPServer", "ServerConfig"]
