"""--cache-size: a size in bytes, refused at start when the caches cannot fit the cgroup's memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.serverproc import ROOT
from trio_infer.config import SettingError, Settings, Size, cache_over_limit, parse_settings
from trio_infer.models.cgroups import cgroup_memory_limit


@pytest.mark.parametrize(
    ("raw", "value"),
    [("0", 0), ("512MiB", 512 << 20), ("1G", 10**9), ("64 kib", 64 << 10), ("1000", 1000), ("2TiB", 2 << 40)],
)
def test_sizes_parse(raw: str, value: int) -> None:
    assert Size().parse(raw) == value


@pytest.mark.parametrize("raw", ["-1", "1.5.3", "10XB", "nan", "1.5G", "", "MiB", "inf"])
def test_bad_sizes_exit_2_with_one_line(raw: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "trio_infer", "--cache-size", raw], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "--cache-size" in run.stderr


def test_a_cache_larger_than_the_memory_limit_is_refused_naming_both() -> None:
    settings = parse_settings({"cache_size": "1GiB", "workers": "2"}, {})
    problem = cache_over_limit(settings, memory_limit=2 * 10**9)
    assert problem is not None
    assert str(1 << 30) in problem and str(2 * 10**9) in problem and "2 worker(s)" in problem
    assert cache_over_limit(settings, memory_limit=4 << 30) is None
    assert cache_over_limit(settings, memory_limit=None) is None
    assert cache_over_limit(Settings(cache_size=0), memory_limit=1) is None


def test_the_default_cache_size_fits_a_modest_pod() -> None:
    assert cache_over_limit(Settings(), memory_limit=1 << 30) is None


def cgroup_tree(tmp_path: Path, *, v2: str | None = None, v1: str | None = None) -> tuple[Path, Path]:
    root, proc = tmp_path / "cgroup", tmp_path / "proc_self_cgroup"
    lines = []
    if v2 is not None:
        own = root / "kubepods" / "pod1"
        own.mkdir(parents=True)
        (own / "memory.max").write_text(v2 + "\n")
        (root / "kubepods" / "memory.max").write_text("max\n")
        lines.append("0::/kubepods/pod1")
    if v1 is not None:
        own = root / "memory" / "docker" / "abc"
        own.mkdir(parents=True)
        (own / "memory.limit_in_bytes").write_text(v1 + "\n")
        (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
        lines.append("4:memory:/docker/abc")
    proc.write_text("\n".join(lines) + "\n")
    return root, proc


def test_memory_limit_from_cgroup_v2(tmp_path: Path) -> None:
    assert cgroup_memory_limit(*cgroup_tree(tmp_path, v2="2147483648")) == 2147483648


def test_memory_limit_from_cgroup_v1(tmp_path: Path) -> None:
    assert cgroup_memory_limit(*cgroup_tree(tmp_path, v1="1073741824")) == 1073741824


def test_no_memory_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(*cgroup_tree(tmp_path, v2="max")) is None
    assert cgroup_memory_limit(*cgroup_tree(tmp_path / "v1", v1="9223372036854771712")) is None


def test_setting_errors_are_setting_errors() -> None:
    with pytest.raises(SettingError, match="BULK_MIN_SHARE"):
        parse_settings({}, {"BULK_MIN_SHARE": "1.5"})
