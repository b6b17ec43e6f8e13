"""Prompts and compact vectors with the real model, a real server and real sockets.

The test makes a copy of the bundled all-MiniLM-L6-v2 whose `config_sentence_transformers.json`
gains `prompts` and `default_prompt_name`, serves it (`MODEL_NAME=<copy>`, its own cache directory),
and checks against `SentenceTransformer` loaded from the same copy: each prompt's vector equals
`encode(text, prompt_name=...)`, `usage` counts the prompt's tokens as its tokenizer does, and every
compact format equals `quantize_embeddings` of the server's own float vectors with the ranges of the
calibration vectors the server stored in its cache entry.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from sentence_transformers import SentenceTransformer, quantize_embeddings

from tests.serverproc import ServerProcess
from trio_infer.config import Settings
from trio_infer.models import quantization
from trio_infer.models.loading import ModelLoadError, load_models
from trio_infer.models.range_texts import range_texts
from trio_infer.models.sentence_transformer import bundled_model_path

PROMPTS = {"query": "query: ", "passage": "passage: "}
STARTUP_LIMIT = 300.0
CLIENT_TIMEOUT = 180.0
TEXTS = [
    "how do vaccines train the immune system",
    "The central bank raised interest rates to curb inflation.",
    "tomato sauce " * 200,  # over the model's 256 tokens: truncated, prompt included
]


def prompted_copy(folder: Path, *, include_prompt: bool = True) -> Path:
    model = folder / "model"
    shutil.copytree(bundled_model_path(), model)
    config_path = model / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text())
    config.update(prompts=PROMPTS, default_prompt_name="query")
    config_path.write_text(json.dumps(config))
    if not include_prompt:
        pooling = model / "1_Pooling" / "config.json"
        pooling.write_text(json.dumps({**json.loads(pooling.read_text()), "include_prompt": False}))
    return model


@dataclass
class Served:
    url: str
    model_path: Path
    cache_dir: Path
    st: Any
    proc: ServerProcess


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("prompted")
    model_path = prompted_copy(folder)
    cache_dir = folder / "cache"
    proc = ServerProcess(
        args=["--request-timeout", "120", "--graceful-timeout", "10"],
        env={"MODEL_NAME": str(model_path), "TRIO_INFER_CACHE_DIR": str(cache_dir)},
    ).start(timeout=STARTUP_LIMIT)
    try:
        st = SentenceTransformer(str(model_path), device="cpu")
        yield Served(proc.base_url, model_path, cache_dir, st, proc)
    finally:
        proc.stop(timeout=60)


@pytest.fixture(scope="module")
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=CLIENT_TIMEOUT) as session:
        yield session


def v1(http: httpx.Client, served: Served, **body: Any) -> Any:
    response = http.post("/v1/embeddings", json={"model": str(served.model_path), "input": TEXTS, **body})
    assert response.status_code == 200, response.text
    return response.json()


def rows(body: Any) -> np.ndarray:
    return np.array([item["embedding"] for item in body["data"]], dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def prompt_tokens(st: Any, prompt: str) -> int:
    encoded = st.tokenizer([prompt + text for text in TEXTS], truncation=True, max_length=st.max_seq_length)
    return sum(len(ids) for ids in encoded["input_ids"])


@pytest.mark.parametrize(
    ("extra", "prompt_name"),
    [
        ({"prompt_name": "passage"}, "passage"),
        ({"input_type": "query"}, "query"),
        ({"input_type": "document"}, "passage"),  # the model has only `passage`
        ({}, "query"),  # the model's default_prompt_name
    ],
)
def test_v1_vectors_equal_sentence_transformers_for_the_prompt(
    http: httpx.Client, served: Served, extra: dict[str, str], prompt_name: str
) -> None:
    body = v1(http, served, encoding_format="float", **extra)
    expected = served.st.encode(TEXTS, prompt_name=prompt_name)
    assert cosines(rows(body), expected).min() > 0.9999
    assert body["usage"]["prompt_tokens"] == prompt_tokens(served.st, PROMPTS[prompt_name])


def test_a_prompt_changes_the_vector(http: httpx.Client, served: Served) -> None:
    query = rows(v1(http, served, prompt_name="query"))
    passage = rows(v1(http, served, prompt_name="passage"))
    assert cosines(query, passage).max() < 0.999
    plain = served.st.encode(TEXTS, prompt="")
    assert cosines(query, plain).max() < 0.999


def test_the_openai_sdk_sends_input_type_in_extra_body(http: httpx.Client, served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", timeout=CLIENT_TIMEOUT)
    try:
        result = client.embeddings.create(
            model=str(served.model_path), input=TEXTS, extra_body={"input_type": "passage"}
        )
        compact = client.embeddings.create(
            model=str(served.model_path),
            input=TEXTS,
            encoding_format="int8",
            extra_body={"prompt_name": "passage"},
        )
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(
                model=str(served.model_path), input="x", extra_body={"prompt_name": "nope"}
            )
    finally:
        client.close()
    got = np.array([item.embedding for item in result.data], dtype=np.float32)
    assert cosines(got, served.st.encode(TEXTS, prompt_name="passage")).min() > 0.9999
    assert "'passage', 'query'" in str(caught.value)
    # The SDK passes a compact format through as sent (it decodes only the base64 it asks for itself).
    value_ranges = quantization.ranges(_calibration_vectors(served))
    expected = quantize_embeddings(rows(v1(http, served, prompt_name="passage")), "int8", ranges=value_ranges)
    np.testing.assert_array_equal(np.array([item.embedding for item in compact.data]), expected)


def test_embed_takes_prompt_name(http: httpx.Client, served: Served) -> None:
    response = http.post("/embed", json={"input_text": TEXTS[0], "prompt_name": "passage"})
    assert response.status_code == 200
    got = np.array([response.json()["embedding"]], dtype=np.float32)
    assert cosines(got, served.st.encode(TEXTS[:1], prompt_name="passage")).min() > 0.9999


def _calibration_vectors(served: Served) -> np.ndarray:
    (path,) = served.cache_dir.glob(f"*calibration*/{quantization.VECTORS_FILE}")
    return np.load(path)


def test_the_calibration_vectors_are_the_models_vectors_of_the_shipped_texts(served: Served) -> None:
    stored = _calibration_vectors(served)
    expected = served.st.encode(range_texts(), prompt="")  # the texts as they ship, no prompt
    assert stored.shape == expected.shape
    assert cosines(stored, expected).min() > 0.9999


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
@pytest.mark.parametrize("dimensions", [None, 100])
def test_compact_formats_equal_quantize_embeddings(
    http: httpx.Client, served: Served, precision: str, dimensions: int | None
) -> None:
    extra: dict[str, Any] = {"prompt_name": "passage"}
    if dimensions is not None:
        extra["dimensions"] = dimensions
    floats = rows(v1(http, served, encoding_format="float", **extra))
    got = np.array(
        [item["embedding"] for item in v1(http, served, encoding_format=precision, **extra)["data"]]
    )
    value_ranges = quantization.ranges(_calibration_vectors(served), dimensions)
    expected = quantize_embeddings(floats, precision=precision, ranges=value_ranges)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got, expected)
    width = dimensions or 384
    assert got.shape == (len(TEXTS), (width + 7) // 8 if precision.endswith("binary") else width)


def test_a_restart_reuses_the_stored_calibration_vectors(served: Served) -> None:
    assert "calibration vectors: exporting into" in served.proc.log()
    with ServerProcess(
        env={"MODEL_NAME": str(served.model_path), "TRIO_INFER_CACHE_DIR": str(served.cache_dir)}
    ).start(timeout=STARTUP_LIMIT) as again:
        log = again.log()
    assert "calibration vectors: reusing the cached export" in log
    assert "calibration vectors: exporting" not in log


def test_a_model_that_pools_without_prompt_tokens_is_refused_at_load(tmp_path: Path) -> None:
    model = prompted_copy(tmp_path, include_prompt=False)
    settings = Settings(model_name=str(model), backend="torch", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match="include_prompt: false"):
        load_models(settings)
