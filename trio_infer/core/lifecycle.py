"""Readiness and the graceful drain: what `/ready` says, when the listener closes, and request deadlines
that the drain may shorten.

Sequence on SIGTERM or SIGINT: `/ready` turns 503 at once; after `drain_delay` the shutdown trigger
returns, so hypercorn stops accepting and closes idle keep-alive connections; requests already
received are answered; those still waiting `graceful_timeout` after the signal get 503.
"""

from __future__ import annotations

import enum
import logging
import math
import signal
from typing import Any

import trio

log = logging.getLogger(__name__)


class Phase(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"  # readiness off, still accepting (load balancers are catching up)
    CLOSING = "closing"  # listener closed; in-flight requests finish


class _RequestScope:
    """`with`: enters the cancel scope and registers it for the drain. A class, not a generator
    context manager: it runs on every request."""

    __slots__ = ("_registry", "scope")

    def __init__(self, registry: set[trio.CancelScope], scope: trio.CancelScope) -> None:
        self._registry = registry
        self.scope = scope

    def __enter__(self) -> trio.CancelScope:
        self._registry.add(self.scope)
        return self.scope.__enter__()

    def __exit__(self, *exc_info: Any) -> bool:
        self._registry.discard(self.scope)
        return self.scope.__exit__(*exc_info)


class Lifecycle:
    """The process's phase, shared by the probes, the request handlers and `serve.main`."""

    def __init__(self, *, graceful_timeout: float, drain_delay: float = 0.0) -> None:
        self.graceful_timeout = graceful_timeout
        self.drain_delay = drain_delay
        self.phase = Phase.STARTING
        self.drain_deadline = math.inf
        self.drain_started = trio.Event()
        self._scopes: set[trio.CancelScope] = set()

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def closing(self) -> bool:
        """True once the listener is closed: new requests are refused with 503."""
        return self.phase is Phase.CLOSING

    def mark_ready(self) -> None:
        if self.phase is Phase.STARTING:
            self.phase = Phase.READY

    def begin_drain(self) -> None:
        """Turn readiness off and bound every waiting request by the drain deadline. Idempotent."""
        if self.drain_started.is_set():
            return
        self.phase = Phase.DRAINING
        self.drain_deadline = trio.current_time() + self.drain_delay + self.graceful_timeout
        for scope in self._scopes:
            scope.deadline = min(scope.deadline, self.drain_deadline)
        self.drain_started.set()

    def drain_expired(self) -> bool:
        return trio.current_time() >= self.drain_deadline

    def request_scope(self, deadline: float) -> _RequestScope:
        """A cancel scope expiring at `deadline`, or at the drain deadline if that comes first."""
        return _RequestScope(self._scopes, trio.CancelScope(deadline=min(deadline, self.drain_deadline)))

    async def watch_signals(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the drain on SIGTERM/SIGINT. Keeps listening so a second signal does not kill the
        process mid-drain (it is logged); runs until cancelled."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.drain_started.is_set():
                    log.warning("%s received again: already draining (bounded by --graceful-timeout)", name)
                    continue
                log.info(
                    "%s received: not ready; closing the listener in %.1f s, draining for up to %.1f s",
                    name,
                    self.drain_delay,
                    self.graceful_timeout,
                )
                self.begin_drain()

    async def shutdown_trigger(self) -> None:
        """For hypercorn: returns when the listener should close (drain started + `drain_delay`)."""
        await self.drain_started.wait()
        await trio.sleep(self.drain_delay)
        self.phase = Phase.CLOSING
