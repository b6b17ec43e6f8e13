"""Worker heartbeats: proof, to the supervisor, that a worker's event loop still runs.

A worker writes one byte to its end of a socket pair every `interval(timeout)` seconds from a task
on its event loop. The supervisor reads them; a worker whose last beat is older than
`--heartbeat-timeout` (a wedged event loop, a stopped process) is killed and replaced. A process
can be alive and its port open while its loop is stuck, so exit codes alone do not show this.
"""

from __future__ import annotations

import socket

import trio


def interval(heartbeat_timeout: float) -> float:
    """Seconds between beats: several beats per timeout, so one late beat is not a missed one."""
    return min(1.0, heartbeat_timeout / 5)


async def send_heartbeats(channel: socket.socket, heartbeat_timeout: float) -> None:
    """Beat every `interval(heartbeat_timeout)` s until cancelled, or until the supervisor's end is
    closed (it is going away). Owns and closes `channel`."""
    channel.setblocking(False)
    with channel:
        while True:
            try:
                channel.send(b".")
            except BlockingIOError:  # the supervisor is behind on reading: it has beats enough
                pass
            except OSError:
                return
            await trio.sleep(interval(heartbeat_timeout))


__all__ = ["interval", "send_heartbeats"]
