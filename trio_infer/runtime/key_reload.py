"""The key ring in force, and its reload on SIGHUP.

`serve_key_ring` installs the SIGHUP receiver first and only then reads `--api-keys-file`, so a SIGHUP
sent at any moment after the process started is never lost: either the start-up read already saw
the new file, or the signal re-reads it. On each SIGHUP the file is read and validated whole in a
thread, then the ring is replaced with one assignment on the event loop: a request in flight keeps
the caller it was admitted with, the next request is checked against the new keys (a removed key is
401 from then on). A file that cannot be used on reload leaves the old keys in force, with a warning
naming the line. Without `--api-keys-file` a SIGHUP changes nothing (and, handled, never ends the
process as its default action would).
"""

from __future__ import annotations

import functools
import logging
import signal

import trio

from ..config import Settings
from ..http.callers import Callers, KeyRing, key_ring
from ..http.keys_file import KeysFileError

log = logging.getLogger(__name__)


async def serve_key_ring(settings: Settings, *, task_status: trio.TaskStatus[Callers]) -> None:
    """Start with the ring the settings configure (raises KeysFileError when the file cannot be
    used), then reload it on every SIGHUP until cancelled."""
    with trio.open_signal_receiver(signal.SIGHUP) as hangups:
        callers = Callers(key_ring(settings))  # blocking, once, before anything serves
        task_status.started(callers)
        async for _ in hangups:  # signals arriving during a reload are folded into the next one
            await reload(callers, settings)


async def reload(callers: Callers, settings: Settings) -> None:
    """Re-read `--api-keys-file` in a thread and put its ring in force; keep the old one (and warn)
    when the file cannot be used. Cancellation abandons the read (a hung file system never holds
    up shutdown) and changes nothing."""
    path = settings.api_keys_file
    if path is None:
        log.info("SIGHUP received: no --api-keys-file to re-read")
        return
    try:
        ring = await trio.to_thread.run_sync(functools.partial(key_ring, settings), abandon_on_cancel=True)
    except KeysFileError as error:
        log.warning("SIGHUP received: keeping the %s in force: %s", _callers(callers.ring), error)
        return
    callers.ring = ring
    log.info("SIGHUP received: re-read %s: %s", path, _callers(ring))


def _callers(ring: KeyRing) -> str:
    count = len(ring.names)
    return f"{count} caller" if count == 1 else f"{count} callers"


__all__ = ["reload", "serve_key_ring"]
