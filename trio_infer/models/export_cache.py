"""The export cache: one directory per exported model, published atomically, verified on every use.

Blocking (file I/O and, through `build`, an export); call from a worker thread or a command.

An entry is built in a temporary directory beside its final name and renamed into place only when
complete, with a manifest of every file's size and SHA-256 written last: a crash mid-export leaves
only a temporary directory, which the next builder of that entry removes. Builders of one entry take
an exclusive `flock` on a lock file next to it, so two processes starting at once export it once; the
second waits, then reuses the first's entry. An entry whose files no longer match its manifest (or
that fails to load) is discarded with a warning and built again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
T = TypeVar("T")


class CorruptEntry(Exception):
    """A cache entry that cannot be used as it is."""


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path, extra: dict[str, object]) -> None:
    files = {
        str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": file_digest(p)}
        for p in _files(directory)
    }
    body = json.dumps({"files": files, **extra}, indent=2, sort_keys=True)
    path = directory / MANIFEST
    path.write_text(body)
    for p in [*_files(directory), path]:
        with p.open("rb") as f:
            os.fsync(f.fileno())


def verify(directory: Path) -> dict[str, object]:
    """The entry's manifest, after checking every file against it; raises CorruptEntry otherwise."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files: dict[str, dict[str, object]] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CorruptEntry(f"unreadable manifest: {error}") from error
    if not files:
        raise CorruptEntry("empty entry")
    for name, expected in files.items():
        path = directory / name
        try:
            size = path.stat().st_size
        except OSError as error:
            raise CorruptEntry(f"{name}: {error.strerror}") from error
        if size != expected.get("size") or file_digest(path) != expected.get("sha256"):
            raise CorruptEntry(f"{name} does not match its manifest")
    result: dict[str, object] = manifest
    return result


def locked(lock_path: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on `lock_path`; opening it (which may fail with OSError) happens now."""
    handle = lock_path.open("a+")

    @contextlib.contextmanager
    def held() -> Iterator[None]:
        with handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    return held()


def _discard(path: Path) -> None:
    """Move `path` out of the way (atomic), then delete it."""
    trash = path.with_name(f".{path.name}.trash-{uuid.uuid4().hex[:8]}")
    with contextlib.suppress(FileNotFoundError):
        path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def ensure_entry(root: Path, name: str, build: Callable[[Path], None], *, what: str) -> Path:
    """The verified entry `root/name`, exported by `build(temporary_directory)` first if needed."""
    final = root / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = locked(root / f".{name}.lock")
    except OSError as error:
        # A read-only cache (e.g. baked into an image, run as another user) is fine while it is complete.
        try:
            verify(final)
        except CorruptEntry:
            raise error from None
        log.info("%s: reusing the cached export %s (read-only cache)", what, final)
        return final
    with lock:
        if final.exists():
            try:
                verify(final)
                log.info("%s: reusing the cached export %s", what, final)
                return final
            except CorruptEntry as error:
                log.warning("%s: cache entry %s is corrupt (%s); exporting it again", what, final, error)
                _discard(final)
        # Left by a builder that died: only the lock holder writes this entry's temporary directories.
        for stale in root.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            log.info("%s: exporting into %s ...", what, final)
            start = time.perf_counter()
            build(tmp)
            seconds = time.perf_counter() - start
            write_manifest(tmp, {"export_seconds": round(seconds, 3), "created": time.time()})
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("%s: exported in %.1f s", what, seconds)
        return final


def load_entry(
    root: Path, name: str, build: Callable[[Path], None], load: Callable[[Path], T], *, what: str
) -> T:
    """`load(entry)`; an entry that verifies but fails to load is discarded and exported once more."""
    path = ensure_entry(root, name, build, what=what)
    try:
        return load(path)
    except Exception as error:  # a damaged or incompatible export: the runtime's own error types vary
        log.warning("%s: cache entry %s failed to load (%s); exporting it again", what, path, error)
        with locked(root / f".{name}.lock"):
            _discard(path)
    return load(ensure_entry(root, name, build, what=what))
