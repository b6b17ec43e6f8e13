"""Long inputs: `/v1/embeddings` truncates at the model's limit (or refuses with `"truncate": false`),
`/embed` keeps its character limit (`--max-input-chars`), and tokenizing costs what the model reads.

The tokenizer checks use the bundled all-MiniLM-L6-v2 in-process (its ids must equal the tokenizer's
own truncation); the HTTP checks run real servers: the debug model (one pseudo-token per word, limit
512) and, for `usage`, the real model.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from tests.fakes import FakeEmbedder, make_service
from tests.serverproc import Response, ServerProcess, build_request, post_json, request
from trio_infer.config import Settings, load_settings
from trio_infer.core.errors import InputTooLong
from trio_infer.models import truncation
from trio_infer.models.debug import DebugEmbedder

DEBUG_LIMIT = DebugEmbedder.max_tokens
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "internationalization",
    "Übermäßig",
    "中文字符",
    "https://example.com/a/b?c=d",
    "12345.678",
    "émigré",
    "naïve",
]


# 900 kB of plain ASCII: its JSON body stays under the default 1 MiB limit.
HUGE = ("lorem ipsum dolor sit amet " * 40_000)[:900_000]


def words(count: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(count))


# -- the bounded head ----------------------------------------------------------------------------------


def test_head_cuts_at_whitespace_and_never_splits_a_word() -> None:
    text = "alpha beta gamma delta"
    assert truncation.head(text, 100) == (text, False)
    assert truncation.head(text, 13) == ("alpha beta", True)  # "gamma" would be split at 13
    assert truncation.head("x" * 500, 200) == ("x" * 200, True)  # no whitespace near: cut where it is


def test_tokenizing_a_huge_text_reads_only_a_bounded_head() -> None:
    read: list[int] = []

    def content_ids(texts: list[str]) -> list[list[int]]:
        read.extend(len(text) for text in texts)
        return [[7] * len(text.split()) for text in texts]

    limit = 254
    bound = limit * truncation.CHARS_PER_TOKEN
    huge = words(150_000)  # about 900 kB
    assert len(huge) > 800_000
    ((ids, total, exact),) = truncation.tokenize_heads([huge], content_ids, limit)
    assert ids == [7] * limit
    assert total > limit and not exact
    assert sum(read) <= bound
    # Whitespace padding makes the head short of tokens: it grows, but only to a fixed multiple.
    read.clear()
    padded = " " * 900_000 + huge
    truncation.tokenize_heads([padded], content_ids, limit)
    assert sum(read) <= 2 * bound * truncation.MAX_HEAD_FACTOR


def test_tail_cuts_at_whitespace_and_never_splits_a_word() -> None:
    text = "alpha beta gamma delta"
    assert truncation.tail(text, 100) == (text, False)
    assert truncation.tail(text, 13) == ("gamma delta", True)  # "beta" would be split at 13 from the end
    assert truncation.tail("x" * 500, 200) == ("x" * 200, True)


def test_tails_keep_the_last_tokens_of_a_long_text_and_read_a_bounded_tail() -> None:
    read: list[int] = []

    def content_ids(texts: list[str]) -> list[list[int]]:
        read.extend(len(text) for text in texts)
        return [[int(word[1:]) for word in text.split()] for text in texts]

    text = " ".join(f"w{i}" for i in range(150_000))
    limit = 254
    (head, _, _), (tail, total_tail, exact) = truncation.tokenize_heads(
        [text, text], content_ids, limit, [False, True]
    )
    assert head == list(range(limit))
    assert tail == list(range(150_000 - limit, 150_000))
    assert total_tail > limit and not exact
    assert sum(read) <= 2 * limit * truncation.CHARS_PER_TOKEN
    short = truncation.tokenize_heads(["w1 w2"], content_ids, limit, [True])
    assert short == [([1, 2], 2, True)]


@pytest.fixture(scope="module")
def model() -> Any:
    from trio_infer.models.sentence_transformer import SentenceTransformerModel

    return SentenceTransformerModel(Settings())


@pytest.mark.parametrize("count", [1, 50, 200, 253, 254, 255, 300, 2000, 100_000])
def test_real_model_ids_equal_the_tokenizers_own_truncation(model: Any, count: int) -> None:
    text = words(count, seed=count)
    tokenizer = model._model.tokenizer
    expected = tokenizer(text, truncation=True, max_length=model.max_tokens)["input_ids"]
    (ids,) = model.tokenize([text])
    assert list(ids) == expected
    if ids.exact:
        assert ids.total == len(tokenizer(text, truncation=False, verbose=False)["input_ids"])
    else:
        assert ids.total > model.max_tokens  # a lower bound, already over the limit


@pytest.mark.parametrize("count", [1, 200, 254, 255, 300, 2000, 100_000])
def test_real_model_left_ids_equal_the_tokenizers_left_truncation(model: Any, count: int) -> None:
    """TEI's `truncation_direction: Left`: the ids a tokenizer with `truncation_side="left"` gives."""
    import copy

    text = words(count, seed=count)
    tokenizer = copy.deepcopy(model._model.tokenizer)
    tokenizer.truncation_side = "left"
    expected = tokenizer(text, truncation=True, max_length=model.max_tokens)["input_ids"]
    (ids,) = model.tokenize([text], [True])
    assert list(ids) == expected


# -- the batcher -------------------------------------------------------------------------------------------


class TruncatingFake(FakeEmbedder):
    """The fake model with a limit of 8 tokens, tokenizing as the real models do (TokenIds)."""

    max_tokens = 8

    async def tokenize(self, texts: Sequence[str], tails: Sequence[bool] = ()) -> list[list[int]]:
        await trio.lowlevel.checkpoint()

        def content(heads: list[str]) -> list[list[int]]:
            return [[7] * len(text.split()) for text in heads]

        heads = truncation.tokenize_heads(texts, content, self.max_tokens - 2, tails)
        return [
            truncation.token_ids(ids, total, exact, lambda c: [101, *c, 102]) for ids, total, exact in heads
        ]


async def test_batcher_truncates_or_refuses_before_any_forward_pass(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    embedder = TruncatingFake()
    service = make_service(embedder)
    await nursery.start(service.batcher.run)
    long_text = " ".join(f"w{i}" for i in range(20))  # 22 tokens with the markers
    jobs = await service.embed(["one two", long_text])
    assert [job.n_tokens for job in jobs] == [4, 8]  # what the model read
    assert jobs[1].text_tokens == 22
    embedder.batches.clear()
    with pytest.raises(InputTooLong, match="23 tokens, over this model's limit of 8"):
        await service.embed(["three four", long_text + " again"], truncate=False)
    assert long_text + " again" not in embedder.texts_computed
    fits = await service.embed(["a b c d e f"], truncate=False)  # exactly 8 tokens
    assert fits[0].n_tokens == 8
    # A lone text (the one-call tokenize-and-embed path when truncating) is refused the same way.
    alone = long_text + " alone"
    with pytest.raises(InputTooLong, match="23 tokens"):
        await service.embed([alone], truncate=False)
    assert alone not in embedder.texts_computed
    (truncated,) = await service.embed([alone])
    assert truncated.n_tokens == 8 and alone in embedder.texts_computed


# -- settings ------------------------------------------------------------------------------------------


def test_max_input_chars_flag_env_and_range() -> None:
    assert load_settings([], env={}).max_input_chars == 1024
    assert load_settings([], env={"MAX_INPUT_CHARS": "4096"}).max_input_chars == 4096
    assert load_settings(["--max-input-chars", "10"], env={}).max_input_chars == 10
    for bad in (
        ["--max-input-chars", "0"],
        ["--max-input-chars", "many"],
        ["--max-input-chars", "1e3"],
    ):
        with pytest.raises(SystemExit):
            load_settings(bad, env={})


# -- HTTP, debug model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def debug_server() -> Iterator[ServerProcess]:
    with ServerProcess(args=["--max-input-chars", "2000", "--request-timeout", "60"]) as proc:
        yield proc


async def embeddings(port: int, payload: Any) -> Response:
    return await post_json(port, "/v1/embeddings", {"model": "debug", **payload}, limit=60)


async def test_v1_truncates_a_900_kb_text_by_default(debug_server: ServerProcess) -> None:
    response = await embeddings(debug_server.port, {"input": ["short text", HUGE]})
    assert response.status == 200, response.body[:300]
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == (2 + 2) + DEBUG_LIMIT  # what the model read, not the text's length


async def test_v1_truncate_false_refuses_a_long_text_in_openais_shape(debug_server: ServerProcess) -> None:
    fits = words(DEBUG_LIMIT - 2)
    assert (await embeddings(debug_server.port, {"input": fits, "truncate": False})).status == 200
    over = words(DEBUG_LIMIT)  # 512 words: 514 tokens with the two markers
    response = await embeddings(debug_server.port, {"input": ["ok", over], "truncate": False})
    assert response.status == 400, response.body[:300]
    error = response.json()["error"]
    assert error["code"] == "input_too_long"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "input.1"
    assert f"{DEBUG_LIMIT + 2} tokens" in error["message"]
    assert f"limit of {DEBUG_LIMIT}" in error["message"]
    huge = await embeddings(debug_server.port, {"input": HUGE, "truncate": False})
    assert huge.status == 400
    assert "at least" in huge.json()["error"]["message"]  # only a head was counted


async def test_embed_keeps_a_character_limit_set_by_the_flag(debug_server: ServerProcess) -> None:
    port = debug_server.port
    assert (await post_json(port, "/embed", {"input_text": "x" * 2000})).status == 200
    refused = await post_json(port, "/embed", {"input_text": "x" * 2001})
    assert refused.status == 422
    assert "at most 2000 characters" in refused.json()["detail"]


async def test_embed_default_limit_is_1024() -> None:
    with ServerProcess() as proc:
        assert (await post_json(proc.port, "/embed", {"input_text": "é" * 1024})).status == 200
        assert (await post_json(proc.port, "/embed", {"input_text": "é" * 1025})).status == 422


async def test_probes_answer_while_huge_texts_are_tokenized(debug_server: ServerProcess) -> None:
    huge = orjson.dumps({"model": "debug", "input": HUGE})
    statuses: list[int] = []

    async def probe() -> None:
        for _ in range(20):
            response = await request(debug_server.port, build_request("GET", "/ready"), limit=30)
            statuses.append(response.status)
            await trio.sleep(0.01)

    async def load() -> None:
        for _ in range(6):
            raw = build_request("POST", "/v1/embeddings", huge)
            assert (await request(debug_server.port, raw, limit=60)).status == 200

    async with trio.open_nursery() as nursery:
        nursery.start_soon(load)
        nursery.start_soon(probe)
    assert statuses == [200] * 20


# -- HTTP, the real model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_server() -> Iterator[ServerProcess]:
    proc = ServerProcess(args=["--request-timeout", "120"], env={"MODEL_NAME": ""})
    proc.start(timeout=180)
    try:
        yield proc
    finally:
        proc.stop(timeout=60)


async def test_real_model_usage_counts_the_tokens_it_read(real_server: ServerProcess, model: Any) -> None:
    long_text = words(5000)
    short_text = "A short sentence."
    payload = {"model": "all-MiniLM-L6-v2", "input": [long_text, short_text]}
    response = await post_json(real_server.port, "/v1/embeddings", payload, limit=120)
    assert response.status == 200, response.body[:300]
    short_tokens = len(model.tokenize([short_text])[0])
    assert response.json()["usage"]["prompt_tokens"] == model.max_tokens + short_tokens
    payload["truncate"] = False
    refused = await post_json(real_server.port, "/v1/embeddings", payload, limit=120)
    assert refused.status == 400
    assert refused.json()["error"]["param"] == "input.0"
    assert f"limit of {model.max_tokens}" in refused.json()["error"]["message"]
