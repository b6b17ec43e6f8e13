"""The listening socket, bound before anything slow happens so an unusable address fails in a second.

The socket is bound and listening on return: connections that arrive while the model loads wait in
the kernel's backlog and are served once hypercorn starts (a probe sees the port open, and `/ready`
answers 503 until the model is loaded). No SO_REUSEPORT: no other process can join the port; with
`--workers N` the supervisor binds once and every worker serves the same socket.
"""

from __future__ import annotations

import socket

BACKLOG = 2048  # bursts of hundreds of connections wait in the kernel, not refused


class BindError(OSError):
    """The address cannot be listened on. The message is one line naming `host:port` and the cause."""


def display_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_listener(host: str, port: int, *, backlog: int = BACKLOG) -> socket.socket:
    """A blocking-mode TCP socket bound to `host:port` and listening. Raises BindError.

    `host` may be a name; IPv4 is preferred when it resolves to both families (as hypercorn did).
    The caller owns the socket (close it, or hand it to the server with `hand_over`)."""
    where = display_address(host, port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise BindError(f"cannot listen on {where}: cannot resolve host: {error.strerror}") from error
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # SO_REUSEADDR only lets a restarted server bind while old connections sit in TIME_WAIT;
        # on Linux it does not let a second listener share the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        cause = error.strerror or str(error)
        raise BindError(f"cannot listen on {where}: {cause}") from error
    return sock


def hand_over(sock: socket.socket) -> str:
    """Give up ownership of `sock` and return a hypercorn bind (`fd://N`) for its descriptor.

    After this call only the server that opens the bind owns (and closes) the descriptor."""
    return f"fd://{sock.detach()}"


__all__ = ["BACKLOG", "BindError", "bind_listener", "display_address", "hand_over"]
