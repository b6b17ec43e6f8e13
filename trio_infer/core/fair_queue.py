"""Fair share between callers: one class's queued texts, a FIFO per caller, taken round-robin.

Guarantee: while k callers have texts queued in a class, any k consecutive takes give one text to
each of them, in the order they first queued. So one caller's single text waits for at most one text
of every other caller ahead of it, however long their lists are: a 2,048-text list never holds back
another caller's query. Round-robin by text (not by tokens) because it is decided before
tokenization, when token counts are unknown; texts are cut to the model's limit, so a text's cost
is bounded and a caller of long texts gains at most that bound per turn.

Pure data structure: no I/O, no tasks; every operation is O(1) except `remove` (O(length of the
caller's queue), used only when a queued text changes class).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence

from .jobs import Job


class FairQueue:
    def __init__(self) -> None:
        # caller -> its queued jobs, oldest first; the dict's order is the rotation (next caller first)
        self._callers: OrderedDict[str, deque[Job]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        """Jobs queued, dead ones not yet dropped included."""
        return self._count

    def push(self, jobs: Sequence[Job]) -> None:
        """Queue `jobs` behind their callers' earlier ones; a caller new to the rotation goes last."""
        for job in jobs:
            queue = self._callers.get(job.caller)
            if queue is None:
                queue = self._callers[job.caller] = deque()
            queue.append(job)
        self._count += len(jobs)

    def pop(self, keep: Callable[[Job], bool]) -> Job | None:
        """The next caller's oldest job for which `keep` is true (the others are dropped on the way),
        moving that caller to the end of the rotation; None when no such job is queued."""
        while self._callers:
            caller, queue = next(iter(self._callers.items()))
            job = queue.popleft()
            self._count -= 1
            if queue:
                self._callers.move_to_end(caller)
            else:
                del self._callers[caller]
            if keep(job):
                return job
        return None

    def prune(self, keep: Callable[[Job], bool]) -> None:
        """Drop the dead jobs at the head of every caller's queue."""
        for caller in list(self._callers):
            queue = self._callers[caller]
            while queue and not keep(queue[0]):
                queue.popleft()
                self._count -= 1
            if not queue:
                del self._callers[caller]

    def heads(self) -> Iterator[Job]:
        """Each caller's oldest queued job."""
        return (queue[0] for queue in self._callers.values())

    def remove(self, job: Job) -> bool:
        """Take `job` out wherever it is queued; whether it was there."""
        queue = self._callers.get(job.caller)
        if queue is None or job not in queue:
            return False
        queue.remove(job)
        self._count -= 1
        if not queue:
            del self._callers[job.caller]
        return True

    def callers(self) -> int:
        """Callers with jobs queued."""
        return len(self._callers)


__all__ = ["FairQueue"]
