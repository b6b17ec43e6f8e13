"""Start a server subprocess, wait for GET /ready, stop it with SIGTERM and check its exit status."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The rows that measure the model path send the corpus round and round: a cache would answer them
# (bench/cache_rows.py measures the cache itself), so those servers run without one.
NO_CACHE = ("--cache-size", "0")
REPO_ROOT = Path(__file__).resolve().parent.parent


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    exit_code: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise ServerError(
                f"{server.name} exited with {server.proc.returncode} before ready:\n{server.log_tail()}"
            )
        try:
            status, _ = server.get("/ready", timeout=2.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise ServerError(f"{server.name} not ready after {timeout:.0f} s ({last}):\n{server.log_tail()}")


def prebuild(timeout: float = 900.0) -> str | None:
    """`trio-infer export` with the default settings: builds the exported models and `auto`'s choice
    once, so servers started next (several at once, too) start from the cache. The problem, or None."""
    run = subprocess.run(
        [sys.executable, "-m", "trio_infer", "export"],
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return None if run.returncode == 0 else f"trio-infer export exited {run.returncode}: {run.stderr[-500:]}"


def stop(server: Server, timeout: float = 60.0) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.notes.append(f"did not exit {timeout:.0f} s after SIGTERM; killed")
            server.proc.kill()
            server.proc.wait()
    server.exit_code = server.proc.returncode
    if server.exit_code != 0:
        server.notes.append(f"exit code {server.exit_code} after SIGTERM (expected 0)")
    return server.exit_code


@contextmanager
def running(
    name: str,
    args: list[str],
    port: int,
    env: Mapping[str, str | None] | None = None,
    ready_timeout: float = 120.0,
) -> Iterator[Server]:
    """Run ``python <args>`` from the repo root; ``env`` values of None remove that variable."""
    RESULTS_DIR.mkdir(exist_ok=True)
    full_env = dict(os.environ)
    full_env["HF_HUB_OFFLINE"] = "1"
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    log_path = RESULTS_DIR / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(name, port, proc, log_path)
    try:
        _wait_ready(server, ready_timeout)
        yield server
    finally:
        stop(server)
