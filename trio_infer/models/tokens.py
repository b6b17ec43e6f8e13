"""A model's tokenizer as clients see it (TEI's `/tokenize` and `/decode`): tokens with their offsets,
and ids back to text.

These calls never touch the tokenizer object the batcher tokenizes with: a fast tokenizer keeps its
padding and truncation settings as shared state, so a model answers them with a tokenizer of its own
(see `SentenceTransformerModel`), one call at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Token:
    """One token of a text. `start`/`stop` are UTF-8 byte offsets into the text (TEI's convention),
    None for a special token the tokenizer added; `text` is the token's piece of the text, or the
    special token itself."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


@runtime_checkable
class BlockingTokenizer(Protocol):
    """What a blocking `Model` offers for the tokenizer routes; call from one thread at a time."""

    def tokenize_detailed(self, texts: Sequence[str], add_special_tokens: bool) -> list[list[Token]]:
        """Every token of each text, untruncated."""
        ...

    def decode(self, ids: Sequence[Sequence[int]], skip_special_tokens: bool) -> list[str]:
        """The text of each id list."""
        ...


@runtime_checkable
class AsyncTokenizer(Protocol):
    """The same, as checkpoints: the http layer's view. Calls may run concurrently; an implementation
    serialises them itself. Cancelling a call abandons its thread (the result is dropped)."""

    async def tokenize_detailed(self, texts: Sequence[str], add_special_tokens: bool) -> list[list[Token]]:
        """Every token of each text, untruncated."""
        ...

    async def decode(self, ids: Sequence[Sequence[int]], skip_special_tokens: bool) -> list[str]:
        """The text of each id list."""
        ...


def tokenizer_of(embedder: object) -> AsyncTokenizer | None:
    """The tokenizer routes' view of a served model's embedder (its `tokens`), or None for a model
    that offers none."""
    tokens = getattr(embedder, "tokens", None)
    return tokens if isinstance(tokens, AsyncTokenizer) else None


def byte_offsets(text: str, start: int, stop: int) -> tuple[int, int]:
    """Character offsets `[start, stop)` of `text` as UTF-8 byte offsets."""
    head = len(text[:start].encode("utf-8", "surrogatepass"))
    return head, head + len(text[start:stop].encode("utf-8", "surrogatepass"))
