"""Prometheus metrics of one service instance.

Each `Metrics` owns a registry, so tests can build many instances. With several worker processes
(`PROMETHEUS_MULTIPROC_DIR` set before prometheus_client is imported, see `workers.py`), values are
written to per-process files and `/metrics` merges every live worker's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from .priority import Priority

# `*_created` series double every family's size and no dashboard or alert uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

REQUEST_STATUSES = ("success", "error", "timeout", "rejected", "cancelled")
CACHE_RESULTS = ("hit", "miss", "coalesced")
CALLER_RESULTS = ("computed", "cached", "rejected")

# The label values HTTP series may take: a client cannot add any.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST"})  # anything else is OTHER
HTTP_STATUSES = frozenset({200, 400, 401, 404, 405, 408, 413, 415, 422, 499, 500, 503, 504})


def _method_label(method: str) -> str:
    return method if method in HTTP_METHODS else "OTHER"


def _status_label(status: int) -> str:
    return str(status) if status in HTTP_STATUSES else "other"


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256)
_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0)
_LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.requests = Counter(
            "batcher_requests",
            "Texts handled by the batcher, by outcome",
            ["model", "priority", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "batcher_request_latency_seconds",
            "Admission to result, per text",
            ["model", "priority"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "batcher_batch_size", "Texts per forward pass", ["model"], buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "batcher_batch_tokens",
            "Padded tokens per forward pass (texts x longest)",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.padding_efficiency = Histogram(
            "batcher_padding_efficiency",
            "Real tokens / padded tokens per forward pass",
            ["model"],
            buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.batch_wait = Histogram(
            "batcher_batch_wait_time_seconds",
            "Admission to the start of the text's forward pass",
            ["model", "priority"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_time = Histogram(
            "batcher_inference_time_seconds",
            "Duration of one forward pass",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.skipped = Counter(
            "batcher_skipped",
            "Texts dropped before inference because their caller had left or timed out",
            ["model", "priority"],
            registry=r,
        )
        self.queue_size = Gauge(
            "batcher_queue_size",
            "Texts admitted and not yet in a forward pass",
            ["model", "priority"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.inflight_batches = Gauge(
            "batcher_inflight_batches",
            "Forward passes running",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pass_seconds = Counter(
            "batcher_pass_seconds",
            "Forward-pass time, shared among the classes of its texts by their tokens",
            ["model", "priority"],
            registry=r,
        )
        self.caller_texts = Counter(
            "batcher_caller_texts",
            "Texts per configured caller: computed (queued, or joined to an identical text in flight), "
            "cached (answered from the cache) or rejected (503)",
            ["model", "caller", "result"],
            registry=r,
        )
        self.cache_requests = Counter(
            "batcher_cache_requests",
            "Texts looked up in the embedding cache: hit, miss (computed) or coalesced (joined an "
            "identical text in flight)",
            ["model", "result"],
            registry=r,
        )
        self.cache_bytes = Gauge(
            "batcher_cache_bytes",
            "Bytes held by the embedding cache (vectors and per-entry overhead)",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_entries = Gauge(
            "batcher_cache_entries",
            "Vectors held by the embedding cache",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_evictions = Counter(
            "batcher_cache_evictions",
            "Vectors evicted from the embedding cache to stay within --cache-size",
            ["model"],
            registry=r,
        )
        self.http_requests = Counter(
            "http_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self._http_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request duration",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.http_in_progress = Gauge(
            "http_requests_in_progress",
            "HTTP requests counted against --max-concurrent-requests and not yet answered",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.loop_lag = Histogram(
            "event_loop_lag_seconds",
            "How late a periodic 50 ms sleep on the event loop wakes up",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "trio_infer_model_info",
            "Each served model, by its configured name (value always 1)",
            ["model", "device"],
            registry=r,
            multiprocess_mode="max",
        )
        self.backend_info = Gauge(
            "trio_infer_backend_info",
            "Each model's inference backend and its precision (value always 1)",
            ["model", "backend", "precision"],
            registry=r,
            multiprocess_mode="max",
        )
        self.max_batch_tokens = Gauge(
            "trio_infer_max_batch_tokens",
            "Padded-token budget of a forward pass in force",
            ["model"],
            registry=r,
            multiprocess_mode="max",
        )
        self.ready = Gauge(
            "trio_infer_ready", "1 when ready for traffic", registry=r, multiprocess_mode="livemin"
        )
        self.healthy = Gauge(
            "trio_infer_healthy",
            "1 when the model and batcher are up",
            registry=r,
            multiprocess_mode="livemin",
        )

    def for_model(self, name: str) -> ModelMetrics:
        """The batcher series of the model configured as `name`, created at zero."""
        return ModelMetrics(self, name)

    def count_http(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request. `route` must come from the route table (or be `unmatched`),
        never from the client; the method and status labels are bounded here."""
        key = (route, _method_label(method), _status_label(status))
        children = self._http_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(route=route, method=key[1], status=key[2]),
                self.http_duration.labels(route=route),
            )
            self._http_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def prepare_http(self, routes: Iterable[tuple[str, str, Iterable[int]]]) -> None:
        """Create the HTTP series of the given (route, method, statuses) at zero, so they exist from
        start-up, before the first request."""
        for route, method, statuses in routes:
            self.http_duration.labels(route=route)
            for status in statuses:
                self.http_requests.labels(
                    route=route, method=_method_label(method), status=_status_label(status)
                )

    def exposition(self) -> tuple[bytes, str]:
        """The metrics text and its content type; all live workers' in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ClassMetrics:
    """One model's series for one priority class, bound once (`labels()` costs a lock and a lookup)."""

    def __init__(self, metrics: Metrics, model: str, priority: Priority) -> None:
        labels = {"model": model, "priority": priority.label}
        self.outcome = {
            status: metrics.requests.labels(**labels, status=status) for status in REQUEST_STATUSES
        }
        self.request_latency = metrics.request_latency.labels(**labels)
        self.batch_wait = metrics.batch_wait.labels(**labels)
        self.skipped = metrics.skipped.labels(**labels)
        self.queue_size = metrics.queue_size.labels(**labels)
        self.pass_seconds = metrics.pass_seconds.labels(**labels)


class CacheMetrics:
    """One model's embedding-cache series."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.requests = {
            result: metrics.cache_requests.labels(model=model, result=result) for result in CACHE_RESULTS
        }
        self.bytes = metrics.cache_bytes.labels(model=model)
        self.entries = metrics.cache_entries.labels(model=model)
        self.evictions = metrics.cache_evictions.labels(model=model)


class ModelMetrics:
    """One model's batcher series: the families of `Metrics` bound to `model=<name>`.

    `name` must be a configured model name, never a client's string, so the label stays bounded; so
    must every caller name given to `caller` (configured API-key names, or `anonymous`).
    Children are bound once because `labels()` costs a lock and a lookup per call on the hot path;
    every series exists from start-up (a caller's from its first text, or from `prepare_callers`).
    """

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.name = name
        self.classes = {priority: ClassMetrics(metrics, name, priority) for priority in Priority}
        self.cache = CacheMetrics(metrics, name)
        self.batch_size = metrics.batch_size.labels(model=name)
        self.batch_tokens = metrics.batch_tokens.labels(model=name)
        self.padding_efficiency = metrics.padding_efficiency.labels(model=name)
        self.inference_time = metrics.inference_time.labels(model=name)
        self.inflight_batches = metrics.inflight_batches.labels(model=name)
        self.max_batch_tokens = metrics.max_batch_tokens.labels(model=name)
        self._callers: dict[tuple[str, str], Counter] = {}
        self._metrics = metrics

    def of(self, priority: Priority) -> ClassMetrics:
        return self.classes[priority]

    def caller(self, caller: str, result: str) -> Counter:
        """The per-caller counter of `result` (one of CALLER_RESULTS) for a configured caller name."""
        key = (caller, result)
        child = self._callers.get(key)
        if child is None:
            child = self._callers[key] = self._metrics.caller_texts.labels(
                model=self.name, caller=caller, result=result
            )
        return child

    def prepare_callers(self, callers: Iterable[str]) -> None:
        """Create the per-caller series of `callers` at zero."""
        for caller in callers:
            for result in CALLER_RESULTS:
                self.caller(caller, result)

    def describe(self, *, device: str, backend: str, precision: str) -> None:
        """Set the model's info series (`trio_infer_model_info`, `trio_infer_backend_info`)."""
        self._metrics.model_info.labels(model=self.name, device=device).set(1)
        self._metrics.backend_info.labels(model=self.name, backend=backend, precision=precision).set(1)
