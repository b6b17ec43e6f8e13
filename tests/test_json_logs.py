"""With `--log-format json`, every line the service writes is a JSON object, from the first to the
last, with the real model (whose libraries print progress bars and warnings of their own), in
`--workers` mode, through a clean SIGTERM shutdown. And the workers agree on one calibration."""

from __future__ import annotations

import signal
import time
from typing import Any

import orjson
import pytest
import trio

from tests.serverproc import ServerProcess, get

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

START_TIMEOUT = 900.0  # two real-model workers, loading one after the other, on a loaded 2-core host
STOP_TIMEOUT = 120.0


def entries(server: ServerProcess) -> list[dict[str, Any]]:
    parsed = []
    for number, line in enumerate(server.log().splitlines(), 1):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise AssertionError(f"line {number} is not JSON: {line!r}\n{server.log()[-3000:]}") from None
        assert isinstance(entry, dict), line
        parsed.append(entry)
    return parsed


def ready_workers(server: ServerProcess) -> set[int]:
    found = set()
    for line in server.log().splitlines():
        if '"ready on ' in line:
            found.add(orjson.loads(line)["worker"])
    return found


async def test_real_model_workers_log_only_json_and_share_one_calibration() -> None:
    server = ServerProcess(
        args=["--workers", "2", "--log-format", "json", "--graceful-timeout", "10"],
        env={"MODEL_NAME": "", "LOG_LEVEL": "info"},  # empty: unset, the bundled real model
    )
    server.start(timeout=START_TIMEOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while ready_workers(server) != {1, 2}:
            assert time.monotonic() < deadline, server.log()[-5000:]
            assert server.proc is not None and server.proc.poll() is None, server.log()[-5000:]
            await trio.sleep(0.5)
        budgets = {(await get(server.port, "/health")).json()["max_batch_tokens"] for _ in range(8)}
        assert len(budgets) == 1, budgets
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(STOP_TIMEOUT) == 0, server.log()[-5000:]
    finally:
        server.stop(timeout=STOP_TIMEOUT)
    lines = entries(server)
    assert all("worker" in entry for entry in lines), [e for e in lines if "worker" not in e]
    assert not [e for e in lines if e["level"] in ("warning", "error", "critical")], lines
    text = server.log()
    assert "leaked" not in text and "Loading weights" not in text
    calibrated = {
        entry["worker"]: entry["message"]
        for entry in lines
        if entry["message"].startswith("max batch tokens:")
    }
    (budget,) = budgets
    assert sorted(calibrated.values()) == [
        f"max batch tokens: {budget} (calibrated by the first worker)",
        f"max batch tokens: {budget} (calibrated)",
    ], calibrated
    server.log_path.unlink(missing_ok=True)
