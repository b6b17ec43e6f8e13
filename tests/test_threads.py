"""Inference threads fit the cgroup CPU quota (issue 10 point 8), read from fake cgroup trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trio_infer.models.threads import THREAD_VARIABLES, available_cpus, cgroup_cpu_limit, configure_threads


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def v2(tmp_path: Path) -> tuple[Path, Path]:
    """A cgroup v2 tree; the process sits in /kubepods/pod1/ctr."""
    root = tmp_path / "cgroup"
    proc = tmp_path / "proc_self_cgroup"
    write(proc, "0::/kubepods/pod1/ctr")
    (root / "kubepods" / "pod1" / "ctr").mkdir(parents=True)
    write(root / "cpu.max", "max 100000")
    return root, proc


def test_v2_quota_of_the_own_cgroup(v2: tuple[Path, Path]) -> None:
    root, proc = v2
    write(root / "kubepods" / "pod1" / "ctr" / "cpu.max", "250000 100000")
    assert cgroup_cpu_limit(root, proc) == 2.5


def test_v2_the_tightest_quota_above_applies(v2: tuple[Path, Path]) -> None:
    root, proc = v2
    write(root / "kubepods" / "pod1" / "ctr" / "cpu.max", "max 100000")
    write(root / "kubepods" / "pod1" / "cpu.max", "150000 100000")
    write(root / "kubepods" / "cpu.max", "800000 100000")
    assert cgroup_cpu_limit(root, proc) == 1.5


def test_v2_no_quota(v2: tuple[Path, Path]) -> None:
    root, proc = v2
    write(root / "kubepods" / "pod1" / "ctr" / "cpu.max", "max 100000")
    assert cgroup_cpu_limit(root, proc) is None


def test_v2_in_a_cgroup_namespace(tmp_path: Path) -> None:
    proc = tmp_path / "proc_self_cgroup"
    write(proc, "0::/")
    write(tmp_path / "cgroup" / "cpu.max", "50000 100000")
    assert cgroup_cpu_limit(tmp_path / "cgroup", proc) == 0.5


def test_v1_quota(tmp_path: Path) -> None:
    proc = tmp_path / "proc_self_cgroup"
    write(proc, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc")
    mount = tmp_path / "cgroup" / "cpu,cpuacct"
    write(mount / "docker" / "abc" / "cpu.cfs_quota_us", "300000")
    write(mount / "docker" / "abc" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(tmp_path / "cgroup", proc) == 3.0


def test_v1_container_view_and_unlimited(tmp_path: Path) -> None:
    proc = tmp_path / "proc_self_cgroup"
    write(proc, "4:cpu,cpuacct:/docker/abc")
    mount = tmp_path / "cgroup" / "cpu,cpuacct"  # the container's own cgroup is the mount itself
    write(mount / "cpu.cfs_quota_us", "-1")
    write(mount / "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(tmp_path / "cgroup", proc) is None
    write(mount / "cpu.cfs_quota_us", "200000")
    assert cgroup_cpu_limit(tmp_path / "cgroup", proc) == 2.0


def test_no_cgroup_files_at_all(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path / "none", tmp_path / "missing") is None


def test_available_cpus_is_the_quota_rounded_down_within_the_affinity(v2: tuple[Path, Path]) -> None:
    root, proc = v2
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(root, proc) == affinity  # no quota: the affinity mask
    write(root / "kubepods" / "pod1" / "ctr" / "cpu.max", "150000 100000")
    assert available_cpus(root, proc) == 1
    write(root / "kubepods" / "pod1" / "ctr" / "cpu.max", "20000 100000")
    assert available_cpus(root, proc) == 1  # never 0
    write(root / "kubepods" / "pod1" / "ctr" / "cpu.max", "6400000 100000")
    assert available_cpus(root, proc) == affinity  # a quota above the mask changes nothing


def test_configure_threads_sets_every_variable_from_the_quota() -> None:
    env: dict[str, str] = {}
    assert configure_threads(env, cpus=2) == 2
    assert {name: env[name] for name in THREAD_VARIABLES} == dict.fromkeys(THREAD_VARIABLES, "2")


def test_an_operators_omp_num_threads_wins() -> None:
    env = {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "5"}
    assert configure_threads(env, cpus=2) == 3
    assert env["MKL_NUM_THREADS"] == "5" and env["OPENBLAS_NUM_THREADS"] == "3"
