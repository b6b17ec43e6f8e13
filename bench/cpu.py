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


def pid_seconds(pid: int) -> float:
    """CPU seconds of a running process (utime + stime + reaped children) from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / _TICK


@dataclass
class Span:
    """CPU use over an interval: the server, this benchmark (and its children), and everything else."""

    server_pid: int
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

    def describe(self) -> str:
        s = self.seconds or 1.0
        return (
            f"CPU (cores): server {self.server / s:.2f}, load generator {self.bench / s:.2f}, "
            f"other processes {self.other / s:.2f}"
        )
