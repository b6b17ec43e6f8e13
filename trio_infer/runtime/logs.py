"""Logging set-up: plain text or one JSON object per line, with the request id where there is one.

Everything the process logs goes through the root logger's one handler: Python warnings
(`logging.captureWarnings`), and the Hugging Face libraries' loggers once `adopt_library_loggers`
has taken their own handlers away; their progress bars are turned off. So with `--log-format json`
every line is a JSON object. In `--workers` mode each line carries the worker's number (0 is the
supervisor).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import time
from typing import Any, NoReturn

import orjson

_EXTRA_FIELDS = ("request_id", "status", "duration_ms")
SUPERVISOR = 0
# C0 and C1 control characters, DEL, and the Unicode line/paragraph separators: a text log line must
# stay one line whatever a client put in a path or header (no forged lines, no terminal escapes).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape (`\\n`, `\\x1b`, ...)."""
    return _CONTROL.sub(_escape_char, text) if _CONTROL.search(text) else text


class JSONFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage().rstrip("\n"),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        for field in _EXTRA_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    """`time level logger: message`; control characters in the message and request id are escaped,
    and a traceback's lines are indented, so every line that starts at column 0 is a real record."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        if worker is not None:
            tag = "supervisor" if worker == SUPERVISOR else f"worker {worker}"
            self._style._fmt = f"%(asctime)s [{tag}] %(levelname)s %(name)s: %(message)s"

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message.rstrip("\n"))
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        text = _CONTROL_BUT_NEWLINE.sub(_escape_char, super().formatException(ei))
        return "\n".join("    " + line for line in text.splitlines())

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} request_id={escape_controls(str(request_id))}" if request_id else line


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


def configure_logging(level: str, fmt: str, *, buffered: bool = False, worker: int | None = None) -> None:
    """Log to stderr as text or JSON lines; `buffered` for a process that runs `flush_periodically`;
    `worker`: the worker's number (0 for the supervisor) written on every line, in --workers mode."""
    # Before any Hugging Face library is imported (they read it once): no progress bars on stderr.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    handler: logging.Handler = BufferedStderrHandler() if buffered else logging.StreamHandler(sys.stderr)
    # Record fields no formatter here prints; gathering them (a stack walk for the caller's file and
    # line, thread and process look-ups) cost more than the rest of a request's log line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler.setFormatter(JSONFormatter(worker) if fmt == "json" else TextFormatter(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # `warnings.warn` from any library: one record, in our format
    # Third-party chatter below warnings is noise in a server log.
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


_LIBRARY_LOGGERS = (
    "httpx",
    "urllib3",
    "filelock",
    "huggingface_hub",
    "sentence_transformers",
    "transformers",
)
# Libraries that attach a stderr handler of their own when their logging module is imported: each
# message would be printed in their format and again through ours.
_SELF_HANDLING = {
    "huggingface_hub": "huggingface_hub.utils.logging",
    "transformers": "transformers.utils.logging",
}


def adopt_library_loggers() -> None:
    """Import the Hugging Face libraries' logging set-up and route their loggers through ours.

    Blocking (imports); call before loading a real model. Libraries that are not installed are skipped."""
    for name, module in _SELF_HANDLING.items():
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def exit_now(code: int) -> NoReturn:
    """Flush the logs and leave without interpreter finalisation. For a server whose drain is done:
    tearing down torch's thread pools under idle worker threads at exit can abort the process
    ("terminate called without an active exception", exit status -6) after a clean shutdown."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
