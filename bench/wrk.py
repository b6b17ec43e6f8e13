"""Run wrk against a server's POST /embed and parse its report."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

LUA_SCRIPT = Path(__file__).resolve().parent / "post.lua"

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass
class WrkResult:
    name: str
    command: str
    requests: int = 0
    rate: float = 0.0
    latency_avg: float | None = None
    latency_max: float | None = None
    percentiles: dict[int, float] = field(default_factory=dict)  # 50, 75, 90, 99 -> seconds
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    raw: str = ""

    @property
    def error_count(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    def quantile(self, q: float) -> float | None:
        return self.percentiles.get(round(q * 100))


def available() -> bool:
    return shutil.which("wrk") is not None


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unknown wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(name: str, command: str, out: str) -> WrkResult:
    res = WrkResult(name, command, raw=out)
    if m := re.search(r"Requests/sec:\s*([\d.]+)", out):
        res.rate = float(m.group(1))
    if m := re.search(r"(\d+) requests in", out):
        res.requests = int(m.group(1))
    if m := re.search(r"^\s*Latency\s+(\S+)\s+\S+\s+(\S+)", out, re.M):
        res.latency_avg, res.latency_max = _seconds(m.group(1)), _seconds(m.group(2))
    for pct, value in re.findall(r"^\s*(\d+)%\s+(\S+)\s*$", out, re.M):
        res.percentiles[int(pct)] = _seconds(value)
    if m := re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out):
        res.non_2xx = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        res.socket_errors = {
            k: int(v)
            for k, v in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True)
            if int(v)
        }
    return res


def run(name: str, port: int, duration: int, threads: int = 2, connections: int = 32) -> WrkResult:
    args = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        f"http://127.0.0.1:{port}/embed",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60, check=False)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}):\n{out}")
    return parse(name, " ".join(args[:-1]).replace(str(LUA_SCRIPT), "bench/post.lua") + " URL", out)
