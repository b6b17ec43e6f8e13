"""Priority classes: who is waiting on a text, and so which texts the model computes first.

`INTERACTIVE` is a person waiting on a query; `BULK` is an indexing job that only cares about
throughput. Lower values are served first; the labels are what clients send (`X-Priority`) and what
the `priority` metric label holds.
"""

from __future__ import annotations

import enum


class Priority(enum.IntEnum):
    INTERACTIVE = 0
    BULK = 1

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, raw: str) -> Priority:
        """The class named `raw` (case-insensitive); ValueError naming the allowed ones."""
        value = raw.strip().lower()
        for priority in cls:
            if priority.label == value:
                return priority
        raise ValueError(f"must be one of {', '.join(LABELS)}, got {raw!r}")


LABELS: tuple[str, ...] = tuple(priority.label for priority in Priority)

# The caller of requests that present no configured API key (no --api-keys-file, or open routes).
ANONYMOUS = "anonymous"

__all__ = ["ANONYMOUS", "LABELS", "Priority"]
