"""Compact vectors: int8/uint8/binary/ubinary equal sentence-transformers' `quantize_embeddings`
element for element, given the same ranges, through the helper and through both APIs (fake model)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import trio
from quart.typing import TestClientProtocol as Client
from sentence_transformers import quantize_embeddings

from tests.fakes import FakeEmbedder, make_service, text_vector
from trio_infer.config import Settings
from trio_infer.core.service import EmbeddingService
from trio_infer.http.app import create_app
from trio_infer.models import quantization
from trio_infer.models.loading import load_model
from trio_infer.models.range_texts import COUNT, range_texts

PRECISIONS = ("int8", "uint8", "binary", "ubinary")
DTYPES = {"int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8}


def _unit_rows(count: int, dimension: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, dimension)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("dimension", [384, 13, 8])
def test_quantize_equals_quantize_embeddings(precision: str, dimension: int) -> None:
    calibration = _unit_rows(400, dimension, 1)
    vectors = _unit_rows(50, dimension, 2) * 1.3  # some values beyond the ranges: clipped alike
    value_ranges = quantization.ranges(calibration)
    ours = quantization.quantize(vectors, precision, value_ranges)  # type: ignore[arg-type]
    theirs = quantize_embeddings(vectors, precision=precision, ranges=value_ranges)
    assert ours.dtype == theirs.dtype == DTYPES[precision]
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    if precision.endswith("binary"):
        assert ours.shape[1] == (dimension + 7) // 8  # 8 dimensions a byte


def test_ranges_are_the_calibration_vectors_min_and_max() -> None:
    calibration = _unit_rows(400, 16, 3)
    value_ranges = quantization.ranges(calibration)
    np.testing.assert_array_equal(value_ranges, np.vstack((calibration.min(0), calibration.max(0))))
    # Ranges for `dimensions` are over the calibration vectors shortened the same way.
    short = quantization.ranges(calibration, 4)
    shortened = quantization.shorten(calibration, 4)
    np.testing.assert_allclose(np.linalg.norm(shortened, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(short, np.vstack((shortened.min(0), shortened.max(0))))


def test_the_shipped_calibration_texts_are_many_varied_and_fixed() -> None:
    texts = range_texts()
    assert len(texts) == COUNT >= 400 and texts == range_texts()
    assert len(set(texts)) > 0.95 * len(texts)
    lengths = sorted(len(text.split()) for text in texts)
    assert lengths[0] <= 3 and lengths[-1] >= 40  # short queries to passages


def test_the_debug_model_computes_its_calibration_vectors_from_the_shipped_texts() -> None:
    loaded = load_model(Settings(model_name="debug"))
    assert loaded.calibration_vectors is not None
    assert loaded.calibration_vectors.shape == (COUNT, 384)


# ------------------------------------------------------------------------------ both APIs
@pytest.fixture
async def service(nursery: trio.Nursery) -> AsyncIterator[EmbeddingService]:
    service = make_service(FakeEmbedder(), Settings(request_timeout=5.0, graceful_timeout=2.0))
    service.default.calibration_vectors = np.vstack([text_vector(f"calibration {i}") for i in range(300)])
    await nursery.start(service.batcher.run)
    service.lifecycle.mark_ready()
    yield service
    service.batcher.close()


@pytest.fixture
async def client(service: EmbeddingService) -> AsyncIterator[Client]:
    async with create_app(service).test_app() as test_app:
        yield test_app.test_client()


TEXTS = ["red apples", "a green pear", "three ripe bananas in a bowl"]


async def _v1(client: Client, **body: Any) -> tuple[int, Any]:
    response = await client.post("/v1/embeddings", json={"model": "fake-model", "input": TEXTS, **body})
    return response.status_code, await response.get_json()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("dimensions", [None, 5])
async def test_v1_formats_equal_quantize_embeddings_of_the_float_vectors(
    client: Client, service: EmbeddingService, precision: str, dimensions: int | None
) -> None:
    extra = {} if dimensions is None else {"dimensions": dimensions}
    status, floats = await _v1(client, encoding_format="float", **extra)
    assert status == 200
    float_rows = np.array([item["embedding"] for item in floats["data"]], dtype=np.float32)
    status, body = await _v1(client, encoding_format=precision, **extra)
    assert status == 200, body
    got = np.array([item["embedding"] for item in body["data"]])
    assert all(isinstance(value, int) for item in body["data"] for value in item["embedding"])
    # shorten first, then quantize, with ranges over the calibration vectors shortened alike
    assert service.default.calibration_vectors is not None
    value_ranges = quantization.ranges(service.default.calibration_vectors, dimensions)
    expected = quantize_embeddings(float_rows, precision=precision, ranges=value_ranges)
    np.testing.assert_array_equal(got, expected)
    assert body["usage"] == floats["usage"]


async def test_embed_takes_encoding_format(client: Client, service: EmbeddingService) -> None:
    response = await client.post("/embed", json={"input_text": "red apples", "encoding_format": "ubinary"})
    assert response.status_code == 200
    expected = quantize_embeddings(text_vector("red apples")[None, :], precision="ubinary")[0]
    assert (await response.get_json())["embedding"] == expected.tolist()
    response = await client.post("/embed", json={"input_text": "red apples", "encoding_format": "int8"})
    assert service.default.calibration_vectors is not None
    ranges = quantization.ranges(service.default.calibration_vectors)
    expected = quantize_embeddings(text_vector("red apples")[None, :], precision="int8", ranges=ranges)[0]
    assert (await response.get_json())["embedding"] == expected.tolist()


@pytest.mark.parametrize("value", ["INT8", "Float", "Binary", "int4", "base64 "])
async def test_a_wrong_case_or_unknown_format_is_422_naming_the_allowed_values(
    client: Client, value: str
) -> None:
    status, body = await _v1(client, encoding_format=value)
    assert status == 422
    assert body["error"]["param"] == "encoding_format"
    for allowed in ("'float'", "'base64'", "'int8'", "'uint8'", "'binary'", "'ubinary'"):
        assert allowed in body["error"]["message"]
    response = await client.post("/embed", json={"input_text": "x", "encoding_format": value})
    payload = await response.get_json()
    assert response.status_code == 422 and payload["error"] == "validation_error"
    assert "'ubinary'" in payload["detail"]


async def test_int8_without_ranges_is_a_clear_400(service: EmbeddingService, client: Client) -> None:
    service.default.calibration_vectors = None
    status, body = await _v1(client, encoding_format="int8")
    assert status == 400 and body["error"]["param"] == "encoding_format"
    assert (await _v1(client, encoding_format="binary"))[0] == 200  # binary needs no ranges
