"""Start-up: build the configured model and size the batcher for the device it runs on. Blocking."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config import DEBUG_MODEL, Settings
from ..core.embedder import AsyncEmbedder
from ..core.formation import CostModel
from .calibration import calibrate, choose_token_budget
from .embedder import ThreadedEmbedder

log = logging.getLogger(__name__)

# The debug model costs next to nothing per call; this only orders its batches sensibly.
_DEBUG_COST = CostModel(fixed=1e-4, per_token=1e-8)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    embedder: AsyncEmbedder
    cost: CostModel
    max_batch_tokens: int


def load_model(settings: Settings) -> LoadedModel:
    """Load the model, fit its cost model and pick the padded-token budget (unless configured)."""
    embedder: AsyncEmbedder
    if settings.model_name == DEBUG_MODEL:
        from .debug import DebugEmbedder

        embedder = DebugEmbedder(faults=settings.debug_faults)
        cost = _DEBUG_COST
    else:
        from .sentence_transformer import SentenceTransformerModel

        model = SentenceTransformerModel(settings)
        cost = calibrate(model)
        embedder = ThreadedEmbedder(model)
    budget = settings.max_batch_tokens
    source = "configured"
    if budget is None:
        budget = choose_token_budget(
            cost, max_batch_size=settings.max_batch_size, max_tokens=embedder.max_tokens
        )
        source = "calibrated"
    log.info("max batch tokens: %d (%s)", budget, source)
    return LoadedModel(embedder=embedder, cost=cost, max_batch_tokens=budget)
