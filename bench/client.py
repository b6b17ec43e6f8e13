"""Closed-loop load generator: N clients, each on its own keep-alive connection, one request in flight.

The HTTP/1.1 client is hand-rolled over trio sockets (pre-encoded requests, minimal response parsing)
so that it uses as little of the shared CPU as possible. Any non-200 response counts as an error, and so
does a broken connection (the client then reconnects).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
import trio

EMBEDDING_DIM = 384
REQUEST_TIMEOUT = 15.0  # a request unanswered this long counts as an error (the connection is dropped)
_VALIDATE_EVERY = 50  # fully parse one response in this many (orjson + length check)


class ProtocolError(Exception):
    pass


@dataclass
class LoadResult:
    name: str
    clients: int
    duration: float
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rate(self) -> float:
        return self.ok / self.duration if self.duration > 0 else 0.0

    def quantile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[round(q * 100) - 1]


def build_requests(
    texts: list[str], host: str, port: int, path: str = "/embed", model: str | None = None
) -> list[bytes]:
    """One pre-encoded `POST /embed` per text; with `model`, the body names it (else the default model)."""
    out = []
    for t in texts:
        body = orjson.dumps({"input_text": t} if model is None else {"input_text": t, "model": model})
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


class _Conn:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise ProtocolError("connection closed by server")
        self.buf += data

    async def _read_until(self, sep: bytes) -> bytes:
        while (i := self.buf.find(sep)) < 0:
            await self._fill()
        out = bytes(self.buf[:i])
        del self.buf[: i + len(sep)]
        return out

    async def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def request(self, raw: bytes) -> tuple[int, bytes, bool]:
        """Send one request; return (status, body, keep_alive)."""
        await self.stream.send_all(raw)
        head = await self._read_until(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise ProtocolError(f"bad status line {lines[0]!r}") from exc
        length = None
        chunked = False
        keep_alive = True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                keep_alive = False
        if chunked:
            parts = []
            while True:
                size = int((await self._read_until(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self._read_until(b"\r\n")  # no trailers expected
                    break
                parts.append(await self._read_exact(size))
                await self._read_exact(2)
            body = b"".join(parts)
        elif length is not None:
            body = await self._read_exact(length)
        else:
            raise ProtocolError("response without Content-Length or chunked encoding")
        return status, body, keep_alive


async def _connect(host: str, port: int) -> _Conn:
    return _Conn(await trio.open_tcp_stream(host, port))


def _check_body(body: bytes) -> str | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "invalid JSON body"
    emb = doc.get("embedding") if isinstance(doc, dict) else None
    if not isinstance(emb, list) or len(emb) != EMBEDDING_DIM:
        return "bad embedding shape"
    return None


async def run_load(
    host: str,
    port: int,
    texts: list[str],
    clients: int,
    duration: float,
    warmup: float,
    name: str = "",
    request_timeout: float = REQUEST_TIMEOUT,
    model: str | None = None,
) -> LoadResult:
    """Closed loop with ``clients`` connections for ``warmup`` + ``duration`` seconds.

    Only requests that start and finish inside the measurement window are counted. With ``model``,
    every request names it and a response that names another model counts as an error.
    """
    requests = build_requests(texts, host, port, model=model)
    answered_by = None if model is None else b'"model":' + orjson.dumps(model)
    result = LoadResult(name or f"{clients} clients", clients, duration)
    next_index = 0
    t_start = time.perf_counter() + warmup
    t_end = t_start + duration

    async def client() -> None:
        nonlocal next_index
        conn: _Conn | None = None
        sent = 0
        while True:
            raw = requests[next_index % len(requests)]
            next_index += 1
            t0 = time.perf_counter()
            failure = None
            with trio.move_on_after(request_timeout) as scope:
                try:
                    if conn is None:
                        conn = await _connect(host, port)
                    status, body, keep_alive = await conn.request(raw)
                except (OSError, trio.BrokenResourceError, ProtocolError) as exc:
                    failure = f"{type(exc).__name__}: {exc}"[:80]
            if scope.cancelled_caught:
                failure = f"no response within {request_timeout:.0f} s"
            if failure is not None:
                if t0 >= t_start:
                    result.errors[failure] += 1
                if conn is not None:
                    await conn.stream.aclose()
                conn = None
                await trio.sleep(0.01)
                continue
            t1 = time.perf_counter()
            sent += 1
            problem = None
            if status != 200:
                problem = f"HTTP {status}"
            elif b'"embedding"' not in body:
                problem = "no embedding in body"
            elif answered_by is not None and answered_by not in body:
                problem = "answered by another model"
            elif sent % _VALIDATE_EVERY == 1:
                problem = _check_body(body)
            if t0 >= t_start and t1 <= t_end:
                if problem is None:
                    result.latencies.append(t1 - t0)
                else:
                    result.errors[problem] += 1
            if not keep_alive and conn is not None:
                await conn.stream.aclose()
                conn = None

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
        await trio.sleep(max(0.0, t_end - time.perf_counter()))
        nursery.cancel_scope.cancel()
    return result
