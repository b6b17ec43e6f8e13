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
from .shared_calibration import Calibration, calibrate_once

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


def load_model(settings: Settings, *, shared_calibration: Path | None = None) -> LoadedModel:
    """Load the model, fit its cost model and pick the padded-token budget (unless configured).

    `shared_calibration`: a file shared by the workers of one supervisor; the first worker to take
    it calibrates and the others reuse its result (see shared_calibration)."""
    if settings.model_name == DEBUG_MODEL:
        from .debug import DebugEmbedder

        debug = DebugEmbedder(faults=settings.debug_faults)
        budget = _budget(settings, _DEBUG_COST, debug.max_tokens)
        source = "configured" if settings.max_batch_tokens is not None else "debug model"
        log.info("max batch tokens: %d (%s)", budget, source)
        return LoadedModel(embedder=debug, cost=_DEBUG_COST, max_batch_tokens=budget)

    model: Model | None = None

    def fit() -> Calibration:
        nonlocal model
        model = build_model(settings)
        cost = calibrate(model)
        return Calibration(cost, _budget(settings, cost, model.max_tokens))

    if shared_calibration is None:
        calibration, produced = fit(), True
    else:
        calibration, produced = calibrate_once(shared_calibration, fit)
    if model is None:
        model = build_model(settings)
    log.info("serving with the %s backend in %s", model.backend, model.precision)
    log.info("max batch tokens: %d (%s)", calibration.max_batch_tokens, _source(settings, produced=produced))
    return LoadedModel(
        embedder=ThreadedEmbedder(model), cost=calibration.cost, max_batch_tokens=calibration.max_batch_tokens
    )


def _budget(settings: Settings, cost: CostModel, max_tokens: int) -> int:
    if settings.max_batch_tokens is not None:
        return settings.max_batch_tokens
    return choose_token_budget(cost, max_batch_size=settings.max_batch_size, max_tokens=max_tokens)


def _source(settings: Settings, *, produced: bool) -> str:
    if settings.max_batch_tokens is not None:
        return "configured"
    return "calibrated" if produced else "calibrated by the first worker"
