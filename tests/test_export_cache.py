"""The export cache: atomic publication, reuse, corruption, crashes and concurrent builders.

The generic cache is driven with cheap builders; `test_backends.py` drives it with real exports.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from trio_infer.models.export_cache import CorruptEntry, ensure_entry, load_entry, verify

NAME = "model-onnx-none-0123456789abcdef"


def _build(directory: Path, payload: bytes = b"weights" * 1000) -> None:
    (directory / "model.bin").write_bytes(payload)
    (directory / "sub").mkdir()
    (directory / "sub" / "config.txt").write_text("config")


def test_first_use_exports_and_second_use_reuses(tmp_path: Path) -> None:
    builds: list[Path] = []

    def build(directory: Path) -> None:
        builds.append(directory)
        _build(directory)

    first = ensure_entry(tmp_path, NAME, build, what="test")
    second = ensure_entry(tmp_path, NAME, build, what="test")
    assert first == second == tmp_path / NAME
    assert len(builds) == 1
    assert builds[0] != first  # built elsewhere, then renamed into place
    assert (first / "model.bin").read_bytes() == b"weights" * 1000
    assert set(verify(first)["files"]) == {"model.bin", "sub/config.txt"}  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [NAME]


@pytest.mark.parametrize(
    "damage",
    [
        lambda entry: (entry / "model.bin").write_bytes(b"weights" * 999),  # truncated
        lambda entry: (entry / "model.bin").write_bytes(b"Weights" * 1000),  # same size, other bytes
        lambda entry: (entry / "sub" / "config.txt").unlink(),
        lambda entry: (entry / "manifest.json").write_text("{not json"),
        lambda entry: (entry / "manifest.json").unlink(),
    ],
)
def test_a_corrupt_entry_is_exported_again_with_a_warning(
    tmp_path: Path, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    entry = ensure_entry(tmp_path, NAME, _build, what="test")
    damage(entry)  # type: ignore[operator]
    with pytest.raises(CorruptEntry):
        verify(entry)
    builds = []

    def build(directory: Path) -> None:
        builds.append(1)
        _build(directory)

    with caplog.at_level(logging.WARNING):
        again = ensure_entry(tmp_path, NAME, build, what="test")
    assert builds == [1]
    assert verify(again) and (again / "model.bin").read_bytes() == b"weights" * 1000
    assert any("corrupt" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_an_entry_that_fails_to_load_is_exported_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ensure_entry(tmp_path, NAME, lambda d: (d / "model.bin").write_bytes(b"garbage"), what="test")

    def load(entry: Path) -> bytes:
        data = (entry / "model.bin").read_bytes()
        if data == b"garbage":
            raise ValueError("not a model")
        return data

    with caplog.at_level(logging.WARNING):
        loaded = load_entry(tmp_path, NAME, _build, load, what="test")
    assert loaded == b"weights" * 1000
    assert any("failed to load" in r.getMessage() for r in caplog.records)


def test_a_failed_export_leaves_nothing_behind(tmp_path: Path) -> None:
    def build(directory: Path) -> None:
        (directory / "model.bin").write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError, match="exporter crashed"):
        ensure_entry(tmp_path, NAME, build, what="test")
    assert not (tmp_path / NAME).exists()
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def _build_until_killed(root: str, started: str) -> None:
    def build(directory: Path) -> None:
        (directory / "model.bin").write_bytes(b"half an export")
        Path(started).touch()
        time.sleep(600)

    ensure_entry(Path(root), NAME, build, what="test")


def test_a_process_killed_mid_export_leaves_no_entry_a_later_start_uses(tmp_path: Path) -> None:
    started = tmp_path / "started"
    root = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    victim = context.Process(target=_build_until_killed, args=(str(root), str(started)))
    victim.start()
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert victim.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        victim.join()
    assert not (root / NAME).exists()  # only the temporary directory holds the half export
    entry = ensure_entry(root, NAME, _build, what="test")
    assert (entry / "model.bin").read_bytes() == b"weights" * 1000
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [NAME]  # the leftover is gone


def _build_counting(root: str, counter: str, result: str) -> None:
    def build(directory: Path) -> None:
        with open(counter, "a") as f:
            f.write("built\n")
        time.sleep(1.0)  # long enough for the other process to arrive while this one exports
        _build(directory)

    entry = ensure_entry(Path(root), NAME, build, what="test")
    Path(result).write_bytes((entry / "model.bin").read_bytes())


def test_concurrent_starts_export_once_and_both_get_a_valid_entry(tmp_path: Path) -> None:
    root, counter = tmp_path / "cache", tmp_path / "builds"
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_build_counting, args=(str(root), str(counter), str(tmp_path / f"r{i}")))
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
        assert worker.exitcode == 0
    assert counter.read_text().count("built") == 1
    for i in range(2):
        assert (tmp_path / f"r{i}").read_bytes() == b"weights" * 1000
    verify(root / NAME)
