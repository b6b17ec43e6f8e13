"""Scrape trio-infer's GET /metrics before and after a run and summarise the batcher histograms."""

from __future__ import annotations

import re

from bench.server import Server

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")

# histogram base name -> label in the summary
HISTOGRAMS = {
    "batcher_batch_size": "mean batch size (items)",
    "batcher_batch_tokens": "mean padded tokens per batch",
    "batcher_padding_efficiency": "mean padding efficiency",
    "batcher_inference_time_seconds": "mean forward time (ms)",
    "batcher_batch_wait_time_seconds": "mean batch wait (ms)",
    "event_loop_lag_seconds": "mean event-loop lag (ms)",
}


def scrape(server: Server, model: str | None = None) -> dict[str, float]:
    """Sum of each ``<histogram>_sum`` / ``_count`` over all label sets (with ``model``, only the label
    sets of that model: series without a model label, such as the event-loop lag, are left out);
    {} if /metrics is unavailable."""
    label = None if model is None else f'model="{model}"'

    try:
        status, body = server.get("/metrics")
    except OSError:
        return {}
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line.strip())
        if not m:
            continue
        name = m.group(1)
        if label is not None and label not in (m.group(2) or ""):
            continue
        if name.endswith(("_sum", "_count")) and name.rsplit("_", 1)[0] in HISTOGRAMS:
            try:
                out[name] = out.get(name, 0.0) + float(m.group(3))
            except ValueError:
                continue
    return out


def summarise(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean of each histogram over the interval between two scrapes (ms for *_seconds)."""
    summary: dict[str, float] = {}
    for base, label in HISTOGRAMS.items():
        count = after.get(f"{base}_count", 0.0) - before.get(f"{base}_count", 0.0)
        total = after.get(f"{base}_sum", 0.0) - before.get(f"{base}_sum", 0.0)
        if count > 0:
            mean = total / count
            summary[label] = mean * 1000 if base.endswith("_seconds") else mean
    batches = after.get("batcher_batch_size_count", 0.0) - before.get("batcher_batch_size_count", 0.0)
    if batches > 0:
        summary["forward calls"] = batches
    return summary
