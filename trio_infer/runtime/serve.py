"""The process's lifetime: signals, model loading, the batcher and the HTTP server, in nested nurseries.

    process nursery   signal watcher, health monitor              (until exit)
      serving nursery batcher collectors, hypercorn              (until drained)

The batcher is started before the server and closed only after hypercorn has finished the drain,
so every request hypercorn accepted is answered. A collector that crashes cancels the serving
nursery and the exception leaves `main`, so the process exits non-zero and gets restarted.
"""

from __future__ import annotations

import gc
import logging

import trio
from hypercorn.trio import serve as hypercorn_serve
from quart_trio import QuartTrio

from ..config import Settings
from ..core.batching import Batcher, BatchLimits
from ..core.lifecycle import Lifecycle
from ..core.metrics import Metrics
from ..core.service import EmbeddingService
from ..http.app import create_app
from ..models.loading import LoadedModel, load_model
from . import hypercorn_fixes
from .connections import ConnectionLimits, ServerConfig
from .fd_limit import check_connection_cap, raise_open_file_limit
from .logs import flush_periodically

log = logging.getLogger(__name__)

# hypercorn cancels what is left this long after our own drain deadline, so requests still waiting
# at our deadline get their 503 written first instead of a reset connection.
_HYPERCORN_GRACE_MARGIN = 2.0


def hypercorn_config(settings: Settings, *, reuse_port: bool = False) -> ServerConfig:
    config = ServerConfig(
        ConnectionLimits(
            max_connections=settings.max_connections,
            header_timeout=settings.header_timeout,
            write_timeout=settings.write_timeout,
            http2=settings.http2,
        )
    )
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = settings.graceful_timeout + _HYPERCORN_GRACE_MARGIN
    config.accesslog = None  # the app logs one line per request, with its request id
    config.errorlog = logging.getLogger("hypercorn.error")
    config.backlog = 2048  # bursts of hundreds of connections wait in the kernel, not refused
    config.keep_alive_timeout = 75  # longer than typical load balancer idle timeouts
    if reuse_port:
        config.workers = 2  # hypercorn sets SO_REUSEPORT on its sockets only when workers > 1
    return config


async def main(settings: Settings, *, reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT and a completed drain. Raises if a collector task crashes."""
    hypercorn_fixes.install()
    check_connection_cap(settings.max_connections, raise_open_file_limit())
    lifecycle = Lifecycle(graceful_timeout=settings.graceful_timeout, drain_delay=settings.drain_delay)
    metrics = Metrics()
    async with trio.open_nursery() as process:
        await process.start(lifecycle.watch_signals)
        process.start_soon(flush_periodically)
        loaded = await _load_unless_stopped(settings, lifecycle)
        if loaded is None:
            log.info("shutdown requested during start-up")
            process.cancel_scope.cancel()
            return
        limits = BatchLimits(
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=loaded.max_batch_tokens,
            batch_timeout=settings.batch_timeout,
            num_workers=settings.num_batching_workers,
            max_queue_size=settings.max_queue_size,
        )
        batcher = Batcher(loaded.embedder, metrics, limits, loaded.cost)
        async with trio.open_nursery() as serving:
            await serving.start(batcher.run)
            service = EmbeddingService(settings, batcher, lifecycle, metrics)
            await process.start(service.monitor)
            app = create_app(service)
            config = hypercorn_config(settings, reuse_port=reuse_port)
            binds = await serving.start(_serve_http, app, config, lifecycle, batcher)
            _freeze_heap()
            lifecycle.mark_ready()
            log.info("ready on %s (model %s on %s)", ", ".join(binds), service.model_name, service.device)
        log.info("drained; exiting")
        process.cancel_scope.cancel()


def _freeze_heap() -> None:
    """Hide what start-up allocated (modules, model, app) from the garbage collector: a full collection
    then scans only what requests allocate instead of pausing the event loop ~100 ms for every probe
    and request."""
    gc.collect()
    gc.freeze()


async def _load_unless_stopped(settings: Settings, lifecycle: Lifecycle) -> LoadedModel | None:
    """Load the model in a thread; a signal during loading abandons it (the process is exiting)."""
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            await lifecycle.drain_started.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_on_signal)
        loaded = await trio.to_thread.run_sync(load_model, settings, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
        return loaded
    return None


async def _serve_http(
    app: QuartTrio,
    config: ServerConfig,
    lifecycle: Lifecycle,
    batcher: Batcher,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn until its drain ends; then the batcher is closed and finishes what is queued."""
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
        batcher.close()


__all__ = ["hypercorn_config", "main"]
