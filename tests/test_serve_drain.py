"""`serve.main` run in this process with the debug model, stopped by a real SIGTERM to this process.

The same nurseries, lifecycle and hypercorn server as `python -m trio_infer`, without a subprocess:
`lifecycle.watch_signals` receives the signal, the drain answers what is in flight, and `main` returns.
The debug model's `[[sleep:S]]` markers keep a forward pass busy for S seconds, so the test knows which
requests are in flight when the signal arrives (it waits for that on /health, never on a timer).

Each test runs in a fresh pytest process of its own (`_in_own_process`): it sends SIGTERM to the process
that runs it and `main` freezes that process's garbage-collector heap, neither of which belongs in the
interpreter that hosts the rest of the suite (its browser driver, native inference libraries, ...).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from tests.serverproc import Response, free_port, get, post_json, wait_until
from trio_infer.config import DEBUG_MODEL, Settings
from trio_infer.runtime import serve

pytestmark = pytest.mark.e2e

LIMIT = 60.0  # a bound on the whole test, far above what it needs on a loaded 2-core machine


def debug_settings(**overrides: Any) -> Settings:
    """The debug model on a free port of 127.0.0.1; its `[[sleep:S]]` markers must be honoured."""
    return Settings(
        host="127.0.0.1", port=free_port(), model_name=DEBUG_MODEL, debug_faults=True, **overrides
    )


@pytest.fixture(autouse=True)
def _unfreeze_heap() -> Iterator[None]:
    """`main` freezes the garbage collector's view of the heap once ready; give this process it back."""
    yield
    gc.unfreeze()


async def _health(port: int) -> dict[str, Any]:
    body: dict[str, Any] = (await get(port, "/health")).json()
    return body


async def _ready(port: int) -> bool:
    try:
        return (await get(port, "/ready", limit=5)).status == 200
    except OSError:  # not listening yet
        return False


async def _refused(port: int) -> bool:
    try:
        await get(port, "/ready", limit=5)
    except OSError:
        return True
    return False


class Running:
    """`serve.main(settings)` as a task; `returned` is set when it returned normally."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.returned = trio.Event()

    async def run(self) -> None:
        await serve.main(self.settings)
        self.returned.set()


async def _send(port: int, text: str, into: dict[str, Response]) -> None:
    into[text] = await post_json(port, "/embed", {"input_text": text}, limit=LIMIT)


async def _hold_then_queue(
    nursery: trio.Nursery, port: int, holder: str, queued: list[str], answers: dict[str, Response]
) -> None:
    """Start `holder` (it must carry a sleep marker) and wait until its pass runs, then send `queued`
    and wait until every one of them is admitted and waiting behind it."""
    nursery.start_soon(_send, port, holder, answers)

    async def model_busy() -> bool:
        health = await _health(port)
        return bool(health["inflight_batches"] == 1 and health["queue_size"] == 0)

    await wait_until(model_busy, LIMIT, "the holder's forward pass to start")
    for text in queued:
        nursery.start_soon(_send, port, text, answers)

    async def all_queued() -> bool:
        health = await _health(port)
        return bool(health["inflight_batches"] == 1 and health["queue_size"] == len(queued))

    await wait_until(all_queued, LIMIT, f"{len(queued)} requests to queue behind the holder")


_CHILD = "TRIO_INFER_SERVE_DRAIN_CHILD"


def _in_own_process(test: str) -> bool:
    """In the suite's process: run `test` in a child pytest and check it passed; returns True then,
    and the caller returns at once. In that child: returns False, and the caller runs the test."""
    if os.environ.get(_CHILD):
        return False
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::{test}"],
        env={**os.environ, _CHILD: "1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert child.returncode == 0, child.stdout[-6000:] + child.stderr[-2000:]
    assert "1 passed" in child.stdout, child.stdout[-2000:]
    return True


def _logged(caplog: pytest.LogCaptureFixture, fragment: str) -> bool:
    return any(fragment in record.getMessage() for record in caplog.records)


async def test_sigterm_drains_every_request_in_flight_and_main_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if _in_own_process("test_sigterm_drains_every_request_in_flight_and_main_returns"):
        return
    caplog.set_level(logging.INFO, logger="trio_infer")
    settings = debug_settings(graceful_timeout=LIMIT)
    port = settings.port
    server = Running(settings)
    answers: dict[str, Response] = {}
    holder = "[[sleep:1]] the text in the forward pass when the signal arrives"
    queued = [f"queued text {i}" for i in range(20)]
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run)
            await wait_until(lambda: _ready(port), LIMIT, "the server to be ready")
            async with trio.open_nursery() as clients:
                await _hold_then_queue(clients, port, holder, queued, answers)
                os.kill(os.getpid(), signal.SIGTERM)

                async def signalled() -> bool:
                    return _logged(caplog, "SIGTERM received")

                await wait_until(signalled, LIMIT, "the signal to reach the lifecycle")
                # drain_delay 0: the listener closes at once; requests already received go on.
                await wait_until(lambda: _refused(port), LIMIT, "the listener to close")
            await server.returned.wait()

    assert sorted(answers) == sorted([holder, *queued])
    statuses = {text: response.status for text, response in answers.items()}
    assert set(statuses.values()) == {200}, statuses
    assert all(len(response.json()["embedding"]) == 384 for response in answers.values())
    assert _logged(caplog, "drained; exiting")
    assert await _refused(port)  # main returned: nothing listens any more


async def test_requests_left_at_the_graceful_timeout_get_503_and_main_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One text per forward pass. At the signal the holder's pass runs and ends in time (200); the next
    pass outlasts the graceful timeout, so its request and those still queued get 503, not a reset."""
    if _in_own_process("test_requests_left_at_the_graceful_timeout_get_503_and_main_returns"):
        return
    caplog.set_level(logging.INFO, logger="trio_infer")
    settings = debug_settings(graceful_timeout=3.0, max_batch_size=1, num_batching_workers=1)
    port = settings.port
    server = Running(settings)
    answers: dict[str, Response] = {}
    # The holder's pass ends 1 s after it starts, so before the drain deadline (signal + 3 s) whenever
    # the signal comes. Whichever queued text runs next ends 1 + 5 s after the holder's pass started:
    # past that deadline unless queueing the three behind the holder took over 3 s (the test waits for
    # them on /health, not a timer), and within 3 s after it, the grace a running model call gets
    # before shutdown gives up on it (then the process would exit non-zero).
    holder = "[[sleep:1]] finishes within the graceful timeout"
    left = [f"[[sleep:5]] left when the graceful timeout ends {i}" for i in range(3)]
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run)
            await wait_until(lambda: _ready(port), LIMIT, "the server to be ready")
            async with trio.open_nursery() as clients:
                await _hold_then_queue(clients, port, holder, left, answers)
                os.kill(os.getpid(), signal.SIGTERM)
            await server.returned.wait()

    assert answers[holder].status == 200, answers[holder]
    for text in left:
        response = answers[text]
        assert response.status == 503, (text, response.status, response.body)
        assert response.json()["error"] == "shutting_down", response.body
    assert _logged(caplog, "SIGTERM received") and _logged(caplog, "drained; exiting")
