"""Compact vectors: int8, uint8, binary and ubinary, as sentence-transformers' `quantize_embeddings`.

- `binary` / `ubinary`: one bit per dimension (positive -> 1), packed 8 dimensions a byte with
  `np.packbits` (the first dimension is the highest bit); `ubinary` is those bytes (0-255), `binary`
  the same bytes minus 128 (-128-127). A 384-dimension vector is 48 bytes.
- `int8` / `uint8`: each dimension's range [min, max] cut into 256 buckets; `uint8` is the bucket
  (0-255), `int8` the bucket minus 128. The ranges come from the vectors of the calibration texts
  that ship in the package (`range_texts`), computed once per model by the model itself.

`shorten` (the `dimensions` option: keep the first N, re-normalize) comes first; int8 and uint8 then
use ranges over the calibration vectors shortened the same way, so a shortened vector is bucketed by
the ranges of vectors like it.

`quantize` is pure numpy and bit-for-bit `quantize_embeddings(vectors, precision, ranges=ranges)`.
`calibration_vectors` is blocking (a model's forward passes, file I/O): call it at load, from the
loading thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from .range_texts import VERSION, range_texts

log = logging.getLogger(__name__)

Precision = Literal["int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[Precision, ...] = ("int8", "uint8", "binary", "ubinary")
VECTORS_FILE = "calibration_vectors.npy"
_BATCH = 32


def shorten(vectors: npt.NDArray[np.float32], dimensions: int | None) -> npt.NDArray[np.float32]:
    """The first `dimensions` components of each row, re-normalized to unit length (a zero row stays
    zero); the rows as they are when `dimensions` is None or not shorter."""
    if dimensions is None or dimensions >= vectors.shape[-1]:
        return vectors
    head = vectors[..., :dimensions].astype(np.float32)
    norms = np.linalg.norm(head, axis=-1, keepdims=True).astype(np.float32)
    shortened: npt.NDArray[np.float32] = np.divide(head, norms, out=head.copy(), where=norms > 0)
    return shortened


def ranges(calibration: npt.NDArray[np.float32], dimensions: int | None = None) -> npt.NDArray[np.float32]:
    """Per-dimension (min, max), shape (2, dimensions), over the calibration vectors shortened to
    `dimensions` (see `shorten`)."""
    sample = shorten(calibration, dimensions)
    return np.vstack((sample.min(axis=0), sample.max(axis=0))).astype(np.float32)


def quantize(
    vectors: npt.NDArray[np.float32],
    precision: Precision,
    value_ranges: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.int8] | npt.NDArray[np.uint8]:
    """`vectors` (n x d float32) as `precision`; int8 and uint8 need `value_ranges` (2 x d).

    The arithmetic is `quantize_embeddings`'s, step for step, so the results are identical."""
    if precision == "ubinary":
        return np.packbits(vectors > 0, axis=-1)
    if precision == "binary":
        return (np.packbits(vectors > 0, axis=-1) - 128).astype(np.int8)
    if value_ranges is None:
        raise ValueError(f"{precision} needs per-dimension ranges")
    value_ranges = value_ranges.astype(np.float32, copy=False)
    starts = value_ranges[0, :]
    steps = (value_ranges[1, :] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    buckets = np.clip(np.floor((vectors - starts) / steps), 0, 255)
    if precision == "uint8":
        return buckets.astype(np.uint8)
    return (buckets - 128).astype(np.int8)


def embed_in_batches(
    tokenize: Callable[[Sequence[str]], list[list[int]]],
    embed: Callable[[Sequence[str], Sequence[Sequence[int]]], Sequence[npt.NDArray[np.float32]]],
    texts: Sequence[str],
) -> npt.NDArray[np.float32]:
    """Vectors of `texts`, in their order, from a blocking model's `tokenize` and `embed`, in batches
    of similar length (little padding)."""
    ids = tokenize(texts)
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    out: list[npt.NDArray[np.float32] | None] = [None] * len(texts)
    for start in range(0, len(order), _BATCH):
        chunk = order[start : start + _BATCH]
        vectors = embed([texts[i] for i in chunk], [ids[i] for i in chunk])
        for i, vector in zip(chunk, vectors, strict=True):
            out[i] = vector
    return np.vstack([vector for vector in out if vector is not None]).astype(np.float32)


def calibration_vectors(
    compute: Callable[[list[str]], npt.NDArray[np.float32]],
    *,
    cache: Callable[
        [Callable[[Path], None], Callable[[Path], npt.NDArray[np.float32]]], npt.NDArray[np.float32]
    ]
    | None = None,
) -> npt.NDArray[np.float32]:
    """The vectors of the shipped calibration texts, by `compute(texts)`; with `cache` (an export
    cache entry's `load_entry(build, load)`), computed once and stored in the entry, so restarts and
    the other workers read them instead."""
    texts = range_texts()
    if cache is None:
        return compute(texts)

    def build(directory: Path) -> None:
        np.save(directory / VECTORS_FILE, compute(texts))

    def load(directory: Path) -> npt.NDArray[np.float32]:
        vectors = np.load(directory / VECTORS_FILE, allow_pickle=False)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts) or vectors.dtype != np.float32:
            raise ValueError(f"{VECTORS_FILE} has shape {vectors.shape} and dtype {vectors.dtype}")
        return np.asarray(vectors, dtype=np.float32)

    return cache(build, load)


__all__ = [
    "PRECISIONS",
    "VECTORS_FILE",
    "VERSION",
    "Precision",
    "calibration_vectors",
    "embed_in_batches",
    "quantize",
    "ranges",
    "shorten",
]
