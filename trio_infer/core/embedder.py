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
    """The batcher's view of a model.

    Calls are checkpoints. The batcher never runs two `embed` (or `tokenize_and_embed`) calls at once,
    nor two `tokenize` calls at once, but it may tokenize the next batch while a forward pass runs; an
    adapter whose model cannot overlap the two serialises them itself. Cancelling a call may abandon
    the work behind it (the batcher cancels only at a shutdown whose deadline has passed).
    """

    name: str
    device: str
    dimension: int
    max_tokens: int
    # Whether the model's own pipeline ends in a Normalize module. `embed` returns the vectors before
    # it; the batcher applies it per text at delivery (`vectors.finish`), unless the caller asked not to.
    normalizes: bool

    async def tokenize(self, texts: Sequence[str], tails: Sequence[bool] = ()) -> list[list[int]]:
        """Token ids of each text, truncated to `max_tokens`, unpadded (a `TokenIds` tells the
        untruncated count). `tails[i]` True keeps a long text's last tokens instead of its first
        (no `tails`: every text keeps its first)."""
        ...

    async def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        """One vector per text, from its token ids as `tokenize` gave them, before the model's
        final Normalize module (when `normalizes`)."""
        ...

    async def tokenize_and_embed(
        self, texts: Sequence[str], tails: Sequence[bool] = ()
    ) -> tuple[list[list[int]], list[Vector]]:
        """`tokenize` then `embed` in one call (one thread hop for a lone text): (token ids, vectors)."""
        ...
