"""`python -m trio_infer export`: build the export cache ahead of time (e.g. at image build time).

Loads the model as the server would, with the same `--backend`, `--quantize` and `--cache-dir`
settings (flags or environment), and runs the same export and, for `auto`, the same measurement, and
computes the calibration vectors int8/uint8 ranges come from, so a later start finds everything
cached and exports nothing. Blocking.
"""

from __future__ import annotations

import logging
import time

from ..config import DEBUG_MODEL, Settings
from .loading import build_model, cached_calibration_vectors, model_prompts

log = logging.getLogger(__name__)


def prebuild(settings: Settings) -> int:
    """Export (or verify) the cache entries of every configured model; returns a process exit status."""
    for spec in settings.model_specs():
        if spec.source == DEBUG_MODEL:
            log.info("model %s: the debug model has nothing to export", spec.name)
            continue
        start = time.perf_counter()
        model_settings = settings.for_model(spec)
        model = build_model(model_settings)
        model_prompts(model_settings, model)  # a prompt misconfiguration fails here as at start
        cached_calibration_vectors(model_settings, model)
        log.info(
            "model %s: export cache ready in %.1f s: %s backend in %s (cache %s)",
            spec.name,
            time.perf_counter() - start,
            model.backend,
            model.precision,
            settings.cache_dir,
        )
    return 0
