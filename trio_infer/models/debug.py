"""`MODEL_NAME=debug`: deterministic unit vectors from a hash of the text, no torch work.

For measuring the serving path alone and for users' integration tests. Its work is a hash per text,
cheaper than a thread hop, so it runs on the event loop (an `AsyncEmbedder` itself): the serving path
is measured without a model's costs. With `--debug-faults` (never in production: any client could
stall or crash the process), marker texts inject faults into the forward pass; without it a marker
is plain text and is hashed like any other:

- `[[sleep:SECONDS]]` anywhere in a text: the forward pass holding it waits that long (the longest
  marker in the batch) before answering; keeps the model busy or simulates a hang (`--watchdog-timeout`).
- `[[fail]]`: the forward pass holding it raises `DebugModelError`: a poison input. The batcher fails
  the batch, retries its texts one by one, and only the poison text's request gets 500.
- `[[crash]]`: the forward pass raises `CollectorCrash`, a `BaseException` that model error handling
  does not catch, standing in for a bug in a batch collector: the process logs it and exits non-zero.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import trio

from ..core.jobs import Vector
from .tokens import Token, byte_offsets
from .truncation import token_ids, tokenize_heads

DEBUG_DIMENSION = 384

_SLEEP = re.compile(r"\[\[sleep:(\d+(?:\.\d*)?|\.\d+)\]\]")
FAIL_MARKER = "[[fail]]"
CRASH_MARKER = "[[crash]]"


CLS, SEP, WORD = 101, 102, 1000
_NAMES = {CLS: "[CLS]", SEP: "[SEP]"}
_WORD_NAME = "[WORD]"  # the debug model keeps no vocabulary: every word is one id
_WORD = re.compile(r"\S+")


def _words(texts: list[str]) -> list[list[int]]:
    return [[WORD] * len(text.split()) for text in texts]


def _wrap(content: list[int]) -> list[int]:
    return [CLS, *content, SEP]


class DebugTokenizer:
    """The debug model's tokens for the tokenizer routes: one per whitespace-separated word, between
    `[CLS]` and `[SEP]`. Pure and cheap, so it runs on the event loop."""

    async def tokenize_detailed(self, texts: Sequence[str], add_special_tokens: bool) -> list[list[Token]]:
        await trio.lowlevel.checkpoint()
        result = []
        for text in texts:
            words = [
                Token(WORD, match.group(), False, *byte_offsets(text, match.start(), match.end()))
                for match in _WORD.finditer(text)
            ]
            if add_special_tokens:
                words = [
                    Token(CLS, _NAMES[CLS], True, None, None),
                    *words,
                    Token(SEP, _NAMES[SEP], True, None, None),
                ]
            result.append(words)
        return result

    async def decode(self, ids: Sequence[Sequence[int]], skip_special_tokens: bool) -> list[str]:
        await trio.lowlevel.checkpoint()
        return [
            " ".join(
                _NAMES.get(id_, _WORD_NAME) for id_ in row if not (skip_special_tokens and id_ in _NAMES)
            )
            for row in ids
        ]


class DebugModelError(RuntimeError):
    """Raised by a forward pass over a `[[fail]]` text."""


class CollectorCrash(BaseException):  # escapes `except Exception` on purpose
    """Raised by a forward pass over a `[[crash]]` text; simulates a bug that kills a collector."""


class DebugEmbedder:
    """Same text, same vector; different texts, (almost surely) different vectors.

    Calls are checkpoints; a `[[sleep:S]]` pass blocks its collector (as a busy model would), never
    the event loop."""

    name = "debug"
    device = "cpu"
    backend = "debug"
    precision = "none"
    dimension = DEBUG_DIMENSION
    max_tokens = 512
    normalizes = False  # no Normalize module: its vectors are unit length by construction
    pooling = "none"  # a hash of the whole text, no token embeddings to pool

    def __init__(self, *, faults: bool = False) -> None:
        self.faults = faults
        self.tokens = DebugTokenizer()

    async def tokenize(self, texts: Sequence[str], tails: Sequence[bool] = ()) -> list[list[int]]:
        await trio.lowlevel.checkpoint()
        # One pseudo-token per whitespace word plus two markers, so length-aware batching still has
        # lengths; a long text is cut and counted as the real model's are (models/truncation.py).
        heads = tokenize_heads(texts, _words, self.max_tokens - 2, tails)
        return [token_ids(content, total, exact, _wrap) for content, total, exact in heads]

    async def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        if self.faults:
            await self._inject_faults(texts)
        else:
            await trio.lowlevel.checkpoint()
        return [self._vector(text) for text in texts]

    async def _inject_faults(self, texts: Sequence[str]) -> None:
        pause = max((float(m) for text in texts for m in _SLEEP.findall(text)), default=0.0)
        await trio.sleep(pause)
        if any(CRASH_MARKER in text for text in texts):
            raise CollectorCrash("[[crash]] marker: simulated collector crash")
        if any(FAIL_MARKER in text for text in texts):
            raise DebugModelError("[[fail]] marker: simulated model failure")

    async def tokenize_and_embed(
        self, texts: Sequence[str], tails: Sequence[bool] = ()
    ) -> tuple[list[list[int]], list[Vector]]:
        token_ids = await self.tokenize(texts, tails)
        return token_ids, await self.embed(texts, token_ids)

    def vectors(self, texts: Sequence[str]) -> list[Vector]:
        """The vectors `embed` gives, computed here and now (no checkpoint, no faults)."""
        return [self._vector(text) for text in texts]

    def _vector(self, text: str) -> Vector:
        # Two hash bytes per dimension, centred and scaled to unit length: a few microseconds, where
        # seeding a random generator per text cost more than the rest of the request's batcher work.
        digest = hashlib.shake_256(text.encode("utf-8", "surrogatepass")).digest(2 * self.dimension)
        vector = np.frombuffer(digest, dtype="<u2").astype(np.float32) - 32767.5
        vector *= 1.0 / float(np.sqrt(np.dot(vector, vector)))
        return vector
