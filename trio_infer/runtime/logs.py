"""Logging set-up: plain text or one JSON object per line, with the request id where there is one."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, NoReturn

import orjson

_EXTRA_FIELDS = ("request_id", "status", "duration_ms")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _EXTRA_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} request_id={request_id}" if request_id else line


class BufferedStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes records to a 64 KiB buffer over stderr instead of one write per line.

    Every write is a system call that hands the GIL to a busy inference thread and can keep the event
    loop waiting; with a line per request that cost was ~15% of the serving path's throughput. The
    buffer is flushed by `flush_periodically`, at once for warnings and worse, and at exit.
    """

    def __init__(self) -> None:
        stream = open(  # noqa: SIM115 - lives as long as the process; closefd=False keeps stderr open
            sys.stderr.fileno(),
            "w",
            buffering=1 << 16,
            encoding="utf-8",
            errors="backslashreplace",
            closefd=False,
        )
        super().__init__(stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)
        if record.levelno >= logging.WARNING:
            self.flush()


async def flush_periodically(interval: float = 0.25) -> None:
    """Flush buffered log handlers every `interval` seconds; runs until cancelled, then flushes."""
    import trio

    try:
        while True:
            await trio.sleep(interval)
            _flush_all()
    finally:
        _flush_all()


def _flush_all() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def configure_logging(level: str, fmt: str, *, buffered: bool = False) -> None:
    """Log to stderr as text or JSON lines; `buffered` for a process that runs `flush_periodically`."""
    handler: logging.Handler = BufferedStderrHandler() if buffered else logging.StreamHandler(sys.stderr)
    # Record fields no formatter here prints; gathering them (a stack walk for the caller's file and
    # line, thread and process look-ups) cost more than the rest of a request's log line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter below warnings is noise in a server log.
    for name in ("httpx", "urllib3", "filelock", "huggingface_hub", "sentence_transformers", "transformers"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def exit_now(code: int) -> NoReturn:
    """Flush the logs and leave without interpreter finalisation. For a server whose drain is done:
    tearing down torch's thread pools under idle worker threads at exit can abort the process
    ("terminate called without an active exception", exit status -6) after a clean shutdown."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
