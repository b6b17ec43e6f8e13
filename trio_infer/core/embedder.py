"""What the batcher needs from a model: the `AsyncEmbedder` protocol that every backend adapter meets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .jobs import Vector


class TokenIds(list[int]):
    """A text's token ids, truncated to the model's `max_tokens`, and how many tokens the text has.

    `total` counts the whole text's tokens when `exact`; when the model read only a head of a very long
    text (see models/truncation.py), `total` counts that head's tokens: a lower bound, already over
    `max_tokens`. A model that returns plain lists reports no more than it returned.
    """

    __slots__ = ("exact", "total")

    def __init__(self, ids: list[int], total: int, *, exact: bool = True) -> None:
        super().__init__(ids)
        self.total = total
        self.exact = exact


class AsyncEmbedder(Protocol):
    """The batcher's view of a model. Calls are checkpoints; they never run concurrently."""

    name: str
    device: str
    dimension: int
    max_tokens: int

    async def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, truncated to `max_tokens` (a `TokenIds` tells the untruncated count)."""
        ...

    async def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]: ...
