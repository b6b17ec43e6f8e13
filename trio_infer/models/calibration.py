"""Start-up calibration: time the model on a few batch shapes and fit the batcher's cost model.

Blocking; run it in a worker thread before the batcher starts.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..core.formation import CostModel
from .embedder import Model

log = logging.getLogger(__name__)

# (count, length) pairs spanning short/long and narrow/wide batches.
_SHAPES = ((1, 8), (1, 128), (8, 32), (16, 16), (4, 128), (2, 256))
# Measured on a 2-core CPU with all-MiniLM-L6-v2: 17 ms per call plus 0.35 ms per padded token.
DEFAULT_COST = CostModel(fixed=0.017, per_token=0.00035)
# Throughput reached at the chosen budget, as a share of the asymptotic (infinitely large batch) rate.
# 0.9 (about 350 tokens on a 2-core CPU) held batches to 4 texts and cost 15% of the batched rate.
_TARGET_EFFICIENCY = 0.97


def calibrate(model: Model, *, repeats: int = 2) -> CostModel:
    """Fit `seconds = fixed + per_token * n * L + per_token_sq * n * L^2` on timed forward passes."""
    sample = model.tokenize(["the quick brown fox jumps over the lazy dog " * 64])[0]
    body = sample[1:-1] or [1000]
    batches: list[list[list[int]]] = []
    for count, length in _SHAPES:
        length = min(length, model.max_tokens)
        ids = sample[:1] + (body * (length // len(body) + 1))[: max(0, length - 2)] + sample[-1:]
        batches.append([ids] * count)
    # A first pass over every shape pays one-off costs (lazy initialisation, kernel selection).
    for ids_batch in batches:
        model.embed([""] * len(ids_batch), ids_batch)
    rows: list[tuple[float, float, float]] = []
    times: list[float] = []
    for ids_batch in batches:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            model.embed([""] * len(ids_batch), ids_batch)
            best = min(best, time.perf_counter() - start)
        count, length = len(ids_batch), len(ids_batch[0])
        rows.append((1.0, float(count * length), float(count * length * length)))
        times.append(best)
    coefficients, *_ = np.linalg.lstsq(np.array(rows), np.array(times), rcond=None)
    fixed, per_token, per_token_sq = (max(0.0, float(c)) for c in coefficients)
    if per_token <= 0.0 and per_token_sq <= 0.0:
        # A degenerate fit (timing noise swamped the shapes): keep the shape that was measured on CPUs.
        log.warning("calibration fit is degenerate; using the default cost model")
        return DEFAULT_COST
    cost = CostModel(fixed=max(fixed, 1e-5), per_token=max(per_token, 1e-9), per_token_sq=per_token_sq)
    log.info(
        "calibrated cost model: %.2f ms per call + %.1f us per padded token + %.3f us per token x length",
        cost.fixed * 1e3,
        cost.per_token * 1e6,
        cost.per_token_sq * 1e6,
    )
    return cost


def choose_token_budget(cost: CostModel, *, max_batch_size: int, max_tokens: int) -> int:
    """The padded-token count at which a batch reaches most of the device's asymptotic throughput.

    With `fixed + per_token * T`, throughput per token is `T / (fixed + per_token * T)`; it reaches
    a share e of its limit at `T = e / (1 - e) * fixed / per_token`. Larger batches buy little
    throughput and add latency (on a CPU) or memory (on a GPU). Clamped so one full-length text fits
    and so the size cap, not the budget, binds on fast devices.
    """
    budget = _TARGET_EFFICIENCY / (1 - _TARGET_EFFICIENCY) * cost.fixed / cost.per_token
    return int(min(max(budget, max_tokens), max_batch_size * max_tokens))
