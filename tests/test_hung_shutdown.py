"""A forward pass that hangs at shutdown cannot keep the process alive: a real server, a real SIGTERM."""

from __future__ import annotations

import signal

import trio

from tests.serverproc import ServerProcess, get, post_json

# DEBUG_FAULTS: the debug model obeys its `[[sleep:S]]` marker only when fault markers are enabled.
HANG = {"DEBUG_FAULTS": "1"}


async def test_a_pass_hung_at_shutdown_ends_the_process_non_zero_after_the_drain() -> None:
    proc = ServerProcess(args=["--graceful-timeout", "1", "--watchdog-timeout", "600"], env=HANG).start()
    try:
        answers: list[int] = []

        async def hung_request() -> None:
            response = await post_json(proc.port, "/embed", {"input_text": "[[sleep:3600]] hang"}, limit=120)
            answers.append(response.status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hung_request)
            with trio.fail_after(60):
                while (await get(proc.port, "/health")).json()["inflight_batches"] < 1:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            # Without the shutdown deadline the process waits for the pass for an hour.
            code = await trio.to_thread.run_sync(proc.proc.wait, 90)
        log = proc.log()
        assert code != 0, log
        assert answers == [503], log  # the caller was answered at the drain deadline, not reset
        assert "shutdown deadline passed" in log and "forward pass of 1 text(s)" in log
    finally:
        proc.stop()
