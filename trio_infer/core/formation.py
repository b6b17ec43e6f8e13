"""Batch formation: cut a window of queued texts into forward passes that waste the least padding.

Pure functions with no I/O, so the policy can be tested exhaustively and reasoned about alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CostModel:
    """Predicted seconds of one forward pass of `count` texts padded to `length` tokens.

    fixed: per call (launch, Python glue); per_token: per padded token; per_token_sq: per item per
    squared length (attention grows quadratically with length).
    """

    fixed: float
    per_token: float
    per_token_sq: float = 0.0

    def batch_cost(self, count: int, length: int) -> float:
        return self.fixed + count * length * (self.per_token + self.per_token_sq * length)


def plan_batches(lengths: Sequence[int], cost: CostModel, max_tokens: int, max_size: int) -> list[list[int]]:
    """Indices of `lengths` grouped into batches, shortest texts first.

    Items are sorted by length and cut where the cost model says a cut pays: a short text is never
    padded to a long one's length when running it separately is cheaper. Each batch holds at most
    `max_size` items and `count x longest <= max_tokens` padded tokens, except that a single text
    longer than the budget still forms a batch of its own (it is served, not rejected).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    # best[j]: least cost of the first j sorted items; cut[j]: where its last batch starts.
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = max(1, lengths[order[j - 1]])
        for i in range(j - 1, max(-1, j - 1 - max_size), -1):
            count = j - i
            if count > 1 and count * longest > max_tokens:
                break  # earlier starts only add items to this batch
            total = best[i] + cost.batch_cost(count, longest)
            if total < best[j]:
                best[j], cut[j] = total, i
    batches: list[list[int]] = []
    j = n
    while j > 0:
        batches.append(order[cut[j] : j])
        j = cut[j]
    batches.reverse()
    return batches
