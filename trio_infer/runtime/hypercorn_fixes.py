"""The one place that changes hypercorn's internals, each change guarded by the versions it was verified on.

Each patch replaces code inside hypercorn that is not public API, so it is applied only when the
installed hypercorn is a version its behaviour was verified on (by the regression tests named below,
over real sockets). On any other version the patch is refused and a warning says what is lost;
pyproject.toml's upper bound on hypercorn keeps a normal install on a verified version.

* `connection-guard` (hypercorn.trio.run.TCPServer -> connections.GuardedTCPServer): a failure in
  one connection closes only that connection; the connection cap; the head and write deadlines; the
  keep-alive timer stopped when a client leaves; a write racing the close is a disconnect.
  Tests: tests/test_connection_limits.py, tests/test_http2.py::test_data_after_the_answer_*.
* `http2-switch` (H11Protocol._check_protocol -> http2.check_protocol): plaintext HTTP/2 only with
  `--http2`. Tests: tests/test_http2.py::test_http2_is_off_*.
* `http2-frames` (H2Protocol._handle_events -> http2.handle_events): no KeyError on DATA for an
  answered stream; rapid reset closes the connection. Tests: tests/test_http2.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version as installed_version

import hypercorn.trio.run
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol

from . import http2
from .connections import GuardedTCPServer

log = logging.getLogger(__name__)

VERIFIED_VERSIONS = frozenset({"0.18.0"})


@dataclass(frozen=True, slots=True)
class Patch:
    name: str
    lost_without: str  # what the service loses when the patch is refused
    verified: frozenset[str]
    apply: Callable[[], None]


def _guard_connections() -> None:
    hypercorn.trio.run.TCPServer = GuardedTCPServer  # type: ignore[attr-defined]


_original_check_protocol: http2.CheckProtocol = H11Protocol._check_protocol
_original_handle_events: http2.HandleEvents = H2Protocol._handle_events


def _switch_http2() -> None:
    H11Protocol._check_protocol = http2.check_protocol(_original_check_protocol)  # type: ignore[method-assign,assignment]


def _guard_http2_frames() -> None:
    H2Protocol._handle_events = http2.handle_events(_original_handle_events)  # type: ignore[method-assign,assignment]


PATCHES = (
    Patch(
        "connection-guard",
        "a client can end the process; no connection cap, head or write deadline",
        VERIFIED_VERSIONS,
        _guard_connections,
    ),
    Patch(
        "http2-switch",
        "plaintext HTTP/2 stays on whatever --http2 says",
        VERIFIED_VERSIONS,
        _switch_http2,
    ),
    Patch(
        "http2-frames",
        "HTTP/2 DATA after an answer and rapid reset are unguarded",
        VERIFIED_VERSIONS,
        _guard_http2_frames,
    ),
)


def install(version: str | None = None) -> list[str]:
    """Apply every patch verified on `version` (default: the installed hypercorn); idempotent.

    Returns the names of the patches applied; each one refused is logged as a warning.
    """
    version = installed_version("hypercorn") if version is None else version
    applied = []
    for patch in PATCHES:
        if version in patch.verified:
            patch.apply()
            applied.append(patch.name)
        else:
            log.warning(
                "hypercorn %s is not a version the %r patch was verified on (%s): not applied, so %s",
                version,
                patch.name,
                ", ".join(sorted(patch.verified)),
                patch.lost_without,
            )
    return applied


__all__ = ["PATCHES", "VERIFIED_VERSIONS", "install"]
