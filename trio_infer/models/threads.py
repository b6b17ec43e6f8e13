"""How many threads inference may use: the CPUs this process may really run on.

`os.cpu_count()` (and torch's default thread count) is the host's core count, but a container is
usually held to a CPU quota by its cgroup (`resources.limits.cpu` in Kubernetes, `--cpus` in Docker).
Running one compute thread per host core under a 2-CPU quota makes the threads take turns being
throttled, each forward pass far slower than with 2 threads. So the count is the smallest of: the
CPUs in the affinity mask, and the cgroup quota (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` over
`cpu.cfs_period_us`) of this process's cgroup and every cgroup above it, rounded down, at least 1.

An `OMP_NUM_THREADS` already in the environment wins (an operator's choice, or the share the
`--workers` supervisor gave each worker).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from .cgroups import CGROUP_ROOT, PROC_SELF_CGROUP, ancestors, own_cgroups, read

# Read by the OpenMP runtime (torch's intra-op pool), MKL, OpenBLAS and the tokenizers' rayon pool.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")


def _v2_quota(directory: Path) -> float | None:
    text = read(directory / "cpu.max")
    if text is None:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max":
        return None
    return int(quota) / int(period or "100000")


def _v1_quota(directory: Path) -> float | None:
    quota, period = read(directory / "cpu.cfs_quota_us"), read(directory / "cpu.cfs_period_us")
    if quota is None or period is None or int(quota) <= 0:
        return None
    return int(quota) / int(period)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """The CPU quota, in CPUs, of this process's cgroup and those above it; None when there is none."""
    groups = own_cgroups(proc_self_cgroup)
    quotas: list[float] = []
    if "" in groups:  # cgroup v2 (a v2-only host, or the unified part of a hybrid one)
        quotas += [q for d in ancestors(root, groups[""]) if (q := _v2_quota(d)) is not None]
    for controllers, relative in groups.items():
        if "cpu" in controllers.split(","):  # cgroup v1
            for mount in (root / controllers, root / "cpu", root / "cpu,cpuacct"):
                if mount.is_dir():
                    # the walk ends at the mount itself: in a container that is the container's cgroup
                    quotas += [q for d in ancestors(mount, relative) if (q := _v1_quota(d)) is not None]
                    break
    return min(quotas) if quotas else None


def available_cpus(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> int:
    """CPUs this process can use: the affinity mask, capped by the cgroup quota (rounded down, >= 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_limit(root, proc_self_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return cpus


def configure_threads(environ: MutableMapping[str, str] | None = None, cpus: int | None = None) -> int:
    """The inference thread count, also written to the thread variables not already set.

    Call before importing torch: the OpenMP runtime reads OMP_NUM_THREADS once, at start.
    """
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    count = _positive_int(env, "OMP_NUM_THREADS")
    if count is None:
        count = available_cpus() if cpus is None else cpus
    for name in THREAD_VARIABLES:
        env.setdefault(name, str(count))
    return count


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    try:
        value = int(env.get(name, ""))
    except ValueError:
        return None
    return value if value > 0 else None
