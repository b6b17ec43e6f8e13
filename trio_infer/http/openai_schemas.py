"""Request and response bodies of the OpenAI-compatible API under `/v1` (pydantic v2, in /openapi.json).

They follow OpenAI's `POST /v1/embeddings` and `GET /v1/models` so the official SDKs and the libraries
built on them (LangChain's `OpenAIEmbeddings`, LlamaIndex's `OpenAILikeEmbedding`) work unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ..core.errors import BadRequest
from .schemas import ENCODING_FORMAT_DESCRIPTION, PROMPT_NAME_DESCRIPTION, Text
from .vectors import EncodingFormat

MAX_INPUTS = 2048

TOKEN_IDS_MESSAGE = (
    "input must be a string or a list of strings: token id arrays are not supported, because this "
    "model's tokenizer is not the one that produced them; send the text instead"
)

_Texts = Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]


def _one_or_many(value: Any) -> Any:
    """A single string is a list of one; the response has one embedding either way."""
    return [value] if isinstance(value, str) else value


def _is_token_ids(value: Any) -> bool:
    """Whether `value` is what OpenAI accepts as pre-tokenized input: [int, ...] or [[int, ...], ...]."""

    def ints(items: list[Any]) -> bool:
        return all(isinstance(item, int) and not isinstance(item, bool) for item in items)

    if not isinstance(value, list) or not value:
        return False
    if ints(value):
        return True
    return all(isinstance(item, list) and ints(item) for item in value)


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request. Unknown fields are rejected (422), as OpenAI rejects them, so a
    parameter this server does not implement is never silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(
        description="A served model (see GET /v1/models): its name, the full name it was loaded from, or "
        "the part after the last '/'; 404 model_not_found otherwise",
        examples=["sentence-transformers/all-MiniLM-L6-v2"],
    )
    input: Annotated[_Texts, BeforeValidator(_one_or_many, json_schema_input_type=Text | _Texts)] = Field(
        description=(
            "A text or a list of 1-2048 texts (each not whitespace only, of any length within the body "
            "limit). The model reads each text's first tokens up to its limit (see `truncate`). "
            "Token id arrays are refused (400 token_ids_not_supported)."
        ),
        examples=[["The quick brown fox jumps over the lazy dog.", "A second text"]],
    )
    encoding_format: EncodingFormat | None = Field(
        default=None,
        description=ENCODING_FORMAT_DESCRIPTION
        + " (the official OpenAI SDKs request and decode `base64` by default; the others are extensions)",
    )
    dimensions: int | None = Field(
        default=None,
        description=(
            "Keep only the first N dimensions and re-normalize to unit length; "
            "1 <= N <= the model's dimension, else 400. Applied before `encoding_format`"
        ),
        examples=[128],
    )
    user: str | None = Field(default=None, description="Accepted for compatibility and ignored")
    truncate: bool = Field(
        default=True,
        description=(
            "Extension (as in TEI). true (default): a text over the model's token limit is truncated to "
            "it, and `usage` counts the tokens read; false: such a text gets 400 `input_too_long` "
            "naming its token count and the limit"
        ),
    )
    prompt_name: str | None = Field(
        default=None, description="Extension (as in TEI). " + PROMPT_NAME_DESCRIPTION, examples=["query"]
    )
    input_type: Literal["query", "document", "passage"] | None = Field(
        default=None,
        description=(
            "Extension (as in NVIDIA's and Voyage's APIs): the model's prompt of that name; `document` "
            "and `passage` each fall back on the other where the model has only one. 400 naming the "
            "model's prompts when it has neither; with `prompt_name` too, both must select the same "
            "prompt (else 400)"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_token_ids(cls, data: Any) -> Any:
        if isinstance(data, dict) and _is_token_ids(data.get("input")):
            # Not a ValueError: pydantic lets it through unchanged, and the app answers 400.
            raise BadRequest(TOKEN_IDS_MESSAGE, param="input", code="token_ids_not_supported")
        return data


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int = Field(description="Position of the text in `input`")
    embedding: list[float] | list[int] | str = Field(
        description="The vector: floats, base64 of little-endian float32 with `encoding_format=base64`, "
        "or integers with int8, uint8, binary and ubinary"
    )


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens the model read (its own tokenizer, after truncation)")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str = Field(examples=["sentence-transformers/all-MiniLM-L6-v2"])
    usage: Usage


class ModelObject(BaseModel):
    id: str = Field(examples=["sentence-transformers/all-MiniLM-L6-v2"])
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the server loaded the model")
    owned_by: str = Field(examples=["trio-infer"])


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class OpenAIErrorDetail(BaseModel):
    message: str = Field(examples=["input.0: must not be empty or whitespace only"])
    type: str = Field(examples=["invalid_request_error"])
    param: str | None = Field(default=None, examples=["input.0"])
    code: str | None = Field(default=None, examples=["validation_error"])


class OpenAIErrorResponse(BaseModel):
    """OpenAI's error shape, used for every error under /v1 (with the same statuses as /embed)."""

    error: OpenAIErrorDetail
