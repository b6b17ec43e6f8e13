"""`MODEL_NAME=debug`: deterministic unit vectors from a hash of the text, no torch work.

For measuring the serving path alone and for users' integration tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from .jobs import Vector

DEBUG_DIMENSION = 384


class DebugModel:
    """Same text, same vector; different texts, (almost surely) different vectors."""

    name = "debug"
    device = "cpu"
    dimension = DEBUG_DIMENSION
    max_tokens = 512

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        # One pseudo-token per whitespace word plus two markers, so length-aware batching still has lengths.
        return [[101, *[1000] * min(len(text.split()), self.max_tokens - 2), 102] for text in texts]

    def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        return [self._vector(text) for text in texts]

    def _vector(self, text: str) -> Vector:
        seed = int.from_bytes(
            hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
        )
        vector = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
        vector /= np.linalg.norm(vector)
        return vector
