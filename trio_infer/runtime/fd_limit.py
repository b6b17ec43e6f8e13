"""The process's open-file limit: every client connection holds a file descriptor.

The soft RLIMIT_NOFILE is often 1024 while the hard limit allows far more; a server that keeps the
soft one refuses connections (EMFILE) long before `--max-connections`. So at start the soft limit is
raised to the hard one, as nginx's `worker_rlimit_nofile` and most servers do.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

# Linux refuses RLIM_INFINITY for RLIMIT_NOFILE (the ceiling is fs.nr_open); a hard limit of
# "unlimited" is read as this many.
_UNLIMITED_AS = 1 << 20
# Descriptors the process needs besides client connections: listeners, logs, model files, pipes.
RESERVED_FDS = 64


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_AS if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, error)
    return soft


def check_connection_cap(max_connections: int, soft_limit: int) -> None:
    """Warn when the connection cap cannot be reached before the descriptors run out."""
    if max_connections + RESERVED_FDS > soft_limit:
        log.warning(
            "--max-connections=%d plus %d reserved descriptors exceeds the open-file limit %d: "
            "connections beyond it fail to be accepted (EMFILE) instead of getting a 503",
            max_connections,
            RESERVED_FDS,
            soft_limit,
        )
