"""One log line per request carrying its request id; the optional JSON format."""

from __future__ import annotations

import orjson

from tests.serverproc import ServerProcess, post_json


async def test_json_log_line_per_request_with_request_id() -> None:
    proc = ServerProcess(args=["--log-format", "json"]).start()
    try:
        response = await post_json(proc.port, "/embed", {"input_text": "log me"}, {"X-Request-ID": "req-42"})
        assert response.status == 200
        assert response.headers["x-request-id"] == "req-42"
        generated = await post_json(proc.port, "/embed", {"input_text": ""})
        assert generated.status == 422
        generated_id = generated.headers["x-request-id"]
    finally:
        assert proc.stop() == 0
    entries = [orjson.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
    assert entries, proc.log()
    access = [entry for entry in entries if entry["logger"] == "trio_infer.http.access"]
    by_id = {entry["request_id"]: entry for entry in access}
    assert by_id["req-42"]["status"] == 200 and by_id["req-42"]["message"].startswith("POST /embed 200")
    assert by_id[generated_id]["status"] == 422
    assert all({"time", "level", "message"} <= set(entry) for entry in entries)


async def test_text_log_line_carries_the_request_id() -> None:
    proc = ServerProcess().start()
    try:
        await post_json(proc.port, "/embed", {"input_text": "log me"}, {"X-Request-ID": "text-7"})
    finally:
        proc.stop()
    lines = [line for line in proc.log().splitlines() if "request_id=text-7" in line]
    assert len(lines) == 1 and "POST /embed 200" in lines[0]
