"""Several kinds of client at once against one server: a stream is a group of closed-loop clients that
send the same kind of request (any path, body and headers), optionally with a pause between requests.

Used by the priority and cache rows, where interactive and bulk clients, or hits and misses, must be
told apart. Each stream's requests are pre-encoded and taken in order, shared by its clients; a
stream may stop after a fixed number of requests instead of at the end of the window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson
import trio

from bench.client import REQUEST_TIMEOUT, LoadResult, ProtocolError, _connect


def http_request(
    host: str, port: int, path: str, body: object, headers: Mapping[str, str] | None = None
) -> bytes:
    """One pre-encoded HTTP/1.1 POST with a JSON body."""
    data = orjson.dumps(body)
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    return head + data


@dataclass
class Stream:
    """`clients` closed-loop clients sending `requests` in order (cycled), each carrying `texts` texts.

    `pause`: seconds a client waits after each answer (0: closed loop). `total`: stop after this many
    requests (None: run until the window ends). `on_sent(index)` is called as request `index` is sent
    and `on_answer(index, t0, t1)` when its 200 arrives, for callers that classify requests.
    """

    name: str
    clients: int
    requests: Sequence[bytes]
    texts: int = 1
    pause: float = 0.0
    total: int | None = None
    on_sent: Callable[[int], None] | None = None
    on_answer: Callable[[int, float, float], None] | None = None
    completed_texts: int = field(default=0, init=False)  # of requests answered inside the window

    def texts_per_second(self, duration: float) -> float:
        return self.completed_texts / duration if duration > 0 else 0.0


async def run_streams(
    host: str,
    port: int,
    streams: Sequence[Stream],
    duration: float,
    warmup: float = 0.0,
    request_timeout: float = REQUEST_TIMEOUT,
) -> dict[str, LoadResult]:
    """Run every stream at once for `warmup` + `duration` seconds (or until the streams with a
    `total` have sent it, whichever comes first). A request's latency counts when it starts and ends
    inside the window; its texts count towards `Stream.completed_texts` when it ends inside it."""
    t_start = time.perf_counter() + warmup
    t_end = t_start + duration
    results = {s.name: LoadResult(s.name, s.clients, duration) for s in streams}
    finished = trio.Event()
    bounded = [s for s in streams if s.total is not None]
    done_bounded = 0

    async def client(stream: Stream, state: dict[str, int]) -> None:
        nonlocal done_bounded
        result = results[stream.name]
        conn = None
        while True:
            index = state["next"]
            if stream.total is not None and index >= stream.total:
                state["idle"] += 1
                if state["idle"] == stream.clients:
                    done_bounded += 1
                    if done_bounded == len(bounded):
                        finished.set()
                return
            state["next"] += 1
            raw = stream.requests[index % len(stream.requests)]
            if stream.on_sent is not None:
                stream.on_sent(index)
            t0 = time.perf_counter()
            failure = None
            status = 0
            with trio.move_on_after(request_timeout) as scope:
                try:
                    if conn is None:
                        conn = await _connect(host, port)
                    status, _body, keep_alive = await conn.request(raw)
                except (OSError, trio.BrokenResourceError, ProtocolError) as exc:
                    failure = f"{type(exc).__name__}: {exc}"[:80]
            if scope.cancelled_caught:
                failure = f"no response within {request_timeout:.0f} s"
            t1 = time.perf_counter()
            if failure is None and status != 200:
                failure = f"HTTP {status}"
            if failure is not None:
                if t0 >= t_start or stream.total is not None:
                    result.errors[failure] += 1
                if conn is not None:
                    await conn.stream.aclose()
                conn = None
                await trio.sleep(0.01)
                continue
            inside = stream.total is not None or (t0 >= t_start and t1 <= t_end)
            if inside:
                result.latencies.append(t1 - t0)
            if stream.total is not None or t_start <= t1 <= t_end:
                stream.completed_texts += stream.texts
            if stream.on_answer is not None:
                stream.on_answer(index, t0, t1)
            if not keep_alive and conn is not None:
                await conn.stream.aclose()
                conn = None
            if stream.pause:
                await trio.sleep(stream.pause)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for stream in streams:
            state = {"next": 0, "idle": 0}
            for _ in range(stream.clients):
                nursery.start_soon(client, stream, state)
        if bounded:
            await finished.wait()
        else:
            await trio.sleep(max(0.0, t_end - time.perf_counter()))
        nursery.cancel_scope.cancel()
    if bounded:
        elapsed = time.perf_counter() - started
        for result in results.values():
            result.duration = elapsed
    return results
