"""`--backend auto`: measure, on this machine, which backend is fastest with torch's vectors; remember it.

Blocking (exports, timed forward passes); call from a worker thread or the `export` command.

On CUDA, torch (in float16 by default) is the answer without measuring. On CPU each candidate runs the
package's probe texts: its vectors must match torch's float32 vectors (minimum cosine at least
`MATCH_MIN_COSINE`; with `--quantize int8`, mean cosine at least `INT8_MEAN_COSINE`), and among those
that match the one with the best geometric mean of one-at-a-time and sorted-batch throughput wins. The
measurement runs once per model, quantization, CPU and library versions: the decision is stored in the
cache directory beside the exports and reused on later starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.jobs import Vector
from .backends import BackendBuilder, library_versions
from .embedder import Model
from .export_cache import locked
from .probe_texts import probe_texts
from .sentence_transformer import SentenceTransformerModel

log = logging.getLogger(__name__)

MATCH_MIN_COSINE = 0.9999
INT8_MEAN_COSINE = 0.99
_PROBES = 48
_SINGLES = 12
_BATCH = 32
_REPEATS = 2


@dataclass(frozen=True)
class Trial:
    backend: str
    precision: str
    single_rate: float  # texts/s, one at a time
    batch_rate: float  # texts/s, length-sorted batches of 32
    mean_cosine: float
    min_cosine: float
    accepted: bool

    @property
    def score(self) -> float:
        return math.sqrt(self.single_rate * self.batch_rate)


def cosines(vectors: list[Vector], reference: list[Vector]) -> np.ndarray:
    a, b = np.stack(vectors).astype(np.float64), np.stack(reference).astype(np.float64)
    result: np.ndarray = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return result


def _cpu_identity() -> dict[str, object]:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "cores": cores,
    }


def _embed_in_batches(model: Model, ids: list[list[int]]) -> tuple[list[Vector], float]:
    """Vectors of `ids` (in their order) from length-sorted batches, and the seconds it took."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    vectors: list[Vector] = [np.zeros(0, dtype=np.float32)] * len(ids)
    start = time.perf_counter()
    for first in range(0, len(order), _BATCH):
        chunk = order[first : first + _BATCH]
        for index, vector in zip(chunk, model.embed([""] * len(chunk), [ids[i] for i in chunk]), strict=True):
            vectors[index] = vector
    return vectors, time.perf_counter() - start


def _trial(model: Model, ids: list[list[int]], reference: list[Vector], quantize: str) -> Trial:
    _embed_in_batches(model, ids)  # warm-up: every shape once
    vectors, batch_seconds = _embed_in_batches(model, ids)
    single_seconds = float("inf")
    for _ in range(_REPEATS):
        start = time.perf_counter()
        for one in ids[:_SINGLES]:
            model.embed([""], [one])
        single_seconds = min(single_seconds, time.perf_counter() - start)
        batch_seconds = min(batch_seconds, _embed_in_batches(model, ids)[1])
    similar = cosines(vectors, reference)
    mean, low = float(similar.mean()), float(similar.min())
    accepted = mean >= INT8_MEAN_COSINE if quantize == "int8" else low >= MATCH_MIN_COSINE
    return Trial(
        backend=model.backend,
        precision=model.precision,
        single_rate=_SINGLES / single_seconds,
        batch_rate=len(ids) / batch_seconds,
        mean_cosine=mean,
        min_cosine=low,
        accepted=accepted,
    )


def _decision_path(builder: BackendBuilder, quantize: str) -> Path:
    key = json.dumps(
        {
            "model": builder.fingerprint,
            "quantize": quantize,
            "cpu": _cpu_identity(),
            "libraries": library_versions(),
        },
        sort_keys=True,
    )
    return builder.cache_dir / f"auto-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def candidates(quantize: str) -> tuple[str, ...]:
    return ("openvino", "onnx") if quantize == "int8" else ("torch", "openvino", "onnx")


def choose(base: SentenceTransformerModel, builder: BackendBuilder, quantize: str) -> Model:
    """The model `auto` serves with; see the module docstring."""
    if base.device != "cpu":
        log.info("auto backend: torch in %s on %s", base.precision, base.device)
        return base
    path = _decision_path(builder, quantize)
    chosen = _decision(path, quantize)
    if chosen is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = locked(path.with_suffix(".lock"))
        except OSError:
            return _measure(base, builder, quantize, path)
        # Several workers starting at once: one measures (timings of processes sharing the CPU would
        # be noise), the others wait and read its decision.
        with lock:
            chosen = _decision(path, quantize)
            if chosen is None:
                return _measure(base, builder, quantize, path)
    log.info("auto backend: %s (decided on this machine earlier, %s)", chosen, path)
    return base if chosen == "torch" else builder.build(chosen, quantize)


def _decision(path: Path, quantize: str) -> str | None:
    try:
        chosen = str(json.loads(path.read_text())["backend"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return chosen if chosen in candidates(quantize) else None


def _measure(base: SentenceTransformerModel, builder: BackendBuilder, quantize: str, path: Path) -> Model:
    log.info("auto backend: measuring %s on %d probe texts ...", ", ".join(candidates(quantize)), _PROBES)
    ids = base.tokenize(probe_texts(_PROBES))
    reference, _ = _embed_in_batches(base, ids)  # padding moves torch's vectors by ~1e-7 at most
    trials: list[tuple[Trial, Model]] = []
    for name in candidates(quantize):
        try:
            model: Model = base if name == "torch" else builder.build(name, quantize)
        except Exception:  # a backend that cannot export or load here is not a candidate
            log.exception("auto backend: %s is unavailable", name)
            continue
        trial = _trial(model, ids, reference, quantize)
        log.info(
            "auto backend: %s %s: %.0f texts/s one at a time, %.0f in batches; cosine to torch mean %.6f"
            " min %.6f%s",
            trial.backend,
            trial.precision,
            trial.single_rate,
            trial.batch_rate,
            trial.mean_cosine,
            trial.min_cosine,
            "" if trial.accepted else " (rejected: vectors differ)",
        )
        trials.append((trial, model))
    accepted = [(t, m) for t, m in trials if t.accepted]
    if not accepted:
        raise RuntimeError(f"no backend's vectors match torch's closely enough for --quantize {quantize}")
    best, model = max(accepted, key=lambda pair: pair[0].score)
    log.info("auto backend: chose %s (%s)", best.backend, best.precision)
    record = {"backend": best.backend, "trials": [asdict(t) for t, _ in trials], "measured": time.time()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)
    except OSError as error:  # a read-only cache: serve anyway, measure again next start
        log.warning("auto backend: could not store the decision in %s: %s", path, error)
    return model
