"""Start-up: build the configured model and size the batcher for the device it runs on. Blocking."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from ..config import DEBUG_MODEL, Settings
from ..core.embedder import AsyncEmbedder
from ..core.formation import CostModel
from .calibration import calibrate, choose_token_budget
from .embedder import Model, ThreadedEmbedder

log = logging.getLogger(__name__)

# The debug model costs next to nothing per call; this only orders its batches sensibly.
_DEBUG_COST = CostModel(fixed=1e-4, per_token=1e-8)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    embedder: AsyncEmbedder
    cost: CostModel
    max_batch_tokens: int


def build_model(settings: Settings) -> Model:
    """The blocking model for `--backend`/`--quantize`/`--dtype`, exporting into `--cache-dir` if needed."""
    from .sentence_transformer import SentenceTransformerModel

    if settings.backend in ("openvino", "onnx") and settings.device is None:
        # The exported backends run on the CPU; export from a CPU copy even where CUDA is present.
        settings = dataclasses.replace(settings, device="cpu")
    base = SentenceTransformerModel(settings)
    if settings.backend == "torch":
        return base
    from .backends import BackendBuilder

    builder = BackendBuilder(base, Path(settings.cache_dir).expanduser())
    if settings.backend == "auto":
        from .auto_backend import choose

        return choose(base, builder, settings.quantize)
    return builder.build(settings.backend, settings.quantize)


def load_model(settings: Settings) -> LoadedModel:
    """Load the model, fit its cost model and pick the padded-token budget (unless configured)."""
    embedder: AsyncEmbedder
    if settings.model_name == DEBUG_MODEL:
        from .debug import DebugEmbedder

        embedder = DebugEmbedder()
        cost = _DEBUG_COST
    else:
        model = build_model(settings)
        log.info("serving with the %s backend in %s", model.backend, model.precision)
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
