"""Start-up: build the configured model and size the batcher for the device it runs on. Blocking."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..config import DEBUG_MODEL, ModelSpec, Settings
from ..core.embedder import AsyncEmbedder
from ..core.formation import CostModel
from ..core.limits import BatchLimits
from . import quantization
from .calibration import calibrate, choose_token_budget
from .embedder import Model, ThreadedEmbedder
from .prompts import PromptConfigError, Prompts, configure
from .shared_calibration import Calibration, calibrate_once

log = logging.getLogger(__name__)

# The debug model costs next to nothing per call; this only orders its batches sensibly.
_DEBUG_COST = CostModel(fixed=1e-4, per_token=1e-8)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    embedder: AsyncEmbedder
    cost: CostModel
    max_batch_tokens: int
    prompts: Prompts = dataclasses.field(default_factory=Prompts)
    # The shipped calibration texts' vectors: int8/uint8 ranges come from them (models.quantization).
    calibration_vectors: npt.NDArray[np.float32] | None = None


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
        prompts = configure(Prompts(), settings.prompts, settings.default_prompt_name, model=DEBUG_MODEL)
        budget = _budget(settings, _DEBUG_COST, debug.max_tokens)
        source = "configured" if settings.max_batch_tokens is not None else "debug model"
        log.info("max batch tokens: %d (%s)", budget, source)
        vectors = quantization.calibration_vectors(lambda texts: np.vstack(debug.vectors(texts)))
        return LoadedModel(debug, _DEBUG_COST, budget, prompts, vectors)

    model: Model | None = None

    def fit() -> Calibration:
        nonlocal model
        model = build_model(settings)
        model_prompts(settings, model)  # a prompt misconfiguration fails before the calibration
        cost = calibrate(model)
        return Calibration(cost, _budget(settings, cost, model.max_tokens))

    if shared_calibration is None:
        calibration, produced = fit(), True
    else:
        calibration, produced = calibrate_once(shared_calibration, fit)
    if model is None:
        model = build_model(settings)
    prompts = model_prompts(settings, model)
    log.info("serving with the %s backend in %s", model.backend, model.precision)
    log.info("max batch tokens: %d (%s)", calibration.max_batch_tokens, _source(settings, produced=produced))
    return LoadedModel(
        ThreadedEmbedder(model),
        calibration.cost,
        calibration.max_batch_tokens,
        prompts,
        cached_calibration_vectors(settings, model),
    )


def model_prompts(settings: Settings, model: Model) -> Prompts:
    """The model's own prompts with `--prompt` and `--default-prompt-name` applied. Raises
    PromptConfigError for a default that names no prompt, or for prompts on a model whose pooling
    leaves prompt tokens out (Pooling `include_prompt: false`), which this server does not do."""
    own = getattr(model, "prompts", Prompts())
    prompts = configure(own, settings.prompts, settings.default_prompt_name, model=settings.model_label)
    if not getattr(model, "pools_prompt", True) and any(prompts.texts.values()):
        raise PromptConfigError(
            f"model {settings.model_label} pools without its prompt's tokens (Pooling include_prompt: "
            "false), which trio-infer does not support; its prompts would give other vectors than "
            "sentence-transformers'"
        )
    if prompts.texts:
        log.info(
            "prompts of %s: %s (default: %s)",
            settings.model_label,
            ", ".join(sorted(prompts.texts)),
            prompts.default_name or "none",
        )
    return prompts


def cached_calibration_vectors(settings: Settings, model: Model) -> npt.NDArray[np.float32]:
    """The calibration texts' vectors by this model, stored in an export cache entry keyed like the
    model's exports (its files, backend, precision, library versions) and the texts' version: computed
    by the first process to start, read by restarts and the other workers. Without a usable cache
    directory they are computed here."""
    from .backends import entry_name, model_fingerprint
    from .export_cache import load_entry
    from .sentence_transformer import SentenceTransformerModel

    def compute(texts: list[str]) -> npt.NDArray[np.float32]:
        return quantization.embed_in_batches(model.tokenize, model.embed, texts)

    base = model if isinstance(model, SentenceTransformerModel) else getattr(model, "base", None)
    if not isinstance(base, SentenceTransformerModel):
        return quantization.calibration_vectors(compute)
    recipe = f"{settings.quantize}-{model.precision}-calibration{quantization.VERSION}"
    name = entry_name(base, model_fingerprint(base), model.backend, recipe)
    root = Path(settings.cache_dir).expanduser()
    what = f"{model.name} calibration vectors"
    try:
        return quantization.calibration_vectors(
            compute, cache=lambda build, load: load_entry(root, name, build, load, what=what)
        )
    except OSError as error:
        log.warning("%s: cache %s unusable (%s); computing them without caching", what, root, error)
        return quantization.calibration_vectors(compute)


def batch_limits(settings: Settings, loaded: LoadedModel) -> BatchLimits:
    """The batcher's limits for `loaded`: the flags, and its own padded-token budget."""
    return BatchLimits(
        max_batch_size=settings.max_batch_size,
        max_batch_tokens=loaded.max_batch_tokens,
        batch_timeout=settings.batch_timeout,
        batches_ahead=settings.num_batching_workers,
        max_queue_size=settings.max_queue_size,
        max_bulk_queue_size=settings.max_bulk_queue_size,
        bulk_batch_tokens=settings.bulk_batch_tokens or bulk_budget(loaded.cost, loaded.max_batch_tokens),
        bulk_min_share=settings.bulk_min_share,
    )


# A pass holding bulk texts while queries arrive is kept as short as it can be while computing at
# least this fraction of the texts per second a full-budget pass computes: bulk loses at most 5 % of
# its rate, and a query waits for the shortest pass that allows it.
BULK_EFFICIENCY = 0.95


def bulk_budget(cost: CostModel, max_batch_tokens: int) -> int:
    """The least padded tokens whose predicted tokens per second are BULK_EFFICIENCY of a pass of
    `max_batch_tokens` (cost model `fixed + per_token x tokens`: T / (f + pT) >= e x B / (f + pB))."""
    full = max_batch_tokens / cost.batch_cost(1, max_batch_tokens)  # tokens per second at the full budget
    slack = 1.0 - BULK_EFFICIENCY * full * cost.per_token
    if cost.per_token <= 0 or slack <= 0:
        return max_batch_tokens
    tokens = math.ceil(BULK_EFFICIENCY * full * cost.fixed / slack)
    return max(1, min(max_batch_tokens, tokens))


class ModelLoadError(RuntimeError):
    """A configured model failed to load; the message names it. The server must not start."""


@dataclass(frozen=True, slots=True)
class LoadedSpec:
    """A configured model, loaded, and the resident memory its load added (None where unknown)."""

    spec: ModelSpec
    loaded: LoadedModel
    resident_bytes: int | None


def load_models(settings: Settings, *, shared_calibration: Path | None = None) -> list[LoadedSpec]:
    """Load every configured model, in order, with its own settings (`Settings.for_model`): its own
    backend choice, export cache entry and calibrated budget. One after the other, so each model's
    calibration runs alone and its memory is measured alone.

    Raises ModelLoadError naming the first model that fails; nothing is served then. With workers,
    `shared_calibration` is the base name of one shared file per model."""
    loaded: list[LoadedSpec] = []
    for index, spec in enumerate(settings.model_specs()):
        shared = None if shared_calibration is None else _per_model(shared_calibration, index)
        before = resident_bytes()
        try:
            model = load_model(settings.for_model(spec), shared_calibration=shared)
        except Exception as error:
            raise ModelLoadError(
                f"model {spec.name!r} ({spec.full_name}) failed to load: {type(error).__name__}: {error}"
            ) from error
        after = resident_bytes()
        grown = None if before is None or after is None else max(0, after - before)
        loaded.append(LoadedSpec(spec, model, grown))
        log.info(
            "model %s loaded (%s): %s resident memory",
            spec.name,
            spec.full_name,
            "unknown" if grown is None else f"+{grown / 2**20:.0f} MiB",
        )
    return loaded


def _per_model(path: Path, index: int) -> Path:
    return path if index == 0 else path.with_name(f"{path.stem}-model{index}{path.suffix}")


def resident_bytes() -> int | None:
    """This process's resident memory (Linux `/proc/self/statm`), or None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _budget(settings: Settings, cost: CostModel, max_tokens: int) -> int:
    if settings.max_batch_tokens is not None:
        return settings.max_batch_tokens
    return choose_token_budget(cost, max_batch_size=settings.max_batch_size, max_tokens=max_tokens)


def _source(settings: Settings, *, produced: bool) -> str:
    if settings.max_batch_tokens is not None:
        return "configured"
    return "calibrated" if produced else "calibrated by the first worker"
