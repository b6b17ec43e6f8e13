"""A job: one text on its way through the batcher, and the slot its result comes back in."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import trio

from .priority import ANONYMOUS, Priority

Vector = npt.NDArray[np.float32]

_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class Job:
    """One text to compute, shared by every caller waiting on it. The callers wait on `done`; exactly
    one of `vector` or `error` is set before it fires.

    `interest` counts the callers waiting (identical texts in flight are computed once, see
    `admission.Admission.admit`); when the last one leaves, the job is `abandoned` and the batcher
    skips it, so no compute is spent on it. `deadline` is the latest of its callers' deadlines.
    `waiting` is True from admission until the job enters a forward pass or leaves (withdrawn,
    skipped, failed): exactly the jobs that count against the queue bound of their class.
    """

    text: str
    admitted_at: float
    deadline: float
    request_id: str = ""
    job_id: int = field(default_factory=lambda: next(_ids))
    tokens: list[int] | None = None
    truncate: bool = True  # False: a text over the model's limit fails with InputTooLong
    priority: Priority = Priority.INTERACTIVE
    caller: str = ANONYMOUS  # a configured caller name (bounded: it labels metrics)
    key: bytes = b""  # cache key (cache.cache_key): identical texts share it
    turn: int = 0  # the order in which fair share took it from its class's queue (lower: first)
    interest: int = 1
    text_tokens: int = 0  # the whole text's tokens before truncation (a lower bound when not exact)
    text_tokens_exact: bool = True
    token_count: int = 0  # tokens the model read, for a job answered from the cache (no `tokens`)
    vector: Vector | None = None
    error: BaseException | None = None
    abandoned: bool = False
    dropped: bool = False  # skipped by the batcher (caller gone or deadline passed); counted once
    waiting: bool = False
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens) if self.tokens is not None else self.token_count

    def live(self, now: float) -> bool:
        """Whether computing this job still helps someone."""
        return not self.abandoned and not self.done.is_set() and now < self.deadline

    def succeed(self, vector: Vector) -> None:
        if not self.done.is_set():
            self.vector = vector
            self.done.set()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()
