"""The device scheduler: one model call at a time per device, the most urgent class first, then the
oldest waiting text.

Models that share a device take turns on it: two forward passes on the same CPU cores (or the same
GPU) only slow each other down. When the device comes free, the turn goes to the waiting model whose
candidate pass is of the most urgent priority class (interactive before bulk), and among those to
the one holding the oldest text, whichever model it belongs to. So a saturated model cannot starve a
quiet one (a newcomer waits at most for the texts of its class that arrived before it), and one
model's bulk re-index never delays another model's queries by more than the pass already running.
Models on different devices hold different schedulers and run in parallel.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import trio

from .priority import Priority


class TurnKey(NamedTuple):
    """A pass's claim on the device: its most urgent class, then when its oldest text was admitted."""

    priority: Priority
    oldest: float


@dataclass(order=True)
class _Waiter:
    key: TurnKey
    seq: int
    granted: trio.Event = field(compare=False, default_factory=trio.Event)
    withdrawn: bool = field(compare=False, default=False)


class DeviceScheduler:
    """Grants turns on one device. Holds no tasks; `turn` is used by each model's dispatcher."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._busy = False
        self._waiting: list[_Waiter] = []  # a heap, oldest text first
        self._seq = itertools.count()
        self.turns_granted = 0

    @property
    def waiting(self) -> int:
        """Dispatchers waiting for a turn."""
        return sum(not waiter.withdrawn for waiter in self._waiting)

    @asynccontextmanager
    async def turn(self, oldest: float, priority: Priority = Priority.INTERACTIVE) -> AsyncIterator[None]:
        """Hold the device for the body; `priority` is the call's most urgent class and `oldest` when
        that class's oldest text in the call was admitted.

        Waits while another call holds the device. Cancelled while waiting, it leaves the queue;
        cancelled after the grant, it passes the turn on. Either way no turn is lost.
        """
        if not self._busy:
            await trio.lowlevel.checkpoint()
        if self._busy:
            waiter = _Waiter(TurnKey(priority, oldest), next(self._seq))
            heapq.heappush(self._waiting, waiter)
            try:
                await waiter.granted.wait()
            except BaseException:
                if waiter.granted.is_set():
                    self._pass_on()
                else:
                    waiter.withdrawn = True
                raise
        else:
            self._busy = True
        self.turns_granted += 1
        try:
            yield
        finally:
            self._pass_on()

    def _pass_on(self) -> None:
        """Hand the device to the waiter with the oldest text, or mark it free."""
        while self._waiting:
            waiter = heapq.heappop(self._waiting)
            if not waiter.withdrawn:
                waiter.granted.set()  # the device stays busy: the turn moves without a gap
                return
        self._busy = False


class DeviceSchedulers:
    """One scheduler per device name, created on first use."""

    def __init__(self) -> None:
        self._by_device: dict[str, DeviceScheduler] = {}

    def for_device(self, device: str) -> DeviceScheduler:
        scheduler = self._by_device.get(device)
        if scheduler is None:
            scheduler = self._by_device[device] = DeviceScheduler(device)
        return scheduler


__all__ = ["DeviceScheduler", "DeviceSchedulers", "TurnKey"]
