"""A blocking model's protocol, and the adapter that runs it off the event loop as an `AsyncEmbedder`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, TypeVar

import trio

from ..core.jobs import Vector

log = logging.getLogger(__name__)

R = TypeVar("R")


class Model(Protocol):
    """A blocking embedding model. Not thread-safe: call it from one thread at a time."""

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
    """Runs a blocking `Model` in worker threads under a limiter of its own.

    The limiter admits one call at a time (the model and its tokenizer are not thread-safe) and is not
    trio's default limiter, which quart and hypercorn share. A call is not abandoned on cancellation
    (`abandon_on_cancel=False`): a forward pass cannot be stopped, and its results are still delivered
    to the callers who stayed.

    Inference threads keep the process's OS priority. Lowering it (tried: nice 5) protected the event
    loop a little but let any other busy process on the host starve inference: one busy loop beside the
    server cut its rate from 51 to 4 requests/s.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self.name = model.name
        self.device = model.device
        self.dimension = model.dimension
        self.max_tokens = model.max_tokens
        self.backend = model.backend
        self.precision = model.precision
        self._limiter = trio.CapacityLimiter(1)

    async def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return await trio.to_thread.run_sync(self.model.tokenize, texts, limiter=self._limiter)

    async def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        return await trio.to_thread.run_sync(self.model.embed, texts, token_ids, limiter=self._limiter)
