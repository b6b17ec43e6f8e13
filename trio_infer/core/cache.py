"""The embedding cache: finished vectors by what produced them, bounded in bytes, least recently used
out first.

A key is a 16-byte BLAKE2b digest (`hashlib.blake2b(digest_size=16)`) of everything that changes a
text's vector: the model's identity (a salt: its name, backend, precision and dimension) and the text
exactly as it enters tokenization (prompt included), with the options that change how it is read.
128 bits make a collision practically impossible (about 2**-64 after 2**32 distinct texts), and the
digest costs what the text's bytes cost to read, so a 1 MiB body hashes in about a millisecond.

Keying on the text before truncation, not on the tokens the model read, keeps tokenization off the
event loop; two texts that differ only past the truncation point are then stored twice, never
confused.

Eviction is LRU. A scan-resistant policy only pays when one-off scans push out a hot set that fits;
here a re-index is exactly the scan whose texts come back, so LRU is kept (see BENCHMARKS.md).

The cache belongs to one model's batcher in one process: a model loaded again starts empty, and with
`--workers` each worker holds its own. It holds no tasks and never blocks; every method is O(1).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .jobs import Vector
from .metrics import CacheMetrics

# Bytes one entry costs beyond its vector's data: the OrderedDict node and key (16-byte bytes object),
# the entry object and the numpy array header. Measured with tracemalloc on CPython 3.11
# (tests/test_cache.py checks the real cost stays within it).
ENTRY_OVERHEAD = 384


@dataclass(frozen=True, slots=True)
class CachedVector:
    """A finished text: its vector (read-only) and its token counts (what `usage` and a
    `truncate: false` check need)."""

    vector: Vector
    n_tokens: int  # tokens the model read, special tokens included
    text_tokens: int  # the whole text's tokens (a lower bound when not `exact`)
    exact: bool

    @property
    def size(self) -> int:
        return self.vector.nbytes + ENTRY_OVERHEAD


def cache_key(salt: bytes, text: str, *options: bool) -> bytes:
    """The digest of `text` as read under `options`, for the model `salt` names."""
    digest = hashlib.blake2b(salt, digest_size=16)
    digest.update(bytes(options))
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.digest()


def model_salt(name: str, backend: str, precision: str, dimension: int) -> bytes:
    return f"{name}\0{backend}\0{precision}\0{dimension}\0".encode()


class VectorCache:
    """At most `capacity` bytes of `CachedVector`s (0: stores nothing)."""

    def __init__(self, capacity: int, metrics: CacheMetrics) -> None:
        self.capacity = capacity
        self.metrics = metrics
        self.bytes = 0
        self.hits = 0
        self.lookups = 0
        self._entries: OrderedDict[bytes, CachedVector] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def get(self, key: bytes) -> CachedVector | None:
        """The entry under `key` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def count(self, *, hits: int, misses: int, coalesced: int) -> None:
        """Count the lookups of one admitted request (a refused one is not counted)."""
        self.hits += hits
        self.lookups += hits + misses + coalesced
        for result, n in (("hit", hits), ("miss", misses), ("coalesced", coalesced)):
            if n:
                self.metrics.requests[result].inc(n)

    def put(self, key: bytes, vector: Vector, *, n_tokens: int, text_tokens: int, exact: bool) -> None:
        """Store a copy of `vector` (the model's may be a view of its whole batch) and evict the least
        recently used entries until the bound holds. An entry larger than the bound is not stored."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        own = np.array(vector, dtype=np.float32, copy=True)
        own.setflags(write=False)
        entry = CachedVector(own, n_tokens, text_tokens, exact)
        if entry.size > self.capacity:
            return
        self._entries[key] = entry
        self.bytes += entry.size
        while self.bytes > self.capacity:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size
            self.metrics.evictions.inc()
        self._report()

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
        self._report()

    def hit_ratio(self) -> float | None:
        return self.hits / self.lookups if self.lookups else None

    def health(self) -> dict[str, object]:
        """This cache's part of `/health`."""
        ratio = self.hit_ratio()
        return {
            "capacity_bytes": self.capacity,
            "bytes": self.bytes,
            "entries": len(self._entries),
            "hit_ratio": None if ratio is None else round(ratio, 4),
        }

    def _report(self) -> None:
        self.metrics.bytes.set(self.bytes)
        self.metrics.entries.set(len(self._entries))


__all__ = ["ENTRY_OVERHEAD", "CachedVector", "VectorCache", "cache_key", "model_salt"]
