"""Overload, callers who leave, model faults and access control, against a real server over real sockets.

Every test starts `python -m trio_infer` with the debug model, whose marker texts inject faults
(`trio_infer/models/debug.py`): `[[sleep:S]]` keeps the model busy, `[[fail]]` is a poison input,
`[[crash]]` kills a batch collector. Figures worth reporting are printed (`pytest -s` shows them).

These tests assert behaviour only: what each caller gets, what the counters say, that nothing is
left queued or open. They wait on conditions (/health, /metrics, the log), never on timers. How fast
it all happens (probe latency under a burst, memory after 10,000 disconnects, deadlines to the
millisecond) is asserted in tests/test_soak.py, which `make soak` runs and `make test` does not.
"""

from __future__ import annotations

import random
import re
import socket
import struct
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import trio

from tests.serverproc import (
    ProbeLoop,
    ProbeResult,
    Response,
    ServerProcess,
    get,
    json_request,
    metrics,
    post_json,
    read_response,
    wait_until,
)
from trio_infer.models.debug import DebugEmbedder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DIMENSION = 384
# The batcher series of the one model a ServerProcess serves (MODEL_NAME=debug).
REQUESTS = 'batcher_requests_total{model="debug",priority="interactive",status="%s"}'
SKIPPED = 'batcher_skipped_total{model="debug",priority="interactive"}'
BATCH_SIZE_SUM = 'batcher_batch_size_sum{model="debug"}'
BATCH_SIZE_COUNT = 'batcher_batch_size_count{model="debug"}'
QUEUE_SIZE = 'batcher_queue_size{model="debug",priority="interactive"}'
INFLIGHT_BATCHES = 'batcher_inflight_batches{model="debug"}'
# How long a `[[sleep:HOLD]]` text keeps the model busy: long enough that everything a test does
# meanwhile (open dozens of connections, poll /health) fits in it on a loaded 2-core machine.
HOLD = 6.0
# A bound for conditions that take milliseconds on a quiet machine: far above any load's delay.
WAIT = 30.0


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """Starts servers with the given flags and environment; stops them after the test."""
    servers: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(args=("--debug-faults", *args), env=env or {})
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.__exit__()


async def wait_for(
    check: Callable[[], Awaitable[bool]], limit: float = WAIT, what: str = "condition"
) -> None:
    await wait_until(check, limit, what)


async def health(port: int) -> dict[str, Any]:
    body: dict[str, Any] = (await get(port, "/health")).json()
    return body


async def model_busy(port: int) -> bool:
    return bool((await health(port))["inflight_batches"] == 1)


async def hold_the_model(port: int, seconds: float = HOLD) -> Response:
    """A request whose forward pass keeps the model busy for `seconds`; returns its answer (a 200)."""
    response = await post_json(
        port, "/embed", {"input_text": f"[[sleep:{seconds}]] hold the model"}, limit=seconds + WAIT
    )
    assert response.status == 200, response
    return response


def delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def assert_error(response: Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status == status, (response.status, response.body[:300])
    body: dict[str, Any] = response.json()
    assert body["error"] == kind, body
    assert isinstance(body["detail"], str)
    assert b"Traceback" not in response.body
    return body


def no_tracebacks(server: ServerProcess) -> None:
    log = server.log()
    assert "Traceback" not in log, log[max(0, log.find("Traceback") - 300) :][:5000]


# -- 2. overload ----------------------------------------------------------------------------------------

BURST = 200  # `make test`; tests/test_soak.py sends 400
BURST_QUEUE = 32  # --max-queue-size of the burst tests: far below the burst
BURST_HOLDS = (HOLD, 2 * HOLD, 4 * HOLD)  # a longer hold when the burst outlasted the previous one


@dataclass
class Burst:
    """One burst's outcome: statuses, how many 503s arrived while the model was still held,
    client-side problems, the probes and the burst's duration."""

    size: int
    statuses: Counter[int]
    refused_while_held: int
    problems: list[str]
    probes: list[ProbeResult]
    elapsed: float

    @property
    def worst_probe(self) -> float:
        return max(probe.latency for probe in self.probes)

    def summary(self) -> str:
        latencies = sorted(probe.latency for probe in self.probes)
        return (
            f"burst of {self.size} in {self.elapsed:.2f} s: {dict(sorted(self.statuses.items()))}, "
            f"{self.refused_while_held} refused while the model was held; "
            f"{len(self.probes)} probes, worst {self.worst_probe * 1e3:.1f} ms, "
            f"median {latencies[len(latencies) // 2] * 1e3:.1f} ms"
        )


async def _burst(port: int, size: int, hold: float) -> Burst:
    """`size` concurrent requests while a `[[sleep:hold]]` request keeps the model busy and a probe
    loop runs in another process."""
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    held = True
    refused_while_held = 0

    async def holder() -> None:
        nonlocal held
        await hold_the_model(port, hold)
        held = False

    async def one(i: int) -> None:
        nonlocal refused_while_held
        headers = {"X-Request-Timeout": "0.5"} if i % 4 == 0 else {}
        try:
            response = await post_json(port, "/embed", {"input_text": f"burst text {i}"}, headers, limit=WAIT)
        except Exception as error:  # a reset, a hang, a malformed answer: all failures
            problems.append(f"request {i}: {error!r}")
            return
        statuses[response.status] += 1
        if response.status == 200:
            assert len(response.json()["embedding"]) == DIMENSION
        elif response.status == 503:
            if held:
                refused_while_held += 1
            assert_error(response, 503, "overloaded")
            retry_after = response.headers.get("retry-after", "")
            assert retry_after.isdigit() and 1 <= int(retry_after) <= 60, response.headers
        elif response.status == 504:
            assert_error(response, 504, "timeout")
        else:
            problems.append(f"request {i}: unexpected {response.status} {response.body[:200]!r}")

    probes = await trio.to_thread.run_sync(ProbeLoop(port).start)
    started = time.perf_counter()
    try:
        with trio.fail_after(hold + 2 * WAIT):  # a hang guard, not a performance bound
            async with trio.open_nursery() as nursery:
                nursery.start_soon(holder)
                await wait_for(lambda: model_busy(port), what="the model to be busy")
                for i in range(size):
                    nursery.start_soon(one, i)
    finally:
        elapsed = time.perf_counter() - started
        results = await trio.to_thread.run_sync(probes.stop)
    return Burst(size, statuses, refused_while_held, problems, results, elapsed)


async def burst_and_check(port: int, size: int = BURST) -> list[Burst]:
    """Bursts (see `_burst`) and what must hold whatever the machine's speed: every request answered
    200/503/504 with no resets, each outcome counted, every probe answered; and, while the model is
    held, most of the burst refused at once. A loaded machine may still be sending the burst when the
    hold ends (then late requests are rightly served): such a run is repeated with a longer hold."""
    bursts = []
    for hold in BURST_HOLDS:
        before = await metrics(port)
        burst = await _burst(port, size, hold)
        after = await metrics(port)
        bursts.append(burst)
        print(f"\n{burst.summary()}")
        statuses = burst.statuses
        assert not burst.problems, burst.problems[:10]
        assert sum(statuses.values()) == size and set(statuses) <= {200, 503, 504}, statuses
        assert delta(after, before, REQUESTS % "rejected") == statuses[503]
        assert delta(after, before, REQUESTS % "success") == statuses[200] + 1  # + the model holder
        assert delta(after, before, REQUESTS % "timeout") == statuses[504]
        # Probes kept being answered during the burst (how fast is a soak figure).
        not_ok = [probe for probe in burst.probes if probe.status != 200]
        assert not not_ok, not_ok[:5]
        assert len(burst.probes) >= 3, len(burst.probes)
        # Far beyond capacity while the model is held: most are refused at once.
        if burst.refused_while_held >= size // 2:
            return bursts
        await wait_for(lambda: _idle(port), what="an empty queue before the next burst")
    summaries = "; ".join(burst.summary() for burst in bursts)
    raise AssertionError(f"fewer than half of each burst refused while the model was held: {summaries}")


async def warm_up(port: int, count: int) -> None:
    for i in range(count):
        assert (await post_json(port, "/embed", {"input_text": f"warm-up {i}"})).status == 200


async def back_to_normal(server: ServerProcess, fds_before: int) -> None:
    """After a burst: nothing queued, normal service, the server's connections closed again."""
    port = server.port
    await wait_for(lambda: _idle(port), what="an empty queue")
    for i in range(20):
        assert (await post_json(port, "/embed", {"input_text": f"after the burst {i}"})).status == 200
    await wait_for(lambda: _fds_at_most(server, fds_before + 2), what="connections to close")


async def test_burst_beyond_capacity_is_shed_while_probes_are_answered(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--max-queue-size", str(BURST_QUEUE))
    await warm_up(server.port, 30)
    fds_before = server.open_fds()
    await burst_and_check(server.port)
    await back_to_normal(server, fds_before)
    no_tracebacks(server)


async def _idle(port: int) -> bool:
    body = await health(port)
    return bool(body["queue_size"] == 0 and body["inflight_batches"] == 0)


async def _fds_at_most(server: ServerProcess, limit: int) -> bool:
    return server.open_fds() <= limit


# -- 3. callers who leave -------------------------------------------------------------------------------


async def test_callers_who_disconnect_are_never_computed(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    port = server.port
    leavers = 30
    before = await metrics(port)
    async with trio.open_nursery() as nursery:
        hold: list[Response] = []

        async def holder() -> None:
            hold.append(await hold_the_model(port))

        nursery.start_soon(holder)
        await wait_for(lambda: model_busy(port), what="the model to be busy")
        streams = []
        for i in range(leavers):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(json_request("/embed", {"input_text": f"a caller who leaves {i}"}))
            streams.append(stream)
        await wait_for(lambda: _queued(port, leavers), what="every leaver to be admitted")
        for stream in streams:
            await stream.aclose()
        # Withdrawn while the model is still busy: nothing waits for their results.
        await wait_for(lambda: _queued(port, 0), what="the leavers' texts to be withdrawn")
        assert await model_busy(port), f"the {HOLD} s hold ended before the leavers were withdrawn"
    assert hold[0].status == 200
    await wait_for(lambda: _skipped(port, before, leavers), what="the collectors to skip the leavers")
    after = await metrics(port)
    print(f"\n{leavers} callers left; texts computed: {delta(after, before, BATCH_SIZE_SUM):.0f}")
    assert delta(after, before, REQUESTS % "cancelled") == leavers
    assert delta(after, before, SKIPPED) == leavers
    assert delta(after, before, BATCH_SIZE_SUM) == 1  # only the holder's text was computed
    assert delta(after, before, BATCH_SIZE_COUNT) == 1
    assert delta(after, before, REQUESTS % "success") == 1
    assert after[QUEUE_SIZE] == 0
    no_tracebacks(server)


async def _queued(port: int, count: int) -> bool:
    return bool((await health(port))["queue_size"] == count)


async def _skipped(port: int, before: dict[str, float], count: int) -> bool:
    return delta(await metrics(port), before, SKIPPED) >= count


DEADLINE = 0.3  # X-Request-Timeout of the impatient callers


async def expired_deadlines(server: ServerProcess, callers: int = 10) -> list[Response]:
    """`callers` requests with a DEADLINE s X-Request-Timeout queue behind a `[[sleep:HOLD]]` pass.
    Each gets its 504 while the model is still busy (on its own deadline, not when the model frees
    up) and its text is never computed. Returns their responses."""
    port = server.port
    before = await metrics(port)
    results: list[Response] = []
    holder_answered = trio.Event()

    async def holder() -> None:
        await hold_the_model(port)
        holder_answered.set()

    async def impatient(i: int) -> None:
        headers = {"X-Request-Timeout": str(DEADLINE)}
        response = await post_json(port, "/embed", {"input_text": f"impatient {i}"}, headers)
        assert not holder_answered.is_set(), f"a 504 came after the {HOLD} s pass, not on its deadline"
        results.append(response)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await wait_for(lambda: model_busy(port), what="the model to be busy")
        for i in range(callers):
            nursery.start_soon(impatient, i)
    assert len(results) == callers
    for response in results:
        assert_error(response, 504, "timeout")
        assert response.elapsed >= DEADLINE, response.elapsed  # not before the deadline either
    await wait_for(lambda: _skipped(port, before, callers), what="the collectors to skip them")
    after = await metrics(port)
    assert delta(after, before, REQUESTS % "timeout") == callers
    assert delta(after, before, SKIPPED) == callers
    assert delta(after, before, BATCH_SIZE_SUM) == 1  # only the holder's text
    no_tracebacks(server)
    return results


async def test_expired_deadlines_get_504_and_are_never_computed(
    start_server: Callable[..., ServerProcess],
) -> None:
    await expired_deadlines(start_server())


STORM = 1_000  # `make test`; tests/test_soak.py sends 10,000 and checks the memory afterwards
STORM_CONCURRENCY = 64
_KINDS = (
    "connect only",
    "part of the headers",
    "part of the body",
    "whole request",
    "whole request, then wait",
    "reset",
    "complete",
)


async def _storm_client(port: int, i: int, rng: random.Random, outcomes: Counter[str]) -> None:
    kind = rng.choice(_KINDS)
    raw = json_request("/embed", {"input_text": f"storm text {i} " + "word " * rng.randrange(1, 40)})
    head_end = raw.index(b"\r\n\r\n") + 4
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        if kind == "part of the headers":
            await stream.send_all(raw[: rng.randrange(1, head_end)])
        elif kind == "part of the body":
            await stream.send_all(raw[: rng.randrange(head_end, len(raw))])
        elif kind in ("whole request", "whole request, then wait", "reset", "complete"):
            await stream.send_all(raw)
        # The sleeps below are client behaviour (how long a caller stays), not synchronisation.
        if kind == "whole request, then wait":
            await trio.sleep(rng.uniform(0, 0.05))
        elif kind == "reset":  # an abortive close: the server sees a RST, not a FIN
            await trio.sleep(rng.uniform(0, 0.02))
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif kind == "complete":
            response = await read_response(stream)
            assert response.status in (200, 503, 504), response
        outcomes[kind] += 1
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError) as error:
        outcomes[f"{kind}: {type(error).__name__}"] += 1
    finally:
        await stream.aclose()


@dataclass
class Storm:
    elapsed: float
    rss_growth_mib: float


async def disconnect_storm(server: ServerProcess, clients: int) -> Storm:
    """`clients` clients that connect and leave at every stage of a request (64 at a time) while short
    forward passes keep the model busy now and then. Afterwards nothing is queued, the connections and
    threads are back where they were and the server still answers. Returns the figures."""
    port = server.port
    for i in range(50):
        assert (await post_json(port, "/embed", {"input_text": f"warm-up {i}"})).status == 200
    rss_before, fds_before, threads_before = server.rss_kib(), server.open_fds(), server.threads()
    before = await metrics(port)
    outcomes: Counter[str] = Counter()
    indices = iter(range(clients))
    done = trio.Event()

    async def keep_the_model_busy() -> None:
        # Short forward passes now and then, so many callers leave while their texts are queued.
        count = 0
        while not done.is_set():
            await post_json(port, "/embed", {"input_text": f"[[sleep:0.05]] busy {count}"})
            count += 1
            await trio.sleep(0.05)  # pacing, not synchronisation

    async def client_loop() -> None:
        for i in indices:  # shared: STORM_CONCURRENCY of these run at once
            await _storm_client(port, i, random.Random(i), outcomes)

    started = time.perf_counter()
    with trio.fail_after(60 + clients / 10):  # a hang guard, not a performance bound
        async with trio.open_nursery() as outer:
            outer.start_soon(keep_the_model_busy)
            async with trio.open_nursery() as nursery:
                for _ in range(STORM_CONCURRENCY):
                    nursery.start_soon(client_loop)
            done.set()
    elapsed = time.perf_counter() - started

    await wait_for(lambda: _idle(port), what="an empty queue and an idle model")
    await wait_for(lambda: _fds_at_most(server, fds_before + 2), limit=2 * WAIT, what="connections to close")
    after = await metrics(port)
    growth_mib = (server.rss_kib() - rss_before) / 1024
    print(
        f"\n{clients} clients in {elapsed:.1f} s; cancelled {delta(after, before, REQUESTS % 'cancelled'):.0f}, "
        f"skipped {delta(after, before, SKIPPED):.0f}, "
        f"success {delta(after, before, REQUESTS % 'success'):.0f}; RSS growth {growth_mib:.1f} MiB, "
        f"fds {fds_before}->{server.open_fds()}, threads {threads_before}->{server.threads()}"
    )
    assert sum(outcomes.values()) == clients
    assert after[QUEUE_SIZE] == 0 and after[INFLIGHT_BATCHES] == 0
    assert delta(after, before, REQUESTS % "cancelled") > 0  # callers did leave while queued
    assert server.threads() <= threads_before + 4
    assert (await post_json(port, "/embed", {"input_text": "still serving"})).status == 200
    no_tracebacks(server)
    return Storm(elapsed, growth_mib)


async def test_disconnecting_clients_leave_nothing_behind(start_server: Callable[..., ServerProcess]) -> None:
    await disconnect_storm(start_server("--log-level", "warning"), STORM)


# -- 4. faults -------------------------------------------------------------------------------------------


async def test_model_error_is_a_generic_500_logged_with_the_request_id(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    request_id = f"poison-{uuid.uuid4().hex}"
    response = await post_json(
        server.port, "/embed", {"input_text": "[[fail]] poison"}, {"X-Request-ID": request_id}
    )
    body = assert_error(response, 500, "inference_error")
    assert body["detail"] == "inference failed; see the server log"
    assert b"DebugModelError" not in response.body and b"[[fail]]" not in response.body
    assert response.headers["x-request-id"] == request_id
    log = server.log()
    logged = [line for line in log.splitlines() if request_id in line]
    assert any("failed" in line for line in logged), logged
    assert "DebugModelError: [[fail]] marker" in log  # the cause, with its stack trace, is in the log
    assert (await post_json(server.port, "/embed", {"input_text": "healthy again"})).status == 200


async def test_poison_input_fails_alone_and_its_batch_mates_succeed(
    start_server: Callable[..., ServerProcess],
) -> None:
    # One collector: the eight texts that queue behind the busy model go into one round, one batch.
    server = start_server("--num-batching-workers", "1")
    port = server.port
    before = await metrics(port)
    good_texts = [f"a good text {i}" for i in range(7)]
    results: dict[str, Response] = {}

    async def send(request_id: str, text: str) -> None:
        results[request_id] = await post_json(
            port, "/embed", {"input_text": text}, {"X-Request-ID": request_id}
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold_the_model, port)
        await wait_for(lambda: model_busy(port), what="the model to be busy")
        nursery.start_soon(send, "poison-request", "[[fail]] a poison text")
        for i, text in enumerate(good_texts):
            nursery.start_soon(send, f"good-request-{i}", text)
        await wait_for(lambda: _queued(port, 8), what="all eight to queue behind the busy model")
        assert await model_busy(port), f"the {HOLD} s hold ended before all eight were queued"

    assert_error(results["poison-request"], 500, "inference_error")
    model = DebugEmbedder()
    for i, text in enumerate(good_texts):
        response = results[f"good-request-{i}"]
        assert response.status == 200, response
        assert np.allclose(response.json()["embedding"], (await model.embed([text], [[0]]))[0], atol=1e-6)
    # They really shared the failed forward pass: it named all of them; then the retry isolated the poison.
    failed_batches = re.findall(r"forward pass of (\d+) text\(s\) failed \(requests ([^)]*)\)", server.log())
    everyone = {"poison-request", *(f"good-request-{i}" for i in range(len(good_texts)))}
    assert ("8", ",".join(sorted(everyone))) in failed_batches, failed_batches
    after = await metrics(port)
    assert delta(after, before, REQUESTS % "error") == 1
    assert delta(after, before, REQUESTS % "success") == len(good_texts) + 1


HUNG_LIMITS = {"hung": 1.0, "queued": 1.0, "queued, short deadline": 0.4}  # each caller's time limit


async def hung_forward_pass(server: ServerProcess) -> dict[str, Response]:
    """A forward pass hangs for HOLD s (--watchdog-timeout 0.5, --request-timeout 1.0): /health and
    /ready turn 503 while it hangs; its caller and the two queued behind it get 504 while it still
    hangs; health comes back by itself when the pass ends. Returns the three answers."""
    port = server.port
    before = await metrics(port)
    results: dict[str, Response] = {}

    async def send(name: str, text: str, headers: dict[str, str] | None = None) -> None:
        results[name] = await post_json(port, "/embed", {"input_text": text}, headers)

    async def sick() -> bool:
        response = await get(port, "/health")
        return response.status == 503 and response.json()["status"] == "unhealthy"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, "hung", f"[[sleep:{HOLD}]] a forward pass that hangs")
        await wait_for(lambda: model_busy(port), what="the model to be busy")
        nursery.start_soon(send, "queued", "queued behind the hang")
        nursery.start_soon(
            send, "queued, short deadline", "queued, short deadline", {"X-Request-Timeout": "0.4"}
        )
        await wait_for(sick, what="/health to turn 503 past the watchdog limit")
        assert (await get(port, "/ready")).status == 503
    # Every caller is answered while the pass still hangs: on its own deadline, not the model's.
    assert await model_busy(port), f"the {HOLD} s pass ended before its callers got their 504"
    for name, limit in HUNG_LIMITS.items():
        assert_error(results[name], 504, "timeout")
        assert results[name].elapsed >= limit, (name, results[name].elapsed)
    # The pass ends; health comes back by itself.
    await wait_for(lambda: _healthy(port), limit=HOLD + WAIT, what="/health to recover")
    after = await metrics(port)
    assert delta(after, before, REQUESTS % "timeout") == 3
    assert delta(after, before, SKIPPED) == 2  # the hung text itself was computing
    assert (await post_json(port, "/embed", {"input_text": "healthy again"})).status == 200
    return results


async def test_hung_forward_pass_turns_health_503_and_callers_get_504_while_it_hangs(
    start_server: Callable[..., ServerProcess],
) -> None:
    await hung_forward_pass(start_server("--watchdog-timeout", "0.5", "--request-timeout", "1.0"))


async def _healthy(port: int) -> bool:
    return (await get(port, "/health")).status == 200


async def test_crashing_collector_ends_the_process_with_a_clear_log_line(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    port = server.port
    outcomes: list[str] = []

    async def send(text: str) -> None:
        try:
            response = await post_json(port, "/embed", {"input_text": text}, limit=WAIT)
            outcomes.append(str(response.status))
        except (OSError, trio.BrokenResourceError, ConnectionError) as error:
            outcomes.append(type(error).__name__)

    with trio.fail_after(2 * WAIT):  # no caller hangs: each gets an answer or a closed connection
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, "[[crash]] a bug in a collector")
            nursery.start_soon(send, "an innocent bystander")
    assert server.proc is not None
    code = await trio.to_thread.run_sync(lambda: server.proc.wait(2 * WAIT) if server.proc else None)
    log = server.log()
    assert code not in (0, None), (code, log[-3000:])
    fatal = [line for line in log.splitlines() if "CRITICAL" in line and "fatal" in line]
    assert fatal and "CollectorCrash" in fatal[0], log[-3000:]
    print(f"\ncollector crash: exit code {code}; callers got {outcomes}; log: {fatal[0][:160]}")


# -- 7. API key ------------------------------------------------------------------------------------------

API_KEY = "s3cret-key-for-tests"


@pytest.mark.parametrize("how", ["flag", "env"])
async def test_api_key_guards_inference_routes_only(
    start_server: Callable[..., ServerProcess], how: str
) -> None:
    server = start_server("--api-key", API_KEY) if how == "flag" else start_server(env={"API_KEY": API_KEY})
    port = server.port
    good = {"Authorization": f"Bearer {API_KEY}"}
    model = (await get(port, "/v1/models", good)).json()["data"][0]["id"]
    embed_body = {"input_text": "hello"}
    openai_body = {"model": model, "input": "hello"}

    wrong: Sequence[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {API_KEY}x"},
        {"Authorization": f"Bearer {API_KEY[:-1]}"},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": API_KEY},
        {"X-API-Key": API_KEY},
    ]
    for headers in wrong:
        assert_error(await post_json(port, "/embed", embed_body, headers), 401, "unauthorized")
        response = await post_json(port, "/v1/embeddings", openai_body, headers)
        assert response.status == 401 and response.json()["error"]["type"] == "authentication_error", response
        assert (await get(port, "/v1/models", headers)).status == 401
    # Paths that merely mention an open route are not open.
    for path in ["/health/../embed", "//embed", "/embed?next=/health", "/metrics/../embed"]:
        assert (await post_json(port, path, embed_body)).status in (401, 404)

    assert (await post_json(port, "/embed", embed_body, good)).status == 200
    assert (await post_json(port, "/embed", embed_body, {"Authorization": f"bearer {API_KEY}"})).status == 200
    assert (await post_json(port, "/v1/embeddings", openai_body, good)).status == 200
    assert (await get(port, "/v1/models", good)).status == 200
    for path in ["/health", "/ready", "/metrics", "/openapi.json"]:
        assert (await get(port, path)).status == 200, path
    log = server.log()
    assert API_KEY not in log, "the key never reaches the log"
