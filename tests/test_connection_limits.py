"""What one client connection may hold, against a real server over real sockets (issue 10 points 3, 5).

Bounds are configured short and the checks wait with generous margins: a test fails only when the
server holds on far past its bound (hypercorn alone would hold for 75 s or forever).
"""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.serverproc import ServerProcess, build_request, get_sync

pytestmark = pytest.mark.e2e

MARGIN = 20.0  # seconds a check may wait for what the server does within a 1-2 s bound


def wait_until(condition: Callable[[], bool], what: str, limit: float = MARGIN) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit} s: {what}")
        time.sleep(0.05)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=MARGIN)


def read_to_eof(sock: socket.socket) -> bytes:
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def keep_alive_health(sock: socket.socket) -> bytes:
    sock.sendall(build_request("GET", "/health", keep_alive=True))
    received = b""
    while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    with ServerProcess(args=request.param) as running:
        yield running


@pytest.mark.parametrize("server", [["--max-connections", "3", "--header-timeout", "60"]], indirect=True)
def test_connections_over_the_cap_get_503_and_are_closed(server: ServerProcess) -> None:
    held: list[socket.socket] = []
    try:
        while len(held) < 3:  # the readiness probe's connection may still be closing: retry until admitted
            sock = connect(server.port)
            if keep_alive_health(sock).startswith(b"HTTP/1.1 200 "):
                held.append(sock)
            else:
                sock.close()
                time.sleep(0.05)
        with connect(server.port) as extra:
            answer = read_to_eof(extra)  # answered before sending a byte, then closed
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b"retry-after: 1" in answer.lower()
        assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "overloaded"
        held.pop().close()

        def admitted() -> bool:
            with connect(server.port) as sock:
                return keep_alive_health(sock).startswith(b"HTTP/1.1 200 ")

        wait_until(admitted, "a connection is admitted once one of the capped ones has closed")
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("server", [["--header-timeout", "1"]], indirect=True)
def test_a_client_dribbling_its_request_head_is_disconnected(server: ServerProcess) -> None:
    fds_before = server.open_fds()
    with connect(server.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < MARGIN:  # one header byte every 0.2 s, never the end
            try:
                sock.sendall(b"X")
                time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "the server kept a connection whose head never ended"
    wait_until(lambda: server.open_fds() <= fds_before, "the dribbling client's descriptor to close")


@pytest.mark.parametrize("server", [["--header-timeout", "1"]], indirect=True)
def test_a_silent_connection_is_closed_after_the_header_timeout(server: ServerProcess) -> None:
    with connect(server.port) as sock:
        assert read_to_eof(sock) == b""  # closed by the server within MARGIN (else recv times out)


@pytest.mark.parametrize("server", [["--header-timeout", "1"]], indirect=True)
def test_an_idle_keep_alive_connection_waits_for_the_keep_alive_timeout_not_the_header_timeout(
    server: ServerProcess,
) -> None:
    with connect(server.port) as sock:
        assert keep_alive_health(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(3)  # idle three header timeouts (the keep-alive timeout is 75 s)
        assert keep_alive_health(sock).startswith(b"HTTP/1.1 200 ")


def _stalled_reader(port: int) -> socket.socket:
    """A client that asks for a ~9 MB answer and never reads it, with a tiny receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(MARGIN)
    sock.connect(("127.0.0.1", port))
    payload = {
        "model": "debug",
        "input": [f"text number {i}" for i in range(2048)],
        "encoding_format": "float",
    }
    sock.sendall(build_request("POST", "/v1/embeddings", orjson.dumps(payload), keep_alive=True))
    # wait for the answer to start: from then on the server's write is stuck on a full socket
    wait_until(lambda: len(sock.recv(12, socket.MSG_PEEK)) == 12, "the answer to start")
    assert sock.recv(12, socket.MSG_PEEK) == b"HTTP/1.1 200"
    return sock


@pytest.mark.parametrize("server", [["--write-timeout", "1"]], indirect=True)
def test_a_client_that_does_not_read_its_response_is_disconnected(server: ServerProcess) -> None:
    with _stalled_reader(server.port) as sock:
        wait_until(lambda: "did not read its response" in server.log(), "the stalled reader to be dropped")
        received = read_to_eof(sock)  # what was in the buffers, then the reset
        assert 0 < len(received) < 9_000_000
    assert get_sync(server.port, "/health").status == 200


def test_a_client_that_does_not_read_cannot_hold_the_drain() -> None:
    with (
        ServerProcess(args=["--write-timeout", "600", "--graceful-timeout", "1"]) as server,
        _stalled_reader(server.port),
    ):
        assert server.proc is not None
        server.proc.terminate()
        # hypercorn's shielded write would wait for this client forever; the bound is
        # --graceful-timeout plus hypercorn's 2 s grace
        server.proc.wait(timeout=MARGIN)


def test_the_soft_open_file_limit_is_raised_to_the_hard_limit() -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] <= 256:
        pytest.skip("the hard open-file limit here leaves nothing to raise")
    code = (
        "import resource, runpy, sys; "
        "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard)); "
        "sys.argv[0] = 'trio_infer'; "
        "runpy.run_module('trio_infer', run_name='__main__', alter_sys=True)"
    )
    with ServerProcess(launcher=("-c", code)) as server:
        limits = Path(f"/proc/{server.pid}/limits").read_text().splitlines()
        (line,) = [row for row in limits if row.startswith("Max open files")]
        soft, hard = line.split()[3:5]
        assert soft == hard, line


@pytest.mark.parametrize("server", [["--header-timeout", "60"]], indirect=True)
def test_a_client_that_leaves_mid_head_frees_its_connection_at_once(server: ServerProcess) -> None:
    """hypercorn left the keep-alive timer running after the read loop ended, so the socket of a
    client that left mid-head stayed open for the whole timer (here 60 s)."""
    fds_before = server.open_fds()
    for _ in range(5):
        with connect(server.port) as sock:
            sock.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
    wait_until(lambda: server.open_fds() <= fds_before, "the descriptors of clients that left to close")


def test_connection_settings_are_validated() -> None:
    from trio_infer.config import load_settings

    assert load_settings([], env={"HTTP2": "on", "MAX_CONNECTIONS": "7"}).http2 is True
    assert load_settings([], env={}).http2 is False
    for env in (
        {"HEADER_TIMEOUT": "0"},
        {"WRITE_TIMEOUT": "-1"},
        {"MAX_CONNECTIONS": "0"},
        {"HTTP2": "maybe"},
    ):
        with pytest.raises(SystemExit):
            load_settings([], env=env)
