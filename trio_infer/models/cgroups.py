"""What this process's cgroups allow it: where they are, and the memory limit.

A container's limits live in its cgroups (v2's unified hierarchy, or v1's per-controller mounts), for
this process's cgroup and every one above it; the tightest applies. Reading them is a few small
files under /sys, done once at start.
"""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 writes "no limit" as the largest page-aligned 64-bit value, not as "max".
_V1_UNLIMITED = 1 << 62


def read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def own_cgroups(proc_self_cgroup: Path) -> dict[str, str]:
    """Controller list -> cgroup path, from /proc/self/cgroup ("" is the v2 unified hierarchy)."""
    groups: dict[str, str] = {}
    for line in (read(proc_self_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            groups[parts[1]] = parts[2]
    return groups


def ancestors(root: Path, relative: str) -> list[Path]:
    """`root/relative` and each directory above it up to `root`."""
    path = root / relative.lstrip("/")
    found = [path]
    while path != root and root in path.parents:
        path = path.parent
        found.append(path)
    return found


def _bytes(text: str | None) -> int | None:
    if text is None or not text.isdigit():
        return None  # absent, or v2's "max"
    value = int(text)
    return None if value >= _V1_UNLIMITED else value


def cgroup_memory_limit(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> int | None:
    """The memory limit in bytes of this process's cgroup and those above it; None when there is none."""
    groups = own_cgroups(proc_self_cgroup)
    limits: list[int] = []
    if "" in groups:
        limits += [
            b for d in ancestors(root, groups[""]) if (b := _bytes(read(d / "memory.max"))) is not None
        ]
    for controllers, relative in groups.items():
        if "memory" in controllers.split(","):
            mount = root / "memory"
            if mount.is_dir():
                # the walk ends at the mount itself: in a container that is the container's cgroup
                found = (_bytes(read(d / "memory.limit_in_bytes")) for d in ancestors(mount, relative))
                limits += [b for b in found if b is not None]
    return min(limits) if limits else None


__all__ = ["CGROUP_ROOT", "PROC_SELF_CGROUP", "ancestors", "cgroup_memory_limit", "own_cgroups", "read"]
