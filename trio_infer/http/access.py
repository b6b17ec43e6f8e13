"""Per-request concerns shared by every route: request ids, the caller's deadline header, and the
access log line (the API key and the caller it names: `callers.py`)."""

from __future__ import annotations

import itertools
import logging
import uuid

from ..core import errors

log = logging.getLogger("trio_infer.http.access")

REQUEST_ID_HEADER = "X-Request-ID"
TIMEOUT_HEADER = "X-Request-Timeout"
PRIORITY_HEADER = "X-Priority"  # read by the pipeline (`pipeline._priority`)
_MAX_REQUEST_ID = 128

# Generated ids: a random per-process prefix and a counter (unique without a uuid4's urandom call).
_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count(1)


def request_id(supplied: str | None) -> str:
    """The caller's id when it is a short printable ASCII token (it goes into headers and logs),
    else a fresh one."""
    if supplied and len(supplied) <= _MAX_REQUEST_ID and supplied.isascii() and supplied.isprintable():
        return supplied
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def parse_timeout(raw: str | None) -> float | None:
    """The caller's own deadline in seconds from the `X-Request-Timeout` header, if given."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise errors.BadRequest(f"{TIMEOUT_HEADER} must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value != value:
        raise errors.BadRequest(f"{TIMEOUT_HEADER} must be positive")
    return value


def log_access(method: str, path: str, status: int, seconds: float, request_id: str) -> None:
    """One line per request, carrying its id (a JSON field with --log-format json)."""
    if log.isEnabledFor(logging.INFO):
        log.info(
            "%s %s %d %.1fms",
            method,
            path,
            status,
            seconds * 1e3,
            extra={"request_id": request_id, "status": status, "duration_ms": round(seconds * 1e3, 2)},
        )
