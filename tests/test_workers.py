"""`--workers N`: a supervisor and N worker processes serving one listening socket it bound.

Real processes, real sockets, real signals (debug model). Every request goes over a fresh connection
(the raw client sends `Connection: close`), so whichever worker accepts first takes it. Which worker served what is read from the per-process metric files in our own
PROMETHEUS_MULTIPROC_DIR; `/metrics` must report their merged sum whichever worker answers it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest
import trio
from prometheus_client.multiprocess import MultiProcessCollector

from tests.crashing_worker import exit_at_once
from tests.serverproc import ROOT, ServerProcess, free_port, get, parse_metrics, post_json
from trio_infer.config import Settings
from trio_infer.runtime.listener import bind_listener
from trio_infer.runtime.workers import run_workers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

START_TIMEOUT = 120.0  # two interpreters importing quart & co. on a busy 2-core machine
STOP_TIMEOUT = 60.0
SUCCESS = 'batcher_requests_total{model="debug",priority="interactive",status="success"}'  # ServerProcess serves "debug"
SUCCESS_LABELS = {"model": "debug", "priority": "interactive", "status": "success"}
SERVER_ARGV = (sys.executable, "-m", "trio_infer")


# ------------------------------------------------------------------------------------------ helpers
def child_pids(pid: int) -> set[int]:
    """Live direct children of `pid` running a multiprocessing spawn worker (not its resource tracker)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == pid and state != "Z" and b"spawn_main" in cmdline:
            children.add(int(entry.name))
    return children


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition: Callable[[], bool], timeout: float, what: str, server: ServerProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    lines = [line for line in server.log().splitlines() if "trio_infer.http.access" not in line]
    raise AssertionError(
        f"timed out waiting for {what}; log without access lines:\n" + "\n".join(lines[-60:])
    )


def ready_lines(server: ServerProcess) -> int:
    return len(re.findall(r"trio_infer\.runtime\.serve: ready on", server.log()))


def successes_per_pid(metrics_dir: Path) -> dict[int, float]:
    """batcher_requests_total{model="debug",priority="interactive",status="success"} of each worker, from its
    own counter
    file."""
    counts: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for family in MultiProcessCollector.merge([str(path)], accumulate=True):
            for sample in family.samples:
                if sample.name == "batcher_requests_total" and sample.labels == SUCCESS_LABELS:
                    counts[pid] = counts.get(pid, 0.0) + sample.value
    return counts


async def send_embeds(port: int, count: int, *, concurrency: int = 8, tag: str = "") -> list[int]:
    """`count` POST /embed, each on its own connection; their statuses (0: connection error)."""
    statuses: list[int] = []
    limiter = trio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            try:
                response = await post_json(port, "/embed", {"input_text": f"{tag} text number {i}"})
            except (OSError, trio.BrokenResourceError):  # reset by a killed worker
                statuses.append(0)
                return
            statuses.append(response.status)

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    return statuses


async def merged_metrics(port: int) -> dict[str, float]:
    response = await get(port, "/metrics")
    assert response.status == 200
    return parse_metrics(response.body.decode())


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    path = tmp_path / "metrics"
    path.mkdir()
    (path / "counter_1.db").write_bytes(b"stale file of an earlier run")  # must be wiped at start
    return path


@pytest.fixture
def server(metrics_dir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        args=["--workers", "2", "--graceful-timeout", "10"],
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "LOG_LEVEL": "info"},
    )
    proc.start(timeout=START_TIMEOUT)  # (not `with proc.start()`: __enter__ would start a second one)
    try:
        wait_for(lambda: ready_lines(proc) >= 2, START_TIMEOUT, "both workers ready", proc)
        yield proc
    finally:
        proc.stop(timeout=STOP_TIMEOUT)
        proc.log_path.unlink(missing_ok=True)


def stop(server: ServerProcess) -> int:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    try:
        return server.proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"supervisor did not exit within {STOP_TIMEOUT} s; log:\n{server.log()[-5000:]}")


# ------------------------------------------------------------------------------------------- tests
async def test_requests_spread_over_two_workers_and_metrics_merge(
    server: ServerProcess, metrics_dir: Path
) -> None:
    workers = child_pids(server.pid)
    assert len(workers) == 2, server.log()
    assert not (metrics_dir / "counter_1.db").exists()

    sent = 200
    statuses = await send_embeds(server.port, sent)
    assert statuses == [200] * sent

    per_pid = successes_per_pid(metrics_dir)
    print(f"\nsuccessful /embed per worker pid: {per_pid}")
    assert set(per_pid) == workers
    assert all(count > 0 for count in per_pid.values()), per_pid
    assert sum(per_pid.values()) == sent

    # Whichever worker answers /metrics, it reports the sum over both.
    for _ in range(6):
        merged = await merged_metrics(server.port)
        assert merged[SUCCESS] == sent
        assert merged['http_requests_total{method="POST",route="/embed",status="200"}'] == sent
        assert merged["trio_infer_ready"] == 1
        assert merged['batcher_queue_size{model="debug",priority="interactive"}'] == 0

    assert stop(server) == 0, server.log()[-5000:]
    assert not any(alive(pid) for pid in workers)
    log = server.log()
    assert "all workers stopped; exit status 0" in log
    assert log.count("drained; exiting") == 2


async def test_killed_worker_is_restarted_and_service_keeps_answering(
    server: ServerProcess, metrics_dir: Path
) -> None:
    workers = child_pids(server.pid)
    assert len(workers) == 2
    assert await send_embeds(server.port, 40, tag="before") == [200] * 40

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    # The survivor keeps answering while the victim is down (connections that were waiting in the
    # victim's accept queue at the kill may be reset; nothing else may fail).
    during = await send_embeds(server.port, 40, tag="during")
    assert during.count(200) >= 30, during
    assert set(during) <= {200, 0}, during

    wait_for(lambda: ready_lines(server) >= 3, START_TIMEOUT, "the replacement worker", server)
    now = child_pids(server.pid)
    assert len(now) == 2 and victim not in now and (workers - {victim}) <= now, (workers, now)
    replacement = (now - workers).pop()
    log = server.log()
    assert f"(pid {victim}) exited unexpectedly: killed by SIGKILL" in log
    assert "restarting worker" in log

    after = await send_embeds(server.port, 200, tag="after")
    assert after == [200] * 200

    per_pid = successes_per_pid(metrics_dir)
    print(f"\nsuccessful /embed per worker pid (victim {victim}, replacement {replacement}): {per_pid}")
    assert per_pid.get(replacement, 0) > 0, per_pid
    total = 40 + during.count(200) + 200
    # The dead worker's counters still count in the merged view; its live gauges are gone.
    assert sum(per_pid.values()) == total
    assert (await merged_metrics(server.port))[SUCCESS] == total
    assert not any(
        path.name.endswith(f"_{victim}.db") for path in os.scandir(metrics_dir) if "live" in path.name
    )

    assert stop(server) == 0, server.log()[-5000:]
    assert not any(alive(pid) for pid in now)


def test_workers_die_with_a_killed_supervisor(server: ServerProcess) -> None:
    workers = child_pids(server.pid)
    assert len(workers) == 2
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(STOP_TIMEOUT)
    wait_for(lambda: not any(alive(pid) for pid in workers), STOP_TIMEOUT, "orphaned workers to exit", server)


def test_crash_loop_gives_up_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers that exit at once (a real spawned process each) make the supervisor give up with 1,
    leaving no worker, socket or temporary directory behind."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # run_workers would set it for the workers
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    listener = bind_listener("127.0.0.1", free_port())
    settings = Settings(workers=2, host="127.0.0.1")
    with caplog.at_level("INFO"):
        status = run_workers(settings, listener, worker_main=exit_at_once)
    assert status == 1
    assert "unexpected worker exits within 60 s: giving up" in caplog.text
    assert caplog.text.count("exited unexpectedly: exit status 3") == 5
    assert listener.fileno() == -1
    assert not list(tmp_path.glob("trio-infer-*")), "temporary directory left behind"
    assert not child_pids(os.getpid())


def listening_inode(port: int) -> str:
    """The inode of the socket listening on 127.0.0.1:`port` (from /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":  # 0A: LISTEN
            return fields[9]
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def test_workers_share_the_one_socket_the_supervisor_bound(server: ServerProcess) -> None:
    """One listening socket in the supervisor and every worker; no SO_REUSEPORT, so no other process
    can join the port (before, each worker bound its own socket with SO_REUSEPORT)."""
    workers = child_pids(server.pid)
    assert len(workers) == 2
    inode = listening_inode(server.port)
    for pid in (server.pid, *workers):
        assert inode in socket_inodes(pid), pid
    with socket.socket() as intruder:
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError):
            intruder.bind(("127.0.0.1", server.port))


async def test_worker_without_heartbeat_is_killed_and_replaced(metrics_dir: Path) -> None:
    """A stopped worker (as good as a wedged event loop: alive, port open, nothing answered) misses
    its heartbeats; the supervisor kills it and starts a replacement."""
    proc = ServerProcess(
        args=["--workers", "2", "--heartbeat-timeout", "5"],
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "LOG_LEVEL": "info"},
    )
    proc.start(timeout=START_TIMEOUT)
    victim: int | None = None
    try:
        wait_for(lambda: ready_lines(proc) >= 2, START_TIMEOUT, "both workers ready", proc)
        workers = child_pids(proc.pid)
        victim = min(workers)
        os.kill(victim, signal.SIGSTOP)
        wait_for(lambda: not alive(victim), START_TIMEOUT, "the silent worker to be killed", proc)
        wait_for(lambda: ready_lines(proc) >= 3, START_TIMEOUT, "the replacement worker", proc)
        log = proc.log()
        assert re.search(rf"\(pid {victim}\) sent no heartbeat for [\d.]+ s: killing it", log), log[-3000:]
        now = child_pids(proc.pid)
        assert len(now) == 2 and victim not in now
        assert await send_embeds(proc.port, 20, tag="after") == [200] * 20
        assert stop(proc) == 0, proc.log()[-5000:]
    finally:
        if victim is not None and alive(victim):
            os.kill(victim, signal.SIGCONT)
        proc.stop(timeout=STOP_TIMEOUT)
        proc.log_path.unlink(missing_ok=True)


def test_supervisor_does_not_import_prometheus_client() -> None:
    """PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is imported anywhere."""
    code = (
        "import sys, trio_infer.cli, trio_infer.runtime.workers; "
        "assert 'prometheus_client' not in sys.modules, 'imported too early'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
