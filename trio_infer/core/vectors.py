"""The last step of every vector before delivery: the model's own normalisation, applied per job."""

from __future__ import annotations

import numpy as np

from .jobs import Vector

# sentence-transformers' Normalize module is torch's `F.normalize(x, p=2)`: x / max(|x|, eps).
_EPSILON = 1e-12


def finish(vector: Vector, *, normalize: bool) -> Vector:
    """`vector` scaled to unit L2 length when `normalize`, as sentence-transformers' Normalize module
    does it; otherwise `vector` itself (the model's output before that module)."""
    if not normalize:
        return vector
    norm = float(np.sqrt(np.dot(vector, vector)))
    return (vector / np.float32(max(norm, _EPSILON))).astype(np.float32, copy=False)
