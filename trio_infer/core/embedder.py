"""What the batcher needs from a model: the `AsyncEmbedder` protocol that every backend adapter meets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .jobs import Vector


class AsyncEmbedder(Protocol):
    """The batcher's view of a model. Calls are checkpoints; they never run concurrently."""

    name: str
    device: str
    dimension: int
    max_tokens: int

    async def tokenize(self, texts: Sequence[str]) -> list[list[int]]: ...

    async def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]: ...
