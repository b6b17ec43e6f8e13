"""Request and response bodies of the native API (pydantic v2); they also generate /openapi.json."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo

from .vectors import EncodingFormat

# /embed's default --max-input-chars; /v1/embeddings takes any length (the model truncates).
MAX_TEXT_CHARS = 1024
# The validation context key that carries the running server's --max-input-chars.
MAX_INPUT_CHARS = "max_input_chars"


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty or whitespace only")
    return text


# What `_not_blank` accepts, for the OpenAPI schema: some character that is not whitespace as Python's
# `str.isspace` defines it (which, unlike a JSON Schema `\S`, counts U+001C-U+001F and U+0085).
NOT_BLANK_PATTERN = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"

Text = Annotated[
    str,
    Field(
        description="Not empty, not whitespace only",
        # minLength is documented only: `_not_blank` refuses "" with the same words as "   ".
        json_schema_extra={"minLength": 1, "pattern": NOT_BLANK_PATTERN},
    ),
    AfterValidator(_not_blank),
]


def _within_limit(text: str, info: ValidationInfo) -> str:
    context = info.context if isinstance(info.context, dict) else {}
    limit = int(context.get(MAX_INPUT_CHARS, MAX_TEXT_CHARS))
    if len(text) > limit:
        raise ValueError(f"String should have at most {limit} characters")
    return text


PROMPT_NAME_DESCRIPTION = (
    "A prompt of the model (its config_sentence_transformers.json, or --prompt NAME=TEXT) prepended "
    "to the text before tokenizing, as sentence-transformers' encode(prompt_name=...); the model's "
    "default prompt when absent (see --default-prompt-name). 400 naming the model's prompts for a "
    "name it lacks"
)
ENCODING_FORMAT_DESCRIPTION = (
    "`float` (default): float32 components; `base64`: their little-endian bytes, base64-encoded; "
    "`int8`/`uint8`: one integer per dimension (-128..127 / 0..255), each dimension's range from "
    "the model's vectors of the calibration texts shipped with trio-infer; `binary`/`ubinary`: the "
    "sign bits packed 8 dimensions a byte, one integer per byte (-128..127 / 0..255). The same values "
    "as sentence-transformers' quantize_embeddings. Exact lower-case names only"
)


class EmbedRequest(BaseModel):
    """Validate with `context={MAX_INPUT_CHARS: settings.max_input_chars}` (default 1024)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input_text: Annotated[Text, AfterValidator(_within_limit)] = Field(
        description="1 to --max-input-chars (default 1024) characters, not whitespace only",
        examples=["The quick brown fox jumps over the lazy dog."],
        json_schema_extra={"minLength": 1, "pattern": NOT_BLANK_PATTERN, "maxLength": MAX_TEXT_CHARS},
    )
    model: str | None = Field(
        default=None,
        description="A served model's name (see GET /v1/models); the default model when absent. "
        "404 model_not_found for a name the server does not serve",
        examples=["sentence-transformers/all-MiniLM-L6-v2"],
    )
    prompt_name: str | None = Field(
        default=None,
        description=PROMPT_NAME_DESCRIPTION,
        examples=["query"],
    )
    encoding_format: EncodingFormat = Field(default="float", description=ENCODING_FORMAT_DESCRIPTION)


class EmbedResponse(BaseModel):
    embedding: list[float] | list[int] | str = Field(
        description="The text's embedding vector, in the requested `encoding_format`"
    )
    model: str = Field(
        description="The model that answered", examples=["sentence-transformers/all-MiniLM-L6-v2"]
    )


class ErrorResponse(BaseModel):
    error: str = Field(description="Short machine-readable kind", examples=["validation_error"])
    detail: str = Field(description="What was wrong", examples=["input_text: field required"])


class CacheHealth(BaseModel):
    capacity_bytes: int = Field(description="--cache-size (0: the cache is off)")
    bytes: int = Field(description="Bytes held: vectors and per-entry overhead")
    entries: int
    hit_ratio: float | None = Field(description="Hits / lookups since start (null before the first)")


class ModelHealth(BaseModel):
    status: Literal["healthy", "unhealthy"]
    device: str
    backend: str
    precision: str
    queue_size: int = Field(description="Texts admitted and not yet in a forward pass, every class")
    queues: dict[str, int] = Field(description="The same, per priority class (interactive, bulk)")
    inflight_batches: int
    cache: CacheHealth
    max_batch_tokens: int
    reason: str | None = Field(default=None, description="Why the model is unhealthy (only then)")


class HealthResponse(BaseModel):
    """The default model's fields at the top level; every model's under `models`."""

    status: Literal["healthy", "unhealthy"]
    model: str = Field(description="The default model's name")
    device: str
    backend: str
    precision: str
    queue_size: int
    queues: dict[str, int]
    inflight_batches: int
    cache: CacheHealth
    max_batch_tokens: int
    reason: str | None = Field(default=None, description="Why the server is unhealthy (only then)")
    models: dict[str, ModelHealth] = Field(description="Every served model, by name")


class ReadyResponse(BaseModel):
    status: Literal["ready", "not ready"]


# A body with thousands of unknown (or very long) keys must not get an error as large as itself.
_MAX_REPORTED_ERRORS = 5
_MAX_LOCATION_CHARS = 100
# pydantic's wording for these names the model class ("... instance of EmbedRequest"): internal names.
_NOT_AN_OBJECT = frozenset({"model_type", "model_attributes_type", "dict_type"})


def describe_validation_error(error: ValidationError) -> tuple[str, str | None]:
    """A one-line, client-safe description of what failed, and the first offending field."""
    parts = []
    first_field: str | None = None
    for item in error.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in item["loc"])[:_MAX_LOCATION_CHARS]
        if first_field is None and location:
            first_field = location
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "field required"
        elif item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] in _NOT_AN_OBJECT:
            message = "must be a JSON object" if location else "the body must be a JSON object"
        parts.append(f"{location}: {message}" if location else message)
    if len(parts) > _MAX_REPORTED_ERRORS:
        parts[_MAX_REPORTED_ERRORS:] = [f"and {len(parts) - _MAX_REPORTED_ERRORS} more errors"]
    return "; ".join(parts) or "invalid request body", first_field
