"""`--api-keys-file` on a real server over real sockets: refused at start when malformed, re-read on a
real SIGHUP (os.kill) while a load of concurrent requests runs, with one worker and with two."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.serverproc import (
    ROOT,
    SETTINGS_ENV,
    ServerProcess,
    build_request,
    free_port,
    post_json,
    request,
    wait_until,
)

pytestmark = [pytest.mark.e2e]

START_TIMEOUT = 120.0  # two worker interpreters importing quart & co. on a busy 2-core machine
KEYS = """\
# name  key          class
alice   alice-key
bob     bob-key      bulk
"""
RELOADED = """\
alice   alice-key
carol   sha256:{carol}  bulk
"""


def carol_line() -> str:
    return RELOADED.format(carol=hashlib.sha256(b"carol-key").hexdigest())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def status_of(port: int, key: str, path: str = "/embed") -> int:
    """The status of one request with `key`, over a fresh connection (with --workers, whichever
    worker accepts it answers)."""
    payload = {"input_text": "who am I"} if path == "/embed" else {"model": "debug", "input": ["who am I"]}
    return (await post_json(port, path, payload, bearer(key))).status


def reloads(server: ServerProcess, word: str) -> int:
    return server.log().count(word)


async def sighup_and_wait(server: ServerProcess, workers: int, word: str) -> None:
    """SIGHUP to the server (the supervisor with --workers) and wait until every worker logged `word`."""
    before = reloads(server, word)
    os.kill(server.pid, signal.SIGHUP)

    async def logged() -> bool:
        return reloads(server, word) >= before + workers

    await wait_until(logged, 20.0, f"{workers} worker(s) logging {word!r}")


@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_reloads_the_keys_under_load_without_losing_a_request(
    tmp_path: Path, workers: int
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(KEYS)
    args = ("--api-keys-file", str(keys), "--workers", str(workers))
    with ServerProcess(args=args).start(timeout=START_TIMEOUT) as server:
        port = server.port
        assert await status_of(port, "bob-key") == 200
        assert await status_of(port, "carol-key") == 401

        clients, per_client = 8, 25
        statuses: list[int] = []
        reloaded = trio.Event()
        unanswered: list[int] = []  # requests still to be answered when the first SIGHUP went

        async def load(number: int) -> None:
            # Keep-alive connections stay open across the reloads: their next request meets the new keys.
            async with httpx.AsyncClient(
                base_url=server.base_url, headers=bearer("alice-key"), timeout=30
            ) as http:
                for index in range(per_client):
                    path, body = (
                        ("/embed", {"input_text": f"text {number}.{index}"})
                        if index % 2
                        else (
                            "/v1/embeddings",
                            {"model": "debug", "input": [f"text {number}.{index}", "two"]},
                        )
                    )
                    response = await http.post(path, json=body)
                    statuses.append(response.status_code)
                    if len(statuses) == clients * per_client // 3:
                        reloaded.set()

        async def reload_mid_load() -> None:
            await reloaded.wait()
            unanswered.append(clients * per_client - len(statuses))
            keys.write_text(carol_line())
            await sighup_and_wait(server, workers, "re-read")
            keys.write_text("alice alice-key\ncarol\n")  # malformed: the reload keeps the keys in force
            await sighup_and_wait(server, workers, "keeping the 2 callers in force")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reload_mid_load)
            for number in range(clients):
                nursery.start_soon(load, number)
        assert len(statuses) == clients * per_client
        assert set(statuses) == {200}  # no request lost, reset or refused by the reloads
        assert unanswered[0] > 0  # the reload ran while requests were in flight

        # From then on, over fresh connections (every worker): bob is gone, carol is in, alice stays,
        # and the malformed file changed nothing.
        for _ in range(10 * workers):
            assert await status_of(port, "bob-key") == 401
            assert await status_of(port, "carol-key", "/v1/embeddings") == 200
            assert await status_of(port, "alice-key") == 200

        assert server.stop() == 0
        log = server.log()
    assert log.count(f"re-read {keys}: 2 callers") == workers
    assert log.count(f"{keys} line 2: caller 'carol' has no key") == workers
    if workers > 1:
        assert "SIGHUP received: forwarding it to 2 workers" in log


async def test_sighup_without_a_keys_file_changes_nothing(tmp_path: Path) -> None:
    with ServerProcess(args=("--api-key", "k3y")) as server:
        await sighup_and_wait(server, 1, "no --api-keys-file to re-read")
        assert await status_of(server.port, "k3y") == 200
        assert await status_of(server.port, "other") == 401
        assert server.stop() == 0


async def test_an_unknown_priority_is_refused_from_the_head_before_the_body(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(KEYS)
    with ServerProcess(args=("--api-keys-file", str(keys))) as server:
        # The head promises a body that never comes: the answer cannot wait for it.
        headers = {
            **bearer("alice-key"),
            "X-Priority": "urgent",
            "Content-Type": "application/json",
            "Content-Length": "5000",
        }
        response = await request(
            server.port, build_request("POST", "/v1/embeddings", None, headers), limit=5.0
        )
        assert response.status == 400
        assert response.json()["error"]["param"] == "X-Priority"
        assert "interactive, bulk" in response.json()["error"]["message"]
        assert response.headers.get("connection") == "close"  # the body was left unread


def start_refused(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS_ENV}
    return subprocess.run(
        [sys.executable, "-m", "trio_infer", "--port", str(free_port()), *args],
        cwd=ROOT,
        env={**env, "MODEL_NAME": "debug", "BACKEND": "torch"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_malformed_keys_file_stops_the_start_naming_the_line(tmp_path: Path, workers: str) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# callers\nalice s3cret-one\nbob s3cret-two urgent\n")
    result = start_refused(["--api-keys-file", str(keys), "--workers", workers])
    assert result.returncode == 2
    output = (result.stdout + result.stderr).strip()
    assert len(output.splitlines()) == 1, output
    assert (
        f"--api-keys-file: {keys} line 3: caller 'bob': the priority must be one of interactive, bulk"
        in output
    )
    assert "s3cret" not in output  # keys are never echoed


def test_a_missing_keys_file_stops_the_start(tmp_path: Path) -> None:
    result = start_refused(["--api-keys-file", str(tmp_path / "absent")])
    assert result.returncode == 2
    assert "cannot read it" in result.stdout + result.stderr


def test_the_openai_sdk_sets_the_class_through_default_headers(tmp_path: Path) -> None:
    import openai

    keys = tmp_path / "keys.txt"
    keys.write_text(KEYS)
    with ServerProcess(args=("--api-keys-file", str(keys))) as server:
        base_url = f"{server.base_url}/v1"
        indexer = openai.OpenAI(
            base_url=base_url, api_key="bob-key", default_headers={"X-Priority": "bulk"}, max_retries=0
        )
        result = indexer.embeddings.create(model="debug", input=["doc 1", "doc 2"])
        assert [item.index for item in result.data] == [0, 1]
        wrong = openai.OpenAI(
            base_url=base_url, api_key="bob-key", default_headers={"X-Priority": "urgent"}, max_retries=0
        )
        with pytest.raises(openai.BadRequestError) as refused:
            wrong.embeddings.create(model="debug", input="a query")
        assert refused.value.param == "X-Priority"  # type: ignore[attr-defined]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base_url, api_key="nobody", max_retries=0).embeddings.create(
                model="debug", input="a query"
            )


def takes_sighup(pid: int) -> bool:
    """Whether process `pid` ignores or catches SIGHUP (its status's SigIgn/SigCgt masks)."""
    bit = 1 << (signal.SIGHUP - 1)
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    masks = dict(
        line.split(":\t", 1) for line in status.splitlines() if line.startswith(("SigIgn", "SigCgt"))
    )
    return any(int(mask, 16) & bit for mask in masks.values())


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_while_starting_never_ends_the_server(tmp_path: Path, workers: int) -> None:
    """SIGHUPs from the moment trio_infer's main handles them on (the supervisor's, before its
    workers even exist; a single process's, while its model loads) are ignored or reloaded, never
    the end of a process. (Before, the interpreter is still starting: a SIGHUP then ends it, as it
    would any program.)"""
    import threading
    import time

    keys = tmp_path / "keys.txt"
    keys.write_text(KEYS)
    server = ServerProcess(args=("--api-keys-file", str(keys), "--workers", str(workers)))
    ready = threading.Event()
    sent = 0

    def hang_up() -> None:
        nonlocal sent
        while server.proc is None or not takes_sighup(server.proc.pid):
            if ready.is_set():
                return
            time.sleep(0.001)
        while not ready.is_set():
            os.kill(server.pid, signal.SIGHUP)
            sent += 1
            time.sleep(0.02)

    thread = threading.Thread(target=hang_up)
    thread.start()
    try:
        server.start(timeout=START_TIMEOUT)
    finally:
        ready.set()
        thread.join()
    with server:
        assert sent > 0
        assert trio.run(status_of, server.port, "bob-key") == 200
        assert trio.run(status_of, server.port, "nobody") == 401
        assert server.stop() == 0, server.log()[-4000:]
