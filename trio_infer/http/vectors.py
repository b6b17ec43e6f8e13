"""A request's vectors as JSON values, in the `encoding_format` it asked for (after `dimensions`).

- `float` (default): the float32 components; `base64`: their little-endian bytes, base64-encoded.
- `int8` / `uint8`: one integer per dimension (-128..127 / 0..255), bucketed by the model's ranges
  (models.quantization: from the shipped calibration texts' vectors, shortened like the request's).
- `binary` / `ubinary`: one integer per 8 dimensions, the sign bits packed with `np.packbits`
  (-128..127 / 0..255), as sentence-transformers' `quantize_embeddings` packs them.

Compact formats come as JSON integers only; base64 is of float32 vectors only.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ..core import errors
from ..core.jobs import Vector
from ..core.served_model import ServedModel
from ..models import quantization

EncodingFormat = Literal["float", "base64", "int8", "uint8", "binary", "ubinary"]


def encode(
    model: ServedModel,
    vectors: Sequence[Vector],
    encoding_format: EncodingFormat | None,
    dimensions: int | None,
) -> list[Any]:
    """One JSON value per vector (numpy arrays, which the reply serialises natively, or strings).

    Raises BadRequest (400, param `encoding_format`) for int8/uint8 on a model without ranges."""
    rows = quantization.shorten(np.vstack(vectors).astype(np.float32, copy=False), dimensions)
    if encoding_format is None or encoding_format == "float":
        return list(rows)
    if encoding_format == "base64":
        return [base64.b64encode(row.astype("<f4", copy=False).tobytes()).decode("ascii") for row in rows]
    value_ranges = None
    if encoding_format in ("int8", "uint8"):
        if model.calibration_vectors is None:
            raise errors.BadRequest(
                f"encoding_format {encoding_format} needs ranges that model {model.name} does not have",
                param="encoding_format",
                code="invalid_value",
            )
        value_ranges = quantization.ranges(model.calibration_vectors, dimensions)
    return list(quantization.quantize(rows, encoding_format, value_ranges))


__all__ = ["EncodingFormat", "encode"]
