"""A hung forward pass over real HTTP: /health says why, and at shutdown it cannot keep the process
alive. A real server, a real SIGTERM."""

from __future__ import annotations

import signal

import trio

from tests.serverproc import ServerProcess, get, post_json

# DEBUG_FAULTS: the debug model obeys its `[[sleep:S]]` marker only when fault markers are enabled.
HANG = {"DEBUG_FAULTS": "1"}


async def test_a_hung_pass_explains_health_and_ends_the_process_non_zero_after_the_drain() -> None:
    proc = ServerProcess(args=["--graceful-timeout", "1", "--watchdog-timeout", "1"], env=HANG).start()
    try:
        answers: list[int] = []

        async def hung_request() -> None:
            response = await post_json(proc.port, "/embed", {"input_text": "[[sleep:3600]] hang"}, limit=120)
            answers.append(response.status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hung_request)
            with trio.fail_after(60):
                while (health := await get(proc.port, "/health")).status != 503:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            # The watchdog tripped: /health says why, and the log says so once.
            assert health.json()["inflight_batches"] == 1
            assert "forward pass of 1 text(s) has run" in health.json()["reason"]
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            # Without the shutdown deadline the process waits for the pass for an hour.
            code = await trio.to_thread.run_sync(proc.proc.wait, 90)
        log = proc.log()
        assert code != 0, log
        assert answers == [503], log  # the caller was answered at the drain deadline, not reset
        assert "shutdown deadline passed" in log and "forward pass of 1 text(s)" in log
        assert log.count("watchdog: a forward pass") == 1, log
    finally:
        proc.stop()
