"""A blocking model's protocol, and the adapter that runs it off the event loop as an `AsyncEmbedder`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

import trio

from ..core.jobs import Vector
from .tokens import BlockingTokenizer, Token

log = logging.getLogger(__name__)


class Model(Protocol):
    """A blocking embedding model. Not thread-safe: call it from one thread at a time.

    A model whose `tokenize` and `embed` share no state may set `tokenize_in_parallel = True` (an
    optional attribute): `ThreadedEmbedder` then tokenizes the next batch while a pass runs. A model
    whose pipeline ends in a Normalize module sets `normalizes = True` (optional, default False) and
    returns its vectors from `embed` before that module. A model that also meets `BlockingTokenizer`
    answers the tokenizer routes.
    """

    name: str
    device: str
    dimension: int
    max_tokens: int
    backend: str  # torch, openvino or onnx
    precision: str  # e.g. float32, float16, bfloat16, int8

    def tokenize(self, texts: Sequence[str], tails: Sequence[bool] = ()) -> list[list[int]]:
        """Token ids of each text, truncated to `max_tokens` (keeping the last ones where `tails[i]`),
        unpadded."""
        ...

    def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        """One float32 vector per text, from its token ids (as `tokenize` gave them, unpadded), before
        the model's final Normalize module."""
        ...


class ThreadedEmbedder:
    """Runs a blocking `Model` in worker threads, as an `AsyncEmbedder`.

    Its limiters are its own, not trio's default one that quart and hypercorn share. `embed` (and
    `tokenize_and_embed`) run one at a time, and so does `tokenize`. The two overlap (the next batch is
    tokenized while a pass runs) only when the model sets `tokenize_in_parallel = True`, which says
    its `tokenize` and `embed` share no state; otherwise one limiter serialises every call.

    Cancelling a call abandons its thread: the model call runs on, its result is dropped, and the
    limiters stay held until it ends. The batcher cancels only at a shutdown whose deadline passed;
    a caller who leaves never cancels a call, so a pass always delivers to the callers who stayed.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self.name = model.name
        self.device = model.device
        self.dimension = model.dimension
        self.max_tokens = model.max_tokens
        self.backend = model.backend
        self.precision = model.precision
        self.normalizes = bool(getattr(model, "normalizes", False))
        self.pooling = str(getattr(model, "pooling", "unknown"))  # TEI's /info reports it
        self.tokens = ThreadedTokenizer(model) if isinstance(model, BlockingTokenizer) else None
        self._model_limiter = trio.CapacityLimiter(1)
        parallel = bool(getattr(model, "tokenize_in_parallel", False))
        self._tokenizer_limiter = trio.CapacityLimiter(1) if parallel else self._model_limiter
        # Held only around `model.tokenize`, inside the thread: a lone text's one-hop call lets the
        # next batch be tokenized as soon as its own tokens are done.
        self._tokenizer_lock = threading.Lock()

    async def tokenize(self, texts: Sequence[str], tails: Sequence[bool] = ()) -> list[list[int]]:
        return await trio.to_thread.run_sync(
            self._tokenize, texts, tails, limiter=self._tokenizer_limiter, abandon_on_cancel=True
        )

    async def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        return await trio.to_thread.run_sync(
            self.model.embed, texts, token_ids, limiter=self._model_limiter, abandon_on_cancel=True
        )

    async def tokenize_and_embed(
        self, texts: Sequence[str], tails: Sequence[bool] = ()
    ) -> tuple[list[list[int]], list[Vector]]:
        return await trio.to_thread.run_sync(
            self._both, texts, tails, limiter=self._model_limiter, abandon_on_cancel=True
        )

    def _tokenize(self, texts: Sequence[str], tails: Sequence[bool]) -> list[list[int]]:
        with self._tokenizer_lock:
            return self.model.tokenize(texts, tails)

    def _both(self, texts: Sequence[str], tails: Sequence[bool]) -> tuple[list[list[int]], list[Vector]]:
        token_ids = self._tokenize(texts, tails)
        return token_ids, self.model.embed(texts, token_ids)


class ThreadedTokenizer:
    """A model's `BlockingTokenizer` run in a worker thread, one call at a time under a limiter of its
    own: the tokenizer routes never wait for a forward pass, nor hold one up (the model answers them
    with a tokenizer object of its own, not the batcher's)."""

    def __init__(self, model: BlockingTokenizer) -> None:
        self._model = model
        self._limiter = trio.CapacityLimiter(1)

    async def tokenize_detailed(self, texts: Sequence[str], add_special_tokens: bool) -> list[list[Token]]:
        return await trio.to_thread.run_sync(
            self._model.tokenize_detailed,
            texts,
            add_special_tokens,
            limiter=self._limiter,
            abandon_on_cancel=True,
        )

    async def decode(self, ids: Sequence[Sequence[int]], skip_special_tokens: bool) -> list[str]:
        return await trio.to_thread.run_sync(
            self._model.decode, ids, skip_special_tokens, limiter=self._limiter, abandon_on_cancel=True
        )
