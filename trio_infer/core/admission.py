"""Admission: the one path a text takes into the batcher, the bound on waiting work of each priority
class, and the queues of admitted texts not yet tokenized.

A text is answered in one of three ways, decided here in this order:
1. a *hit*: the embedding cache holds its vector; it is answered at once (no queue, no bound, no
   model turn);
2. *coalesced*: an identical text (same cache key, same truncation rule) is queued or in a forward
   pass; the text joins that job and is computed once for everyone waiting on it;
3. *computed*: a new job, queued in its class's fair queue (round-robin between callers).

The new jobs of a request are admitted all-or-none: they must fit their class's bound and their
class's predicted wait must end before the deadline, or the request is refused and nothing of it is
kept. A class's bound counts only that class's texts, so a bulk flood never refuses an interactive
text.

A text is *waiting* from the moment it is admitted until it enters a forward pass or leaves (its
last caller withdrew, its deadline passed, tokenization failed). Waiting texts may sit in these
queues or, tokenized, in the dispatcher's prepared set; all of them count against their class's
bound.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import trio

from .cache import VectorCache
from .errors import Draining, InputTooLong, Overloaded, PayloadTooLarge
from .fair_queue import FairQueue
from .jobs import Job
from .metrics import ModelMetrics
from .priority import ANONYMOUS, Priority

# How long after its last interactive text a model still counts as serving interactive traffic
# (bulk passes are then kept short, so the next query does not wait behind a long one).
INTERACTIVE_ACTIVE_FOR = 1.0

Predict = Callable[[Priority, int], float | None]


class Wakeup:
    """A condition without a lock (trio runs one task at a time): waiters re-check their own
    condition after each `notify`."""

    def __init__(self) -> None:
        self._lot = trio.lowlevel.ParkingLot()

    async def wait(self) -> None:
        await self._lot.park()

    def notify(self) -> None:
        self._lot.unpark_all()


def _never(priority: Priority, extra: int) -> float | None:
    return None


class Admission:
    """Admits texts under each class's bound and keeps them queued, per class and per caller, until
    dispatch takes them. `changed` is notified on every arrival and on `close`. Never blocks.

    `cache`: finished vectors to answer from (a disabled one answers nothing). `max_tokens`: the
    model's token limit, for a cached text sent with `truncate` False.
    """

    def __init__(
        self,
        bounds: Mapping[Priority, int],
        metrics: ModelMetrics,
        cache: VectorCache,
        max_tokens: int,
    ) -> None:
        self.bounds = dict(bounds)
        self.metrics = metrics
        self.cache = cache
        self.max_tokens = max_tokens
        self.queues = {priority: FairQueue() for priority in Priority}
        self.waiting_by = dict.fromkeys(Priority, 0)  # jobs with `waiting` set, wherever they are
        self.inflight: dict[tuple[bytes, bool], Job] = {}  # (key, truncate) -> the job computing it
        self.closed = False
        self.changed = Wakeup()
        self.last_interactive = -math.inf  # when the last interactive text was admitted
        self._turns = itertools.count(1)

    @property
    def waiting(self) -> int:
        """Texts admitted and not yet in a forward pass, of every class."""
        return sum(self.waiting_by.values())

    @property
    def queued(self) -> int:
        """Texts queued and not yet taken for tokenization (dead ones not yet dropped included)."""
        return sum(len(queue) for queue in self.queues.values())

    def interactive_active(self, now: float) -> bool:
        """Whether interactive texts arrived within the last INTERACTIVE_ACTIVE_FOR seconds."""
        return now - self.last_interactive < INTERACTIVE_ACTIVE_FOR

    # -- admitting -------------------------------------------------------------------------------

    def admit(
        self,
        texts: Sequence[str],
        keys: Sequence[bytes],
        *,
        deadline: float,
        request_id: str = "",
        truncate: bool = True,
        priority: Priority = Priority.INTERACTIVE,
        caller: str = ANONYMOUS,
        predict: Predict = _never,
    ) -> list[Job]:
        """A job per text, in order (`keys[i]` is `texts[i]`'s cache key); or a ServiceError and
        nothing admitted.

        Jobs answered from the cache come back done. Raises Draining after `close` and
        PayloadTooLarge when the request's new texts can never fit their class's bound (neither
        when every text is a hit or joins one in flight), Overloaded (Retry-After) when the bound
        would be passed or `predict(priority, new texts)` (seconds until they would be done) ends
        after `deadline`.
        """
        now = trio.current_time()
        plan: list[Job | str] = []  # per text: a job to join or answer from, or "new"
        fresh: dict[bytes, int] = {}  # key -> index of its first new text in this request
        hits: dict[int, Job] = {}
        joins = 0
        for index, (text, key) in enumerate(zip(texts, keys, strict=True)):
            entry = self.cache.get(key) if self.cache.enabled else None
            if entry is not None:
                hit = Job(text=text, admitted_at=now, deadline=deadline, request_id=request_id, key=key)
                hit.priority, hit.caller, hit.token_count = priority, caller, entry.n_tokens
                hit.text_tokens, hit.text_tokens_exact = entry.text_tokens, entry.exact
                if not truncate and entry.text_tokens > self.max_tokens:
                    hit.fail(InputTooLong.counted(entry.text_tokens, entry.exact, self.max_tokens))
                else:
                    hit.succeed(entry.vector)
                hits[index] = hit
                plan.append(hit)
                continue
            running = self.inflight.get((key, truncate))
            if running is not None and not running.done.is_set():
                plan.append(running)
                joins += 1
            elif key in fresh:
                plan.append("new")
                joins += 1
            else:
                fresh[key] = index
                plan.append("new")
        count = len(fresh)
        if count:
            self._check(count, priority, caller, deadline, now, predict)
        # Admitted: from here nothing raises.
        jobs: list[Job] = []
        created: dict[bytes, Job] = {}
        for index, (text, key) in enumerate(zip(texts, keys, strict=True)):
            planned = plan[index]
            if isinstance(planned, Job):
                if index not in hits:
                    self._join(planned, deadline, priority)
                jobs.append(planned)
            elif key in created:
                self._join(created[key], deadline, priority)
                jobs.append(created[key])
            else:
                job = Job(
                    text=text,
                    admitted_at=now,
                    deadline=deadline,
                    request_id=request_id,
                    waiting=True,
                    truncate=truncate,
                    priority=priority,
                    caller=caller,
                    key=key,
                )
                created[key] = job
                self.inflight[(key, truncate)] = job
                jobs.append(job)
        if created:
            self.queues[priority].push(list(created.values()))
            self.waiting_by[priority] += len(created)
            self.metrics.of(priority).queue_size.set(self.waiting_by[priority])
        if priority is Priority.INTERACTIVE:
            self.last_interactive = now
        self.cache.count(hits=len(hits), misses=count, coalesced=joins)
        if hits:
            self.metrics.caller(caller, "cached").inc(len(hits))
        if len(texts) > len(hits):
            self.metrics.caller(caller, "computed").inc(len(texts) - len(hits))
        if created:
            self.changed.notify()
        return jobs

    def _check(
        self, count: int, priority: Priority, caller: str, deadline: float, now: float, predict: Predict
    ) -> None:
        """Raise unless `count` new texts of `priority` may be admitted now."""
        bound = self.bounds[priority]
        if count > bound:
            raise PayloadTooLarge(f"{count} texts exceed the {priority.label} queue's capacity of {bound}")
        if self.closed:
            raise Draining("the server is shutting down")
        predicted = predict(priority, count)
        reason = None
        if self.waiting_by[priority] + count > bound:
            reason = f"the {priority.label} queue is full"
        elif predicted is not None and now + predicted > deadline:
            reason = f"the predicted wait of {predicted:.1f} s exceeds the request's deadline"
        if reason is not None:
            self.metrics.of(priority).outcome["rejected"].inc(count)
            self.metrics.caller(caller, "rejected").inc(count)
            raise Overloaded(reason, retry_after=predicted or 1.0)

    def _join(self, job: Job, deadline: float, priority: Priority) -> None:
        """One more caller waits on `job` (queued or in a pass): it lives until the latest deadline,
        and in the most urgent class of its callers."""
        job.interest += 1
        job.abandoned = False
        job.deadline = max(job.deadline, deadline)
        if priority < job.priority:
            self._promote(job, priority)

    def _promote(self, job: Job, priority: Priority) -> None:
        old = job.priority
        if job.turn == 0 and self.queues[old].remove(job):  # still queued: move it to its new class
            self.queues[priority].push([job])
        job.priority = priority
        if job.waiting:
            self.waiting_by[old] -= 1
            self.waiting_by[priority] += 1
            self.metrics.of(old).queue_size.set(self.waiting_by[old])
            self.metrics.of(priority).queue_size.set(self.waiting_by[priority])
        self.changed.notify()

    # -- leaving ---------------------------------------------------------------------------------

    def withdraw(self, jobs: Sequence[Job]) -> int:
        """One caller leaves: its unanswered jobs lose its interest, and a job nobody waits on any
        more is abandoned (never computed; it stops counting at once). Returns how many of `jobs`
        were unanswered."""
        count = 0
        for job in jobs:
            if job.done.is_set():
                continue
            count += 1
            job.interest -= 1
            if job.interest <= 0 and not job.abandoned:
                job.abandoned = True
                if job.waiting:  # a job in a pass stays joinable: its vector is on its way
                    self.forget(job)
                self.release(job)
        return count

    def release(self, job: Job) -> None:
        """`job` stops counting against its bound (it entered a pass, or left). Idempotent."""
        if job.waiting:
            job.waiting = False
            self.waiting_by[job.priority] -= 1
            self.metrics.of(job.priority).queue_size.set(self.waiting_by[job.priority])

    def forget(self, job: Job) -> None:
        """`job` can no longer be joined (it is finished, or nobody waits on it)."""
        slot = (job.key, job.truncate)
        if self.inflight.get(slot) is job:
            del self.inflight[slot]

    def keep(self, job: Job, now: float) -> bool:
        """Whether to compute `job`. A job whose callers left or whose deadline passed is released and
        counted as skipped, once."""
        if job.live(now):
            return True
        self.release(job)
        self.forget(job)
        if not job.done.is_set() and not job.dropped:
            job.dropped = True
            self.metrics.of(job.priority).skipped.inc()
        return False

    # -- taking ----------------------------------------------------------------------------------

    def _keeper(self) -> Callable[[Job], bool]:
        now = trio.current_time()
        return lambda job: self.keep(job, now)

    def has_live(self, priority: Priority | None = None) -> bool:
        """Whether a job worth computing is queued (of `priority`, or of any class)."""
        keep = self._keeper()
        for cls in Priority if priority is None else (priority,):
            self.queues[cls].prune(keep)
            if len(self.queues[cls]):
                return True
        return False

    def oldest(self) -> Job | None:
        """The longest-queued live job of the most urgent class that has one."""
        keep = self._keeper()
        for queue in self.queues.values():
            queue.prune(keep)
            heads = list(queue.heads())
            if heads:
                return min(heads, key=lambda job: job.admitted_at)
        return None

    def take(self, limit: int, *, bulk_limit: int | None = None, bulk_first: bool = False) -> list[Job]:
        """Up to `limit` live jobs, each class round-robin between its callers: interactive ones
        first (bulk first when `bulk_first`), bulk ones at most `bulk_limit` (default: `limit`).
        Each gets its `turn`, the order the planner serves a class in."""
        keep = self._keeper()
        quota = {Priority.INTERACTIVE: limit, Priority.BULK: limit if bulk_limit is None else bulk_limit}
        order = (Priority.BULK, Priority.INTERACTIVE) if bulk_first else tuple(Priority)
        taken: list[Job] = []
        for cls in order:
            queue = self.queues[cls]
            while len(taken) < limit and quota[cls] > 0:
                job = queue.pop(keep)
                if job is None:
                    break
                job.turn = next(self._turns)
                quota[cls] -= 1
                taken.append(job)
        return taken

    def close(self) -> None:
        """Refuse new texts; what is queued is still served."""
        self.closed = True
        self.changed.notify()


__all__ = ["INTERACTIVE_ACTIVE_FOR", "Admission", "Predict", "Wakeup"]
