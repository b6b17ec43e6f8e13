"""A blocking model's protocol, and the adapter that runs it off the event loop as an `AsyncEmbedder`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

import trio

from ..core.jobs import Vector

log = logging.getLogger(__name__)


class Model(Protocol):
    """A blocking embedding model. Not thread-safe: call it from one thread at a time.

    A model whose `tokenize` and `embed` share no state may set `tokenize_in_parallel = True` (an
    optional attribute): `ThreadedEmbedder` then tokenizes the next batch while a pass runs.
    """

    name: str
    device: str
    dimension: int
    max_tokens: int
    backend: str  # torch, openvino or onnx
    precision: str  # e.g. float32, float16, bfloat16, int8

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, truncated to `max_tokens`, unpadded."""
        ...

    def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        """One float32 vector per text, from its token ids (as `tokenize` gave them, unpadded)."""
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
        self._model_limiter = trio.CapacityLimiter(1)
        parallel = bool(getattr(model, "tokenize_in_parallel", False))
        self._tokenizer_limiter = trio.CapacityLimiter(1) if parallel else self._model_limiter
        # Held only around `model.tokenize`, inside the thread: a lone text's one-hop call lets the
        # next batch be tokenized as soon as its own tokens are done.
        self._tokenizer_lock = threading.Lock()

    async def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return await trio.to_thread.run_sync(
            self._tokenize, texts, limiter=self._tokenizer_limiter, abandon_on_cancel=True
        )

    async def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        return await trio.to_thread.run_sync(
            self.model.embed, texts, token_ids, limiter=self._model_limiter, abandon_on_cancel=True
        )

    async def tokenize_and_embed(self, texts: Sequence[str]) -> tuple[list[list[int]], list[Vector]]:
        return await trio.to_thread.run_sync(
            self._both, texts, limiter=self._model_limiter, abandon_on_cancel=True
        )

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        with self._tokenizer_lock:
            return self.model.tokenize(texts)

    def _both(self, texts: Sequence[str]) -> tuple[list[list[int]], list[Vector]]:
        token_ids = self._tokenize(texts)
        return token_ids, self.model.embed(texts, token_ids)
