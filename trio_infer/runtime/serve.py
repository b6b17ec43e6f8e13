"""The process's lifetime: signals, model loading, the batcher and the HTTP server, in nested nurseries.

    process nursery   signal watchers, log flusher, heartbeat (workers), health monitor   (until exit)
      loading nursery models' load in a thread, stop-on-signal                        (start-up only)
      serving nursery every model's batcher, hypercorn                                (until drained)

The listening socket is bound before anything else (by the caller, or here when none is given), so
an unusable address fails at once instead of after the model has loaded.

Every configured model is loaded before anything serves; one that fails stops the start (the server
never comes up half-configured). Each model gets its own batcher; the batchers of models on the same
device share that device's scheduler (`core.scheduler`), so their passes take turns.

The batchers are started before the server and closed only after hypercorn has finished the drain,
so every request hypercorn accepted is answered. A batcher that crashes cancels the serving nursery
and the exception leaves `main`, so the process exits non-zero and gets restarted.
"""

from __future__ import annotations

import functools
import gc
import logging
import socket
from pathlib import Path

import trio
from hypercorn.trio import serve as hypercorn_serve
from quart_trio import QuartTrio

from ..config import DEBUG_MODEL, Settings
from ..core.batching import Batcher
from ..core.lifecycle import Lifecycle
from ..core.metrics import Metrics
from ..core.scheduler import DeviceSchedulers
from ..core.served_model import ServedModel
from ..core.service import EmbeddingService
from ..http.app import create_app
from ..models.loading import LoadedSpec, batch_limits, load_models
from . import hypercorn_fixes
from .connections import ConnectionLimits, ServerConfig
from .fd_limit import check_connection_cap, raise_open_file_limit
from .heartbeat import send_heartbeats
from .key_reload import serve_key_ring
from .listener import bind_listener, display_address, hand_over
from .logs import adopt_library_loggers, flush_periodically

log = logging.getLogger(__name__)

# hypercorn cancels what is left this long after our own drain deadline, so requests still waiting
# at our deadline get their 503 written first instead of a reset connection.
_HYPERCORN_GRACE_MARGIN = 2.0
# How long past the drain deadline a running model call may still finish before it is abandoned.
_BATCHER_GRACE = 3.0


def hypercorn_config(settings: Settings) -> ServerConfig:
    """hypercorn's settings; `main` sets `bind` to the socket it has already bound."""
    config = ServerConfig(
        ConnectionLimits(
            max_connections=settings.max_connections,
            header_timeout=settings.header_timeout,
            write_timeout=settings.write_timeout,
            http2=settings.http2,
        )
    )
    config.graceful_timeout = settings.graceful_timeout + _HYPERCORN_GRACE_MARGIN
    config.accesslog = None  # the app logs one line per request, with its request id
    config.errorlog = logging.getLogger("hypercorn.error")
    config.backlog = 2048  # bursts of hundreds of connections wait in the kernel, not refused
    config.keep_alive_timeout = 75  # longer than typical load balancer idle timeouts
    return config


async def main(
    settings: Settings,
    *,
    listener: socket.socket | None = None,
    heartbeat: socket.socket | None = None,
    shared_calibration: Path | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT and a completed drain. Raises if a collector task crashes.

    `listener`: a bound, listening socket to serve (bound here from the settings when None; an
    unusable address raises `listener.BindError` before anything loads). `main` owns it and closes
    it on every exit. In --workers mode, `heartbeat` is this worker's end of its heartbeat channel
    to the supervisor and `shared_calibration` the file through which the workers share one
    calibration (see runtime.heartbeat and models.shared_calibration).
    """
    if listener is None:
        listener = bind_listener(settings.host, settings.port)
    try:
        await _serve(settings, listener, heartbeat, shared_calibration)
    finally:
        listener.close()  # a no-op once handed over to hypercorn


async def _serve(
    settings: Settings,
    listener: socket.socket,
    heartbeat: socket.socket | None,
    shared_calibration: Path | None,
) -> None:
    hypercorn_fixes.install()
    check_connection_cap(settings.max_connections, raise_open_file_limit())
    lifecycle = Lifecycle(graceful_timeout=settings.graceful_timeout, drain_delay=settings.drain_delay)
    metrics = Metrics()
    async with trio.open_nursery() as process:
        await process.start(lifecycle.watch_signals)
        callers = await process.start(serve_key_ring, settings)  # SIGHUP re-reads --api-keys-file
        process.start_soon(flush_periodically)
        if heartbeat is not None:
            process.start_soon(send_heartbeats, heartbeat, settings.heartbeat_timeout)
        address = display_address(*listener.getsockname()[:2])
        log.info(
            "listening on %s (authentication: %s); loading %s",
            address,
            _authentication(callers.ring.guarded, len(callers.names)),
            _plural(len(settings.model_specs()), "model"),
        )
        loaded = await _load_unless_stopped(settings, lifecycle, shared_calibration)
        if loaded is None:
            log.info("shutdown requested during start-up")
            process.cancel_scope.cancel()
            return
        models = _served_models(settings, loaded, metrics)
        for model in models:  # the per-caller series of the configured names exist from start-up
            model.batcher.metrics.prepare_callers(callers.names)
        async with trio.open_nursery() as serving:
            for model in models:
                await serving.start(model.batcher.run)
            service = EmbeddingService(settings, models, lifecycle, metrics)
            await process.start(service.monitor)
            app = create_app(service, callers)
            config = hypercorn_config(settings)
            config.bind = [hand_over(listener)]
            batchers = [model.batcher for model in models]
            binds = await serving.start(_serve_http, app, config, lifecycle, batchers)
            _freeze_heap()
            lifecycle.mark_ready()
            log.info(
                "ready on %s (%s; authentication: %s)",
                ", ".join(binds),
                "; ".join(f"model {model.name} on {model.device}" for model in models),
                _authentication(callers.ring.guarded, len(callers.names)),
            )
        log.info("drained; exiting")
        process.cancel_scope.cancel()


def _authentication(guarded: bool, callers: int) -> str:
    return f"on, {_plural(callers, 'caller')}" if guarded else "off"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _served_models(settings: Settings, loaded: list[LoadedSpec], metrics: Metrics) -> list[ServedModel]:
    """A batcher per model, sized by its own calibration; models on one device share its scheduler."""
    schedulers = DeviceSchedulers()
    models = []
    for item in loaded:
        embedder = item.loaded.embedder
        limits = batch_limits(settings, item.loaded)
        log.info(
            "model %s: a pass holding bulk texts while queries arrive: at most %d padded tokens",
            item.spec.name,
            limits.bulk_budget,
        )
        batcher = Batcher(
            embedder,
            metrics.for_model(item.spec.name),
            limits,
            item.loaded.cost,
            schedulers.for_device(embedder.device),
            cache_size=settings.cache_size,
        )
        models.append(
            ServedModel(
                item.spec.name,
                item.spec.full_name,
                batcher,
                settings.watchdog_timeout,
                prompts=item.loaded.prompts.texts,
                default_prompt_name=item.loaded.prompts.default_name,
                calibration_vectors=item.loaded.calibration_vectors,
            )
        )
    return models


def _freeze_heap() -> None:
    """Hide what start-up allocated (modules, model, app) from the garbage collector: a full collection
    then scans only what requests allocate instead of pausing the event loop ~100 ms for every probe
    and request."""
    gc.collect()
    gc.freeze()


def _load(settings: Settings, shared_calibration: Path | None) -> list[LoadedSpec]:
    if any(spec.source != DEBUG_MODEL for spec in settings.model_specs()):
        adopt_library_loggers()  # before the libraries load anything: their warnings in our format
    return load_models(settings, shared_calibration=shared_calibration)


async def _load_unless_stopped(
    settings: Settings, lifecycle: Lifecycle, shared_calibration: Path | None
) -> list[LoadedSpec] | None:
    """Load the models in a thread; a signal during loading abandons them (the process is exiting).
    A model that fails to load raises ModelLoadError, naming it."""
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            await lifecycle.drain_started.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_on_signal)
        load = functools.partial(_load, settings, shared_calibration)
        loaded = await trio.to_thread.run_sync(load, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
        return loaded
    return None


async def _serve_http(
    app: QuartTrio,
    config: ServerConfig,
    lifecycle: Lifecycle,
    batchers: list[Batcher],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn until its drain ends; then the batchers are closed and finish what is queued."""
    try:
        await hypercorn_serve(
            app,
            config,
            # once the drain starts, no write to a client that does not read outlasts hypercorn's drain
            shutdown_trigger=config.guard.shutdown_trigger(
                lifecycle.shutdown_trigger, config.graceful_timeout
            ),
            task_status=task_status,
        )
    finally:
        # A model call still running past the drain deadline (a hung pass) must not keep the process
        # alive: the batcher raises ShutdownStalled then, and the process exits non-zero.
        for batcher in batchers:
            batcher.close(deadline=lifecycle.drain_deadline + _BATCHER_GRACE)


__all__ = ["hypercorn_config", "main"]
