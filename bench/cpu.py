"""CPU accounting, to tell how much of the 2 shared cores went to other processes during a run."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def system_busy() -> float:
    """CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / _TICK


def process_tree_self() -> float:
    """CPU seconds of this process plus its reaped children (e.g. a finished wrk)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


def pid_seconds(pid: int | None) -> float:
    """CPU seconds of a running process (utime + stime + reaped children) from /proc."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / _TICK


@dataclass
class Span:
    """CPU use over an interval: the server, this benchmark (and its children), and everything else."""

    server_pid: int | None  # None: no server (in-process runs)
    t0: float = 0.0
    busy0: float = 0.0
    self0: float = 0.0
    server0: float = 0.0
    seconds: float = 0.0
    server: float = 0.0
    bench: float = 0.0
    other: float = 0.0

    def __enter__(self) -> Span:
        self.t0, self.busy0 = time.perf_counter(), system_busy()
        self.self0, self.server0 = process_tree_self(), pid_seconds(self.server_pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        busy = system_busy() - self.busy0
        self.server = pid_seconds(self.server_pid) - self.server0
        self.bench = process_tree_self() - self.self0
        self.other = max(0.0, busy - self.server - self.bench)

    @property
    def other_cores(self) -> float:
        return self.other / (self.seconds or 1.0)

    def describe(self) -> str:
        s = self.seconds or 1.0
        if self.server_pid is None:
            return f"CPU (cores): this process {self.bench / s:.2f}, other processes {self.other_cores:.2f}"
        return (
            f"CPU (cores): server {self.server / s:.2f}, load generator {self.bench / s:.2f}, "
            f"other processes {self.other_cores:.2f}"
        )


def wait_quiet(max_wait: float, threshold: float = 0.15, window: float = 2.0, needed: int = 2) -> float:
    """Wait (up to ``max_wait`` s) until all processes together use under ``threshold`` cores for
    ``needed`` consecutive ``window``-second samples; return the last sample (cores busy)."""
    deadline = time.monotonic() + max_wait
    quiet = 0
    busy = 0.0
    while max_wait > 0:
        b0 = system_busy()
        time.sleep(window)
        busy = (system_busy() - b0) / window
        quiet = quiet + 1 if busy < threshold else 0
        if quiet >= needed or time.monotonic() >= deadline:
            break
    return busy
