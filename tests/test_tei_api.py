"""TEI's API (`POST /embed` with `inputs`, `POST /`, `/tokenize`, `/decode`, `/info`) and its errors,
through quart-trio's test app and a fake model whose vectors depend on its (truncated) token ids."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest
import trio
from quart.typing import TestClientProtocol as Client

from tests.fakes import FakeEmbedder, make_service, text_vector
from trio_infer.config import Settings
from trio_infer.core.jobs import Vector
from trio_infer.core.service import EmbeddingService
from trio_infer.http.app import create_app
from trio_infer.models import truncation
from trio_infer.models.debug import DebugTokenizer

MAX_CLIENT_BATCH = 4
SETTINGS = Settings(
    request_timeout=5.0, graceful_timeout=2.0, max_client_batch_size=MAX_CLIENT_BATCH, max_queue_size=64
)
RAW_SCALE = 3.0  # the fake's vectors before its Normalize "module" are 3 units long


def _word_id(word: str) -> int:
    return 1000 + int.from_bytes(hashlib.sha256(word.encode()).digest()[:2], "little")


class TeiFake(FakeEmbedder):
    """A model that normalises (its raw vectors are RAW_SCALE long), reads at most 8 tokens, and whose
    vector is a function of the token ids it read: so truncation's direction shows in the vector."""

    max_tokens = 8
    normalizes = True
    pooling = "mean"

    def __init__(self) -> None:
        super().__init__(poison=["POISON"])
        self.tokens = DebugTokenizer()

    async def tokenize(self, texts: Sequence[str], tails: Sequence[bool] = ()) -> list[list[int]]:
        await trio.lowlevel.checkpoint()

        def content(pieces: list[str]) -> list[list[int]]:
            return [[_word_id(word) for word in piece.split()] for piece in pieces]

        heads = truncation.tokenize_heads(texts, content, self.max_tokens - 2, tails)
        return [
            truncation.token_ids(ids, total, exact, lambda c: [101, *c, 102]) for ids, total, exact in heads
        ]

    async def embed(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> list[Vector]:
        await super().embed(texts, token_ids)  # records the batch, sleeps its cost, raises on poison
        return [ids_vector(ids) * np.float32(RAW_SCALE) for ids in token_ids]


def ids_vector(ids: Sequence[int]) -> Vector:
    return text_vector(",".join(map(str, ids)))


def expected(text: str, *, left: bool = False) -> list[float]:
    words = [_word_id(word) for word in text.split()]
    kept = words[-6:] if left else words[:6]
    return ids_vector([101, *kept, 102]).tolist()


@pytest.fixture
def embedder() -> TeiFake:
    return TeiFake()


@pytest.fixture
async def service(embedder: TeiFake, nursery: trio.Nursery) -> AsyncIterator[EmbeddingService]:
    service = make_service(embedder, SETTINGS)
    await nursery.start(service.batcher.run)
    service.lifecycle.mark_ready()
    yield service
    service.batcher.close()


@pytest.fixture
async def client(service: EmbeddingService) -> AsyncIterator[Client]:
    async with create_app(service).test_app() as test_app:
        yield test_app.test_client()


async def post(client: Client, path: str, body: Any) -> tuple[int, Any, Any]:
    response = await client.post(path, json=body)
    return response.status_code, await response.get_json(), response.headers


def assert_tei_error(status: int, body: Any, expected_status: int, error_type: str, words: str = "") -> None:
    assert status == expected_status, body
    assert set(body) == {"error", "error_type"}, body
    assert body["error_type"] == error_type, body
    assert words in body["error"], body


# -- embedding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/embed", "/"])
async def test_a_string_gets_a_list_of_one_unit_vector(client: Client, path: str) -> None:
    status, body, headers = await post(client, path, {"inputs": "hello world"})
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    assert len(body) == 1
    assert body[0] == pytest.approx(expected("hello world"), abs=1e-6)
    assert np.linalg.norm(body[0]) == pytest.approx(1.0, abs=1e-5)


async def test_a_list_gets_its_vectors_in_order(client: Client) -> None:
    texts = ["one", "two words", "three more words"]
    status, body, _ = await post(client, "/embed", {"inputs": texts})
    assert status == 200, body
    assert [vector for vector in body] == [pytest.approx(expected(t), abs=1e-6) for t in texts]


async def test_normalize_false_gives_the_vector_before_the_models_normalize(client: Client) -> None:
    status, body, _ = await post(client, "/embed", {"inputs": ["hello world"], "normalize": False})
    assert status == 200, body
    np.testing.assert_allclose(body[0], np.asarray(expected("hello world")) * RAW_SCALE, atol=1e-5)


async def test_dimensions_cut_then_normalise(client: Client) -> None:
    status, body, _ = await post(client, "/embed", {"inputs": "hello world", "dimensions": 4})
    assert status == 200, body
    head = np.asarray(expected("hello world")[:4])
    np.testing.assert_allclose(body[0], head / np.linalg.norm(head), atol=1e-5)
    for dimensions, words in [(0, "should be positive"), (9, "smaller than the maximum")]:
        status, body, _ = await post(client, "/embed", {"inputs": "a", "dimensions": dimensions})
        assert_tei_error(status, body, 422, "Validation", words)


async def test_left_truncation_keeps_the_end_of_a_long_text(client: Client) -> None:
    long_text = " ".join(f"w{i}" for i in range(20))
    for direction, left in [("Right", False), ("right", False), ("Left", True), ("left", True)]:
        status, body, _ = await post(
            client, "/embed", {"inputs": long_text, "truncation_direction": direction}
        )
        assert status == 200, body
        assert body[0] == pytest.approx(expected(long_text, left=left), abs=1e-6), direction
    assert expected(long_text, left=True) != expected(long_text)
    # A text within the limit is the same text whichever end would be cut.
    left = await post(client, "/embed", {"inputs": "short text", "truncation_direction": "Left"})
    assert left[1][0] == pytest.approx(expected("short text"), abs=1e-6)


async def test_truncate_false_with_a_long_input_is_tei_validation(client: Client, embedder: TeiFake) -> None:
    long_text = " ".join(f"w{i}" for i in range(20))
    status, body, _ = await post(client, "/embed", {"inputs": ["fine", long_text], "truncate": False})
    assert_tei_error(status, body, 422, "Validation", "must have less than 8 tokens. Given: 22")
    assert long_text not in embedder.texts_computed
    status, body, _ = await post(client, "/embed", {"inputs": long_text, "truncate": None})
    assert status == 200, body  # null: this server's default, truncation


async def test_the_native_body_keeps_its_shape(client: Client) -> None:
    status, body, _ = await post(client, "/embed", {"input_text": "hello world"})
    assert status == 200, body
    assert set(body) == {"embedding", "model"}
    assert body["embedding"] == pytest.approx(expected("hello world"), abs=1e-6)
    status, body, _ = await post(client, "/embed", {"input_text": ""})
    assert status == 422 and set(body) == {"error", "detail"}, body


@pytest.mark.parametrize(
    ("body", "words"),
    [({"input_text": "a", "inputs": "b"}, "both"), ({}, "neither"), ({"text": "a"}, "neither")],
)
async def test_both_shapes_or_neither_is_a_422_naming_both(client: Client, body: Any, words: str) -> None:
    status, answer, _ = await post(client, "/embed", body)
    assert status == 422, answer
    assert answer["error"] == "validation_error"
    assert words in answer["detail"] and "input_text" in answer["detail"] and "inputs" in answer["detail"]


@pytest.mark.parametrize("path", ["/embed", "/"])
@pytest.mark.parametrize(
    ("body", "status", "error_type", "words"),
    [
        ({"inputs": []}, 400, "Empty", "`inputs` cannot be empty"),
        ({"inputs": ""}, 400, "Empty", "`inputs` cannot be empty"),
        ({"inputs": ["a", ""]}, 400, "Empty", "`inputs` cannot be empty"),
        (
            {"inputs": ["a"] * (MAX_CLIENT_BATCH + 1)},
            422,
            "Validation",
            "batch size 5 > maximum allowed batch size 4",
        ),
        ({"inputs": "a", "truncation_direction": "Middle"}, 422, "Validation", "truncation_direction"),
        ({"inputs": "a", "truncation_direction": "LEFT"}, 422, "Validation", "truncation_direction"),
        ({"inputs": "a", "colour": "blue"}, 422, "Validation", "colour: unknown field"),
        ({"inputs": "a", "normalize": "yes"}, 422, "Validation", "normalize"),
        ({"inputs": [1, 2]}, 422, "Validation", "inputs"),
        ({"inputs": "a", "model": "nope"}, 404, "Validation", "'nope' does not exist"),
        ({"inputs": "a", "prompt_name": "query"}, 422, "Validation", "prompt"),
        ({"inputs": "POISON"}, 424, "Backend", "inference failed"),
    ],
)
async def test_bad_tei_bodies_get_teis_errors(
    client: Client, path: str, body: Any, status: int, error_type: str, words: str
) -> None:
    got, answer, _ = await post(client, path, body)
    assert_tei_error(got, answer, status, error_type, words)


async def test_a_list_at_max_client_batch_size_is_served(client: Client) -> None:
    status, body, _ = await post(client, "/embed", {"inputs": ["a"] * MAX_CLIENT_BATCH, "prompt_name": None})
    assert status == 200 and len(body) == MAX_CLIENT_BATCH, body


async def test_invalid_json_on_teis_route_is_teis_shape(client: Client) -> None:
    response = await client.post("/", data=b"{not json", headers={"Content-Type": "application/json"})
    assert_tei_error(response.status_code, await response.get_json(), 400, "Validation", "not valid JSON")


async def test_overload_is_teis_429_with_retry_after(embedder: TeiFake, nursery: trio.Nursery) -> None:
    settings = Settings(request_timeout=5.0, graceful_timeout=2.0, max_queue_size=1)
    service = make_service(embedder, settings)
    await nursery.start(service.batcher.run)
    service.lifecycle.mark_ready()
    embedder.gate = trio.Event()  # the model is busy until released
    async with create_app(service).test_app() as test_app:
        client = test_app.test_client()
        nursery.start_soon(post, client, "/embed", {"inputs": "in the pass"})
        await embedder.started.wait()
        nursery.start_soon(post, client, "/embed", {"inputs": "queued"})
        with trio.fail_after(5):
            while service.batcher.queue_size < 1:  # noqa: ASYNC110 (the batcher has no event for it)
                await trio.sleep(0.01)
        status, body, headers = await post(client, "/embed", {"inputs": "one too many"})
        assert_tei_error(status, body, 429, "Overloaded")
        assert int(headers["Retry-After"]) >= 1
        embedder.gate.set()
    service.batcher.close()


async def test_several_models_model_selects_one(nursery: trio.Nursery) -> None:
    from trio_infer.core.lifecycle import Lifecycle
    from trio_infer.core.metrics import Metrics
    from trio_infer.core.service import ServedModel

    first = make_service(TeiFake(), SETTINGS)
    other = TeiFake()
    other.name = "other-model"
    second = make_service(other, SETTINGS)
    models = [first.default, ServedModel("other-model", "org/other-model", second.default.batcher, 60.0)]
    service = EmbeddingService(SETTINGS, models, Lifecycle(graceful_timeout=2.0, drain_delay=0.0), Metrics())
    for model in models:
        await nursery.start(model.batcher.run)
    service.lifecycle.mark_ready()
    async with create_app(service).test_app() as test_app:
        client = test_app.test_client()
        status, body, _ = await post(client, "/embed", {"inputs": "hello", "model": "other-model"})
        assert status == 200, body
        assert other.texts_computed == ["hello"]
        status, body, _ = await post(client, "/embed", {"inputs": "hello", "model": "missing"})
        assert_tei_error(status, body, 404, "Validation", "'other-model'")
    for model in models:
        model.batcher.close()


# -- tokenizer routes, info, documentation ----------------------------------------------------------


async def test_tokenize_gives_each_inputs_tokens_with_byte_offsets(client: Client) -> None:
    status, body, _ = await post(client, "/tokenize", {"inputs": ["héllo world", "x"]})
    assert status == 200, body
    first = body[0]
    assert [token["text"] for token in first] == ["[CLS]", "héllo", "world", "[SEP]"]
    assert first[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert (first[1]["start"], first[1]["stop"], first[2]["start"]) == (0, 6, 7)  # é is two bytes
    status, body, _ = await post(client, "/tokenize", {"inputs": "x", "add_special_tokens": False})
    assert [token["text"] for token in body[0]] == ["x"]


async def test_decode_gives_each_id_lists_text(client: Client) -> None:
    status, body, _ = await post(client, "/decode", {"ids": [101, 1000, 102]})
    assert (status, body) == (200, ["[WORD]"])
    status, body, _ = await post(
        client, "/decode", {"ids": [[101, 1000], [1000]], "skip_special_tokens": False}
    )
    assert (status, body) == (200, ["[CLS] [WORD]", "[WORD]"])


@pytest.mark.parametrize(
    ("path", "body", "status", "error_type", "words"),
    [
        ("/tokenize", {"inputs": []}, 400, "Empty", "cannot be empty"),
        ("/tokenize", {"inputs": ["a"] * 5}, 422, "Validation", "batch size 5 >"),
        ("/tokenize", {"inputs": "a", "prompt_name": "query"}, 422, "Validation", "prompt"),
        ("/decode", {"ids": []}, 400, "Empty", "`input_ids` cannot be empty"),
        ("/decode", {"ids": [[1], []]}, 400, "Empty", "`input_ids` cannot be empty"),
        ("/decode", {"ids": [[1]] * 5}, 422, "Validation", "batch size 5 >"),
        ("/decode", {"ids": [-1]}, 422, "Validation", "ids"),
        ("/decode", {"ids": "abc"}, 422, "Validation", "ids"),
    ],
)
async def test_bad_tokenizer_bodies_get_teis_errors(
    client: Client, path: str, body: Any, status: int, error_type: str, words: str
) -> None:
    got, answer, _ = await post(client, path, body)
    assert_tei_error(got, answer, status, error_type, words)


async def test_info_describes_the_default_model_as_tei_does(client: Client) -> None:
    response = await client.get("/info")
    info = await response.get_json()
    assert response.status_code == 200, info
    assert info["model_id"] == "fake-model" and info["model_sha"] is None
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 8
    assert info["max_client_batch_size"] == MAX_CLIENT_BATCH
    assert info["max_batch_requests"] == SETTINGS.max_batch_size
    assert info["max_batch_tokens"] == 4096
    assert info["auto_truncate"] is True
    assert isinstance(info["version"], str) and info["version"]


async def test_get_root_is_still_the_index(client: Client) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert (await response.get_json())["name"] == "trio-infer"


async def test_openapi_documents_both_embed_shapes_and_teis_routes(client: Client) -> None:
    document = await (await client.get("/openapi.json")).get_json()
    body = document["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    titles = [schema["title"] for schema in body["oneOf"]]
    assert titles == ["EmbedRequest", "TEIEmbedRequest"]
    assert "truncation_direction" in body["oneOf"][1]["properties"]
    for path, method in [("/", "post"), ("/tokenize", "post"), ("/decode", "post"), ("/info", "get")]:
        assert method in document["paths"][path], path
    tei_error = document["paths"]["/"]["post"]["responses"]["429"]["content"]["application/json"]["schema"]
    assert tei_error["title"] == "TEIErrorResponse"


async def test_prompt_name_and_encoding_format_on_teis_body(
    service: EmbeddingService, client: Client
) -> None:
    """TEI's body takes the same prompts and compact formats as the other APIs: the prompt is
    prepended before tokenizing; int8/binary quantize as sentence-transformers does."""
    from sentence_transformers.quantization import quantize_embeddings

    model = service.default
    model.prompts = {"query": "query: ", "passage": "passage: "}
    model.calibration_vectors = np.stack([text_vector(f"calibration {i}") for i in range(64)])
    status, body, _ = await post(client, "/embed", {"inputs": ["a b"], "prompt_name": "query"})
    assert status == 200 and np.allclose(body[0], expected("query: a b"), atol=1e-6)
    status, body, _ = await post(client, "/", {"inputs": "a b", "prompt_name": "nope"})
    assert_tei_error(status, body, 422, "Validation", "query")
    for precision in ("int8", "binary"):
        status, body, _ = await post(client, "/embed", {"inputs": ["a b"], "encoding_format": precision})
        assert status == 200, body
        ranges = np.vstack([model.calibration_vectors.min(0), model.calibration_vectors.max(0)])
        want = quantize_embeddings(np.array([expected("a b")], dtype=np.float32), precision, ranges=ranges)
        assert body == want.tolist(), precision
    status, body, _ = await post(
        client, "/embed", {"inputs": "a", "encoding_format": "int8", "normalize": False}
    )
    assert_tei_error(status, body, 422, "Validation", "normalize")
    status, body, _ = await post(client, "/embed", {"inputs": "a", "encoding_format": "INT8"})
    assert_tei_error(status, body, 422, "Validation")
