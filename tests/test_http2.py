"""Plaintext HTTP/2 against a real server over real sockets, with the `h2` library as the client.

Issue 10 point 1: one DATA frame after an answered stream used to raise KeyError in hypercorn's
protocol/h2.py, out of the connection's task and out of `serve.main`: the process exited 1. HTTP/2 is
now off unless `--http2`, and with it on neither that sequence nor a rapid-reset burst stops the server.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from tests.serverproc import ServerProcess, get_sync

pytestmark = pytest.mark.e2e

HEALTH = [(":method", "GET"), (":path", "/health"), (":scheme", "http"), (":authority", "127.0.0.1")]


@pytest.fixture(scope="module")
def http2_server() -> Iterator[ServerProcess]:
    with ServerProcess(args=["--http2"]) as server:
        yield server


@pytest.fixture(scope="module")
def http1_server() -> Iterator[ServerProcess]:
    with ServerProcess() as server:
        yield server


class Client:
    """A prior-knowledge HTTP/2 client connection over a blocking socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def events(self) -> list[h2.events.Event]:
        """The events of the next bytes the server sends; [] at EOF."""
        data = self.sock.recv(65536)
        if not data:
            return []
        events = self.conn.receive_data(data)
        # The acknowledgements may meet a socket the server already closed (after its GOAWAY): the
        # events received still count.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.flush()
        return events

    def read_until(self, kind: type[h2.events.Event], stream_id: int | None = None) -> list[h2.events.Event]:
        seen: list[h2.events.Event] = []
        while True:
            events = self.events()
            if not events:
                raise ConnectionError(f"EOF before {kind.__name__}: {seen}")
            seen.extend(events)
            if any(isinstance(e, kind) and getattr(e, "stream_id", stream_id) == stream_id for e in events):
                return seen

    def read_to_eof(self) -> list[h2.events.Event]:
        seen: list[h2.events.Event] = []
        try:
            while events := self.events():
                seen.extend(events)
        except ConnectionResetError:
            pass
        return seen

    def close(self) -> None:
        self.sock.close()


def health_over_http2(port: int) -> int:
    client = Client(port)
    try:
        client.conn.send_headers(1, HEALTH, end_stream=True)
        client.flush()
        events = client.read_until(h2.events.StreamEnded, 1)
        (response,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        return int(dict(response.headers)[b":status"])
    finally:
        client.close()


def test_data_after_the_answer_closes_nothing_but_is_dropped(http2_server: ServerProcess) -> None:
    client = Client(http2_server.port)
    client.conn.send_headers(1, HEALTH, end_stream=False)  # the client's side stays open
    client.flush()
    events = client.read_until(h2.events.StreamEnded, 1)
    assert any(isinstance(e, h2.events.ResponseReceived) for e in events)
    client.conn.send_data(1, b"one frame too many")  # hypercorn 0.18 raised KeyError here
    client.flush()
    # the same connection still serves: a second request on it is answered
    client.conn.send_headers(3, HEALTH, end_stream=True)
    client.flush()
    events = client.read_until(h2.events.StreamEnded, 3)
    (response,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert dict(response.headers)[b":status"] == b"200"
    client.close()
    assert http2_server.proc is not None and http2_server.proc.poll() is None
    assert health_over_http2(http2_server.port) == 200
    assert get_sync(http2_server.port, "/health").status == 200
    assert "after an error" not in http2_server.log()  # dropped by the frame fix, not contained


def test_rapid_reset_closes_the_connection_and_the_server_keeps_serving(http2_server: ServerProcess) -> None:
    client = Client(http2_server.port)
    client.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100})
    for stream_id in range(1, 2 * 2000, 2):
        client.conn.send_headers(stream_id, HEALTH, end_stream=True)
        client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
    # the server may close the connection while the burst is being sent
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        client.flush()
    events = client.read_to_eof()
    client.close()
    goaways = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaways and goaways[-1].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert http2_server.proc is not None and http2_server.proc.poll() is None
    assert health_over_http2(http2_server.port) == 200
    assert get_sync(http2_server.port, "/health").status == 200


def test_http2_is_off_by_default_prior_knowledge_gets_505(http1_server: ServerProcess) -> None:
    client = Client(http1_server.port)
    client.conn.send_headers(1, HEALTH, end_stream=True)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        client.flush()
    received = b""
    try:
        while chunk := client.sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    client.close()
    # never an HTTP/2 frame: an HTTP/1.1 505 (when it arrives before the close) and nothing else
    assert received == b"" or received.startswith(b"HTTP/1.1 505 "), received[:200]
    assert get_sync(http1_server.port, "/health").status == 200
    assert "after an error" not in http1_server.log()  # a refusal, not an error


def test_http2_is_off_by_default_h2c_upgrade_is_answered_over_http1(http1_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", http1_server.port), timeout=10) as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings, close\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 "), received[:200]
    assert b"101 Switching Protocols" not in received


def test_h2c_upgrade_switches_with_http2_on(http2_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", http2_server.port), timeout=10) as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
        received = sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 101 "), received[:200]


async def test_an_error_in_one_connection_closes_only_that_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The containment alone, without the frame fix: hypercorn's own KeyError on the DATA frame is
    raised, closes its connection, is logged, and the server (in this process) keeps serving."""
    import hypercorn.trio.run
    import trio
    from hypercorn.protocol.h2 import H2Protocol
    from hypercorn.trio import serve

    from tests.serverproc import free_port
    from trio_infer.config import Settings
    from trio_infer.runtime import hypercorn_fixes
    from trio_infer.runtime import serve as trio_infer_serve
    from trio_infer.runtime.connections import GuardedTCPServer

    monkeypatch.setattr(hypercorn.trio.run, "TCPServer", GuardedTCPServer)
    monkeypatch.setattr(H2Protocol, "_handle_events", hypercorn_fixes._original_handle_events)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    config = trio_infer_serve.hypercorn_config(Settings(host="127.0.0.1", port=port, http2=True))
    config.bind = [f"127.0.0.1:{port}"]  # serve.main binds its own socket; this test serves the app alone

    def exchange() -> None:
        client = Client(port)
        client.conn.send_headers(1, HEALTH, end_stream=False)
        client.flush()
        client.read_until(h2.events.StreamEnded, 1)
        client.conn.send_data(1, b"x")
        client.flush()
        client.read_to_eof()  # returns: the server closed this connection
        client.close()
        assert health_over_http2(port) == 200  # another connection is served

    async with trio.open_nursery() as nursery:
        await nursery.start(serve, app, config)
        await trio.to_thread.run_sync(exchange)
        nursery.cancel_scope.cancel()
    (record,) = [r for r in caplog.records if r.name == "trio_infer.runtime.connections"]
    assert record.levelname == "ERROR" and record.exc_info is not None
    assert isinstance(record.exc_info[1], BaseExceptionGroup)
    assert record.exc_info[1].subgroup(KeyError) is not None
