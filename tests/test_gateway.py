"""The compose gateway: the repository's HAProxy config, checked statically and run for real.

The rolling-restart test starts Debian's `haproxy` with deploy/haproxy/haproxy.cfg rendered for local
ports (the lines marked "rendered": the listener, fast health checks, two local replicas instead of
Docker's DNS) in front of two real trio-infer processes (debug model). Under steady load it SIGTERMs
one replica, waits for it to exit, starts it again, waits until HAProxy routes to it, then does the
same to the other. Every request must get 200 with its own X-Request-ID back; none may be reset or
refused. Skipped with a reason where haproxy is absent (`.ci/run` installs it).
"""

from __future__ import annotations

import itertools
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
import trio

from tests.serverproc import ROOT, ServerProcess, free_port, json_request, request

CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
# The replicas' drain delay must outlast HAProxy noticing /ready turn 503 (2 checks 100 ms apart).
CHECK_INTERVAL = "100ms"
DRAIN_DELAY = "1.5"


def require_haproxy() -> str:
    if not Path(HAPROXY).exists():
        pytest.skip("no haproxy binary: install Debian's 'haproxy' package (.ci/run does)")
    return HAPROXY


def render(config: str, listen_port: int, replica_ports: list[int], stats_socket: Path) -> str:
    """The repository's config for local ports: each line marked `# rendered` is replaced."""
    lines = []
    for line in config.splitlines():
        if not line.rstrip().endswith("# rendered"):
            lines.append(line)
            continue
        directive = line.split()[0]
        indent = line[: len(line) - len(line.lstrip())]
        if directive == "bind":
            lines.append(f"{indent}bind 127.0.0.1:{listen_port}")
        elif directive == "default-server":
            lines.append(re.sub(r"inter \S+", f"inter {CHECK_INTERVAL}", line.split("#")[0]).rstrip())
        elif directive == "server-template":
            lines.extend(
                f"{indent}server replica{i} 127.0.0.1:{port} check" for i, port in enumerate(replica_ports, 1)
            )
        else:
            raise AssertionError(f"unknown rendered line: {line}")
    text = "\n".join(lines) + "\n"
    # An admin socket for the test to read the servers' states, and no Docker DNS.
    text = text.replace("global\n", f"global\n    stats socket {stats_socket} mode 600 level user\n", 1)
    return re.sub(r"\nresolvers docker\n(    .*\n)+", "\n", text)


def test_config_is_valid() -> None:
    proc = subprocess.run(
        [require_haproxy(), "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_config_routes_on_readiness_and_keeps_request_ids() -> None:
    config = CONFIG.read_text()
    assert "option httpchk GET /ready" in config
    assert "http-check expect status 200" in config
    assert "X-Request-ID" in config
    assert "server-template" in config and "resolvers docker" in config


def test_rendered_config_is_valid(tmp_path: Path) -> None:
    rendered = tmp_path / "haproxy.cfg"
    rendered.write_text(render(CONFIG.read_text(), 18080, [18001, 18002], tmp_path / "stats.sock"))
    proc = subprocess.run(
        [require_haproxy(), "-c", "-f", str(rendered)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr + rendered.read_text()


@dataclass
class Gateway:
    port: int
    stats_socket: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def server_states(self) -> dict[str, str]:
        """HAProxy's view of each replica: `UP`, `DOWN`, ..."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        states = {}
        for row in data.decode().splitlines():
            cells = row.split(",")
            if len(cells) > 17 and cells[0] == "trio-infer" and cells[1].startswith("replica"):
                states[cells[1]] = cells[17]
        return states

    def wait_state(self, server: str, state: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server_states().get(server, "").startswith(state):
                return
            time.sleep(0.05)
        raise AssertionError(f"{server} not {state} within {timeout} s: {self.server_states()}")


@pytest.fixture
def replicas() -> Iterator[list[ServerProcess]]:
    servers = [
        ServerProcess(args=["--drain-delay", DRAIN_DELAY, "--graceful-timeout", "10"]) for _ in range(2)
    ]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()
            server.log_path.unlink(missing_ok=True)


@pytest.fixture
def gateway(replicas: list[ServerProcess]) -> Iterator[Gateway]:
    binary = require_haproxy()
    folder = Path(tempfile.mkdtemp(prefix="haproxy-"))
    port = free_port()
    config = folder / "haproxy.cfg"
    config.write_text(render(CONFIG.read_text(), port, [r.port for r in replicas], folder / "stats.sock"))
    log_path = folder / "haproxy.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    gateway = Gateway(port, folder / "stats.sock", proc, log_path)
    try:
        deadline = time.monotonic() + 30
        while not gateway.stats_socket.exists():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "haproxy did not start"
            time.sleep(0.05)
        for index in range(1, len(replicas) + 1):
            gateway.wait_state(f"replica{index}", "UP")
        yield gateway
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Load:
    """Clients posting /embed through the gateway, one request after another each."""

    port: int
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    wrong_ids: list[str] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=itertools.count)

    async def client(self, stop: trio.Event) -> None:
        while not stop.is_set():
            request_id = f"roll-{next(self.ids)}"
            raw = json_request("/embed", {"input_text": f"text {request_id}"}, {"X-Request-ID": request_id})
            try:
                response = await request(self.port, raw, limit=30)
            except (OSError, ConnectionError, trio.TooSlowError) as error:
                self.failures.append(f"{request_id}: {error!r}")
                continue
            self.statuses[response.status] += 1
            if response.status != 200:
                self.failures.append(f"{request_id}: {response.status} {response.body[:200]!r}")
            elif response.headers.get("x-request-id") != request_id or "embedding" not in orjson.loads(
                response.body
            ):
                self.wrong_ids.append(request_id)


@pytest.mark.e2e
@pytest.mark.slow
async def test_rolling_restart_behind_haproxy_loses_no_request(
    replicas: list[ServerProcess], gateway: Gateway
) -> None:
    load = Load(gateway.port)
    per_phase: list[int] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(load.client, stop)
        await trio.sleep(1.0)  # steady load through both replicas first
        for index, replica in enumerate(replicas, 1):
            before = sum(load.statuses.values())
            proc = replica.proc
            assert proc is not None
            proc.terminate()  # SIGTERM: /ready turns 503, the listener closes DRAIN_DELAY s later
            code = await trio.to_thread.run_sync(proc.wait)
            assert code == 0, replica.log()
            await trio.to_thread.run_sync(replica.start)
            await trio.to_thread.run_sync(gateway.wait_state, f"replica{index}", "UP")
            await trio.sleep(0.5)  # let it take traffic before the next one goes
            per_phase.append(sum(load.statuses.values()) - before)
        stop.set()
    total = sum(load.statuses.values())
    print(f"rolling restart: {total} requests, statuses {dict(load.statuses)}, per restart {per_phase}")
    assert load.failures == [], load.failures[:10]
    assert load.wrong_ids == []
    assert load.statuses == Counter({200: total})
    assert all(count > 0 for count in per_phase), per_phase  # the load ran through every restart
    assert total >= 50
