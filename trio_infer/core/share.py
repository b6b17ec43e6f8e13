"""Bulk's minimum share of the device: forward-pass time by class, and whether bulk is owed a pass.

Starvation is prevented by a guaranteed share of forward-pass time, not by aging bulk texts up.
Aging lets an old bulk text overtake a query whose wait a person feels, and how much bulk gets then
depends on the interactive rate; a time share bounds both sides at once: under sustained interactive
load bulk gets at least `min_share` of the device, and interactive texts lose that plus at most the
granularity of one (capped) bulk pass.

Time is shared among the classes of a pass's texts by their tokens and decayed per pass, so the
share follows the recent past (about the last `1 / (1 - decay)` contended passes). Pure: no I/O, no
clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from .jobs import Job
from .priority import Priority


class PassShare:
    """Only *contended* passes count: those planned while texts of both classes were waiting. A pass
    run while bulk had nothing waiting takes nothing from bulk, so a lone query never owes bulk a pass.
    """

    def __init__(self, min_share: float, decay: float = 0.95) -> None:
        self.min_share = min_share
        self._decay = decay
        self._seconds = dict.fromkeys(Priority, 0.0)

    @staticmethod
    def split(seconds: float, batch: Iterable[Job]) -> dict[Priority, float]:
        """The seconds of one pass over `batch` given to each class present, by their tokens."""
        tokens = dict.fromkeys(Priority, 0)
        for job in batch:
            tokens[job.priority] += max(1, job.n_tokens)
        total = sum(tokens.values())
        return {cls: seconds * count / total for cls, count in tokens.items() if count}

    def record(self, seconds: float, batch: Iterable[Job]) -> None:
        """Account one contended pass of `seconds` over `batch`."""
        shares = self.split(seconds, batch)
        for priority in Priority:
            self._seconds[priority] = self._seconds[priority] * self._decay + shares.get(priority, 0.0)

    def of(self, priority: Priority) -> float:
        """`priority`'s fraction of recent contended forward-pass time (0 before any)."""
        total = sum(self._seconds.values())
        return self._seconds[priority] / total if total > 0 else 0.0

    def bulk_owed(self) -> bool:
        """Whether bulk has had less than its minimum share of recent contended forward-pass time."""
        total = sum(self._seconds.values())
        return total > 0 and self._seconds[Priority.BULK] < self.min_share * total


__all__ = ["PassShare"]
