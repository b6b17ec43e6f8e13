"""Priority classes in a real server over real sockets: a bulk flood is refused for bulk only."""

from __future__ import annotations

import pytest
import trio

from tests.serverproc import ServerProcess, metrics, post_json

pytestmark = pytest.mark.e2e


async def test_a_bulk_flood_gets_503s_while_interactive_requests_get_200() -> None:
    # The debug model with slow passes ([[sleep]] markers), and a small bulk bound: the flood fills it.
    args = ["--debug-faults", "--max-bulk-queue-size", "16", "--max-queue-size", "64"]
    statuses: dict[str, list[int]] = {"bulk": [], "interactive": []}
    retry_after: list[str] = []
    with ServerProcess(args=args) as server:

        async def bulk(i: int) -> None:
            texts = [f"[[sleep:0.05]] document {i}.{j}" for j in range(8)]
            response = await post_json(
                server.port, "/v1/embeddings", {"input": texts, "model": "debug"}, {"X-Priority": "bulk"}
            )
            statuses["bulk"].append(response.status)
            if response.status == 503:
                retry_after.append(response.headers.get("retry-after", ""))

        async def interactive(i: int) -> None:
            await trio.sleep(0.05 * i)
            response = await post_json(server.port, "/embed", {"input_text": f"query {i}"})
            statuses["interactive"].append(response.status)

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(bulk, i)
            for i in range(20):
                nursery.start_soon(interactive, i)
        after = await metrics(server.port)
    assert statuses["interactive"] == [200] * 20
    assert 503 in statuses["bulk"] and 200 in statuses["bulk"], statuses["bulk"]
    assert set(statuses["bulk"]) <= {200, 503}
    assert all(value.isdigit() and int(value) >= 1 for value in retry_after)
    rejected = 'batcher_requests_total{model="debug",priority="%s",status="rejected"}'
    assert after[rejected % "bulk"] == 8 * statuses["bulk"].count(503)
    assert after[rejected % "interactive"] == 0
