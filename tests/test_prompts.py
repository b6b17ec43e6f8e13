"""Prompts: their configuration, the one resolution rule, and their effect on both APIs (fake model).

The fake model's tokens are its whitespace words plus two, so a prompt's words show in `usage`, and
the texts it computed show exactly what the core was given: the prompt-applied text.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from quart.typing import TestClientProtocol as Client

from tests.fakes import FakeEmbedder, make_service, text_vector
from tests.serverproc import ROOT, ServerProcess
from trio_infer.config import Settings, load_settings
from trio_infer.core.errors import BadRequest
from trio_infer.core.service import EmbeddingService
from trio_infer.http.app import create_app
from trio_infer.models import prompts
from trio_infer.models.loading import load_model, load_models
from trio_infer.models.prompts import PromptConfigError, Prompts, configure, from_config, resolve

PROMPTS = {"query": "query: ", "passage": "passage: ", "classify": "Classify the topic: "}
SETTINGS = Settings(request_timeout=5.0, graceful_timeout=2.0)


# ------------------------------------------------------------------------------ configuration
def test_prompt_flag_is_repeatable_and_keeps_text_as_given() -> None:
    settings = load_settings(
        ["--prompt", "query=query: ", "--prompt", "doc=Represent this, please: ", "--prompt", "query=q: "],
        env={},
    )
    assert settings.prompts == (("query", "q: "), ("doc", "Represent this, please: "))


def test_prompts_environment_variable_takes_one_per_line() -> None:
    settings = load_settings([], env={"PROMPTS": "query=query: \npassage=passage, long: "})
    assert dict(settings.prompts) == {"query": "query: ", "passage": "passage, long: "}


@pytest.mark.parametrize("value", ["query", "=query: ", " =x", "two words=x"])
def test_a_prompt_without_a_name_exits_2_naming_the_flag(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_infer", "--prompt", value],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--prompt: must be NAME=TEXT" in result.stderr, result.stderr


def test_flags_add_to_and_replace_the_models_own_prompts() -> None:
    own = from_config({"prompts": {"query": "query: ", "passage": "passage: "}}, where="test")
    merged = configure(own, [("query", "search_query: "), ("classify", "c: ")], None, model="m")
    assert merged == Prompts({"query": "search_query: ", "passage": "passage: ", "classify": "c: "}, None)
    assert configure(own, [], "passage", model="m").default_name == "passage"


def test_the_models_own_default_applies_unless_overridden() -> None:
    own = from_config(
        {"prompts": {"query": "q: ", "passage": "p: "}, "default_prompt_name": "query"}, where="t"
    )
    assert configure(own, [], None, model="m").default_name == "query"
    assert configure(own, [], "passage", model="m").default_name == "passage"


def test_a_default_that_names_no_prompt_is_refused_naming_the_prompts() -> None:
    own = Prompts({"query": "q: ", "passage": "p: "})
    with pytest.raises(PromptConfigError, match=r"--default-prompt-name 'document'.*'passage', 'query'"):
        configure(own, [], "document", model="m")
    with pytest.raises(PromptConfigError, match="its prompts: none"):
        configure(Prompts(), [], "query", model="debug")


def test_the_debug_model_refuses_an_unknown_default_at_load() -> None:
    with pytest.raises(PromptConfigError, match="'nope'"):
        load_model(Settings(model_name="debug", default_prompt_name="nope"))
    loaded = load_model(
        Settings(model_name="debug", prompts=(("query", "q: "),), default_prompt_name="query")
    )
    assert loaded.prompts == Prompts({"query": "q: "}, "query")


@pytest.mark.parametrize(
    "config",
    [{"prompts": ["query: "]}, {"prompts": {"query": 1}}, {"default_prompt_name": 3}],
)
def test_a_malformed_config_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(PromptConfigError):
        from_config(config, where="config_sentence_transformers.json")


# ------------------------------------------------------------------------------ resolution
def _model(texts: dict[str, str], default: str | None = None) -> Any:
    service = make_service(FakeEmbedder())
    model = service.default
    model.prompts, model.default_prompt_name = texts, default
    return model


def test_resolve_follows_sentence_transformers() -> None:
    model = _model(PROMPTS)
    assert resolve(model) == ""  # no default: no prompt
    assert resolve(model, prompt_name="classify") == "Classify the topic: "
    assert resolve(_model(PROMPTS, "query")) == "query: "
    assert resolve(_model(PROMPTS, "query"), prompt_name="passage") == "passage: "
    assert prompts.apply("query: ", ["a", "b"]) == ["query: a", "query: b"]


@pytest.mark.parametrize(
    ("texts", "input_type", "expected"),
    [
        (PROMPTS, "query", "query: "),
        (PROMPTS, "passage", "passage: "),
        (PROMPTS, "document", "passage: "),  # only `passage`: document falls back on it
        ({"query": "q: ", "document": "d: "}, "passage", "d: "),  # and the other way round
        ({"query": "q: ", "document": "d: ", "passage": "p: "}, "document", "d: "),
    ],
)
def test_input_type_maps_to_the_prompt_of_that_name(
    texts: dict[str, str], input_type: str, expected: str
) -> None:
    assert resolve(_model(texts), input_type=input_type) == expected


def test_bad_choices_are_400_naming_the_models_prompts() -> None:
    with pytest.raises(BadRequest, match=r"'nope'.*'classify', 'passage', 'query'") as caught:
        resolve(_model(PROMPTS), prompt_name="nope")
    assert caught.value.param == "prompt_name"
    with pytest.raises(BadRequest, match="its prompts: none") as caught:
        resolve(_model({}), prompt_name="query")
    with pytest.raises(BadRequest, match=r"'query'.*its prompts: 'passage'") as caught:
        resolve(_model({"passage": "p: "}), input_type="query")
    assert caught.value.param == "input_type"
    with pytest.raises(BadRequest, match="select different prompts") as caught:
        resolve(_model(PROMPTS), prompt_name="query", input_type="passage")
    assert resolve(_model(PROMPTS), prompt_name="passage", input_type="document") == "passage: "


# ------------------------------------------------------------------------------ both APIs
@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
async def service(embedder: FakeEmbedder, nursery: trio.Nursery) -> AsyncIterator[EmbeddingService]:
    service = make_service(embedder, SETTINGS)
    service.default.prompts = PROMPTS
    service.default.default_prompt_name = "passage"
    await nursery.start(service.batcher.run)
    service.lifecycle.mark_ready()
    yield service
    service.batcher.close()


@pytest.fixture
async def client(service: EmbeddingService) -> AsyncIterator[Client]:
    async with create_app(service).test_app() as test_app:
        yield test_app.test_client()


async def _v1(client: Client, **body: Any) -> tuple[int, Any]:
    response = await client.post("/v1/embeddings", json={"model": "fake-model", **body})
    return response.status_code, await response.get_json()


async def test_v1_applies_the_chosen_prompt_before_the_model(client: Client, embedder: FakeEmbedder) -> None:
    status, body = await _v1(client, input=["red apples"], prompt_name="classify")
    assert status == 200, body
    assert embedder.texts_computed[-1] == "Classify the topic: red apples"
    assert body["data"][0]["embedding"] == pytest.approx(
        text_vector("Classify the topic: red apples").tolist()
    )
    # usage counts the prompt's tokens: 3 prompt words + 2 text words + 2 special tokens
    assert body["usage"]["prompt_tokens"] == 7


async def test_v1_input_type_and_the_default(client: Client, embedder: FakeEmbedder) -> None:
    assert (await _v1(client, input="apples", input_type="query"))[0] == 200
    assert embedder.texts_computed[-1] == "query: apples"
    assert (await _v1(client, input="apples", input_type="document"))[0] == 200
    assert embedder.texts_computed[-1] == "passage: apples"
    status, body = await _v1(client, input=["one", "two"])  # the default prompt, on every input
    assert status == 200 and body["usage"]["prompt_tokens"] == 2 * 4
    assert sorted(embedder.texts_computed[-2:]) == ["passage: one", "passage: two"]


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"prompt_name": "nope"}, "prompt_name", "its prompts: 'classify', 'passage', 'query'"),
        ({"prompt_name": "query", "input_type": "passage"}, "input_type", "select different prompts"),
    ],
)
async def test_v1_bad_prompt_choices_are_openai_400s(
    client: Client, extra: dict[str, str], param: str, words: str
) -> None:
    status, body = await _v1(client, input="x", **extra)
    assert status == 400
    assert body["error"]["param"] == param and body["error"]["type"] == "invalid_request_error"
    assert words in body["error"]["message"]


async def test_v1_input_type_outside_the_three_is_422(client: Client) -> None:
    status, body = await _v1(client, input="x", input_type="Query")
    assert status == 422 and body["error"]["param"] == "input_type"
    assert "'query', 'document' or 'passage'" in body["error"]["message"]


async def test_embed_takes_prompt_name(client: Client, embedder: FakeEmbedder) -> None:
    response = await client.post("/embed", json={"input_text": "green pears", "prompt_name": "query"})
    assert response.status_code == 200
    assert (await response.get_json())["embedding"] == pytest.approx(
        text_vector("query: green pears").tolist()
    )
    assert embedder.texts_computed[-1] == "query: green pears"
    response = await client.post("/embed", json={"input_text": "green pears", "prompt_name": "nope"})
    body = await response.get_json()
    assert response.status_code == 400 and body["error"] == "bad_request"
    assert "'classify', 'passage', 'query'" in body["detail"]


async def test_a_prompt_on_a_model_without_prompts_is_400(
    embedder: FakeEmbedder, nursery: trio.Nursery
) -> None:
    service = make_service(embedder, SETTINGS)
    await nursery.start(service.batcher.run)
    service.lifecycle.mark_ready()
    async with create_app(service).test_app() as test_app:
        client = test_app.test_client()
        status, body = await _v1(client, input="x", input_type="query")
        assert status == 400 and "its prompts: none" in body["error"]["message"]
        assert body["error"]["param"] == "input_type"
        response = await client.post("/embed", json={"input_text": "x", "prompt_name": "query"})
        assert response.status_code == 400
    service.batcher.close()
    assert embedder.texts_computed == []  # refused before anything reached the model


async def test_openapi_shows_the_prompt_and_format_fields(client: Client) -> None:
    document = await (await client.get("/openapi.json")).get_json()

    def request_fields(path: str) -> dict[str, Any]:
        schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        properties: dict[str, Any] = schema["properties"]
        return properties

    v1 = request_fields("/v1/embeddings")
    assert {"prompt_name", "input_type", "encoding_format"} <= set(v1)
    assert "passage" in str(v1["input_type"]) and "ubinary" in str(v1["encoding_format"])
    # POST /embed takes the native body or TEI's: both carry the fields.
    schema = document["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    for shape in schema["oneOf"]:
        if "$ref" in shape:
            shape = document["components"]["schemas"][shape["$ref"].rsplit("/", 1)[-1]]
        fields = shape["properties"]
        assert {"prompt_name", "encoding_format"} <= set(fields) and "int8" in str(fields["encoding_format"])


def test_prompt_flags_apply_to_every_served_model() -> None:
    settings = load_settings(
        [
            "--model",
            "a=debug",
            "--model",
            "b=debug",
            "--prompt",
            "query=q: ",
            "--default-prompt-name",
            "query",
        ],
        env={},
    )
    loaded = load_models(settings)
    assert [item.loaded.prompts for item in loaded] == [Prompts({"query": "q: "}, "query")] * 2


def test_an_unknown_default_prompt_stops_the_start_naming_the_prompts() -> None:
    proc = ServerProcess(args=["--prompt", "query=q: ", "--default-prompt-name", "passage"])
    with pytest.raises(RuntimeError, match="server exited with 1"):
        proc.start(timeout=60)
    assert proc.proc is not None and proc.proc.wait(timeout=60) == 1
    assert (
        "--default-prompt-name 'passage' is not a prompt of model debug; its prompts: 'query'" in proc.log()
    )
