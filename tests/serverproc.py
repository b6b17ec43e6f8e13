"""A real `python -m trio_infer` in a subprocess, and a small raw-socket HTTP/1.1 client for it.

Tests that need real sockets, real signals or the real process exit code start a `ServerProcess`
(the debug model by default, so start-up takes about a second). Its log goes to a file, never a pipe
nobody reads, so a chatty server can never block on a full pipe.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio
from prometheus_client.parser import text_string_to_metric_families

from trio_infer.config import settings_table

ROOT = Path(__file__).resolve().parents[1]

# Every setting the CLI reads from the environment: a server under test starts from the defaults
# (above all no API key and one worker) whatever the calling shell exports; tests pass their own.
SETTINGS_ENV = tuple(setting.env for setting in settings_table())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float = 0.0

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class ServerProcess:
    """`python -m trio_infer` on a free port of 127.0.0.1. Use as a context manager or call start/stop."""

    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    launcher: Sequence[str] = ("-m", "trio_infer")
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(
        default_factory=lambda: Path(tempfile.mkstemp(prefix="trio-infer-", suffix=".log")[1])
    )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> ServerProcess:
        inherited = {key: value for key, value in os.environ.items() if key not in SETTINGS_ENV}
        # torch unless a test asks for another backend: `auto` would export and measure at every fresh start.
        env = {**inherited, "MODEL_NAME": "debug", "BACKEND": "torch", "HF_HUB_OFFLINE": "1", **self.env}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    *self.launcher,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if get_sync(self.port, "/ready").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise RuntimeError("no Threads")

    def __enter__(self) -> ServerProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)


# -- HTTP/1.1 over raw sockets ----------------------------------------------------------------------


def build_request(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    content_type: str | None = "application/json",
    keep_alive: bool = False,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    given = {name.lower() for name in headers or {}}
    if body is not None:
        if content_type is not None and "content-type" not in given:
            lines.append(f"Content-Type: {content_type}")
        if "content-length" not in given:
            lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def json_request(path: str, payload: Any, headers: Mapping[str, str] | None = None, **kw: Any) -> bytes:
    return build_request("POST", path, orjson.dumps(payload), headers, **kw)


class _Reader:
    """Reads one HTTP/1.1 response (Content-Length or chunked) from a byte source."""

    def __init__(self) -> None:
        self.buffer = b""

    def parse_head(self) -> tuple[int, dict[str, str], int] | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buffer[:end].decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, end + 4

    def body_if_complete(self, headers: dict[str, str], start: int, eof: bool) -> bytes | None:
        data = self.buffer[start:]
        if "content-length" in headers:
            length = int(headers["content-length"])
            return data[:length] if len(data) >= length else None
        if headers.get("transfer-encoding", "").lower() == "chunked":
            out, pos = b"", 0
            while True:
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                size = int(data[pos:line_end].split(b";")[0], 16)
                if size == 0:
                    return out
                if len(data) < line_end + 2 + size + 2:
                    return None
                out += data[line_end + 2 : line_end + 2 + size]
                pos = line_end + 2 + size + 2
        return data if eof else None


async def request(port: int, raw: bytes, *, limit: float = 30.0) -> Response:
    """Send `raw` on a fresh connection and read one response."""
    start = time.perf_counter()
    with trio.fail_after(limit):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(raw)
            return await read_response(stream, start)


async def read_response(stream: trio.abc.ReceiveStream, start: float | None = None) -> Response:
    start = time.perf_counter() if start is None else start
    reader = _Reader()
    eof = False
    while True:
        head = reader.parse_head()
        if head is not None:
            status, headers, body_start = head
            if status >= 100 and status < 200:
                reader.buffer = reader.buffer[body_start:]
                continue
            body = reader.body_if_complete(headers, body_start, eof)
            if body is not None:
                return Response(status, headers, body, time.perf_counter() - start)
        if eof:
            raise ConnectionError(f"connection closed mid-response: {reader.buffer[:200]!r}")
        chunk = await stream.receive_some(65536)
        if not chunk:
            eof = True
        reader.buffer += chunk


async def post_json(
    port: int, path: str, payload: Any, headers: Mapping[str, str] | None = None, *, limit: float = 30.0
) -> Response:
    return await request(port, json_request(path, payload, headers), limit=limit)


async def get(
    port: int, path: str, headers: Mapping[str, str] | None = None, *, limit: float = 30.0
) -> Response:
    return await request(port, build_request("GET", path, None, headers), limit=limit)


def get_sync(port: int, path: str, *, timeout: float = 5.0) -> Response:
    """Blocking GET (for fixtures and threads)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(build_request("GET", path))
        reader = _Reader()
        while True:
            chunk = sock.recv(65536)
            reader.buffer += chunk
            head = reader.parse_head()
            if head is not None:
                body = reader.body_if_complete(head[1], head[2], not chunk)
                if body is not None:
                    return Response(head[0], head[1], body, time.perf_counter() - start)
            if not chunk:
                raise ConnectionError("connection closed mid-response")


# -- waiting on a condition ---------------------------------------------------------------------------


async def wait_until(
    check: Callable[[], Awaitable[bool]], limit: float, what: str, *, interval: float = 0.02
) -> None:
    """Poll `check` until it returns True; AssertionError after `limit` seconds. For conditions in
    another process or behind a socket, which offer no event to wait on."""
    with trio.move_on_after(limit):
        while not await check():  # noqa: ASYNC110 - polling another process; no event to wait on
            await trio.sleep(interval)
        return
    raise AssertionError(f"timed out after {limit} s waiting for {what}")


# -- metrics ---------------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """Every sample as `name{label="value",...}` (labels sorted) -> value."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def metrics(port: int) -> dict[str, float]:
    response = await get(port, "/metrics")
    assert response.status == 200
    return parse_metrics(response.body.decode())


# -- a probe loop in its own process ------------------------------------------------------------------


@dataclass
class ProbeResult:
    path: str
    status: int  # 0: a connection error (the loop reconnects)
    latency: float


class ProbeLoop:
    """Probes /health and /ready alternately, every `interval` s, on one keep-alive connection, from
    another process, so the test's own event loop (busy sending a burst) stays out of the figures.

    `start()` returns once the first probe was answered; `stop()` ends the loop and returns every probe.
    """

    def __init__(self, port: int, interval: float = 0.025) -> None:
        self.port = port
        self.interval = interval
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProbeLoop:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "probe", str(self.port), str(self.interval)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"started":
            raise RuntimeError("the probe loop did not start")
        return self

    def stop(self) -> list[ProbeResult]:
        assert self.proc is not None
        out, _ = self.proc.communicate(timeout=30)  # closing its stdin ends the loop
        return [ProbeResult(*item) for item in orjson.loads(out)]


def _probe_once(sock: socket.socket, path: str) -> int:
    sock.sendall(build_request("GET", path, keep_alive=True))
    reader = _Reader()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        reader.buffer += chunk
        head = reader.parse_head()
        if head is not None and reader.body_if_complete(head[1], head[2], False) is not None:
            return head[0]


def _probe_main(port: int, interval: float) -> None:
    import select

    results: list[tuple[str, int, float]] = []
    sock: socket.socket | None = None
    paths = ("/health", "/ready")
    count = 0
    while True:
        path = paths[count % 2]
        count += 1
        start = time.perf_counter()
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30.0)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            status = _probe_once(sock, path)
        except OSError:
            status = 0
            if sock is not None:
                sock.close()
            sock = None
        results.append((path, status, time.perf_counter() - start))
        if count == 1:
            sys.stdout.write("started\n")
            sys.stdout.flush()
        if select.select([sys.stdin], [], [], interval)[0]:  # stdin readable: closed by the parent
            break
    sys.stdout.write(orjson.dumps(results).decode())


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "probe":
        _probe_main(int(sys.argv[2]), float(sys.argv[3]))
    else:
        sys.exit(f"usage: {sys.argv[0]} probe PORT INTERVAL")
