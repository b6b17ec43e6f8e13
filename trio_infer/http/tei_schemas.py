"""Request and response bodies of TEI's API (Hugging Face text-embeddings-inference), as pydantic v2
models; they also generate /openapi.json.

TEI's own names and defaults, with one difference of default: `truncate` is true (this server runs
as TEI's `--auto-truncate` does, like its `/v1/embeddings`), and `GET /info` says so.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel

from .schemas import ENCODING_FORMAT_DESCRIPTION
from .vectors import EncodingFormat

# TEI's spellings (serde aliases in router/src/http/types.rs): "Left"/"left" and "Right"/"right".
TruncationDirection = Literal["Left", "Right", "left", "right"]


def _integral(value: object) -> object:
    """JSON Schema's integers include 7939.0: take an integral float as the integer it is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


TokenId = Annotated[int, BeforeValidator(_integral), Field(ge=0, le=2**32 - 1)]  # TEI's ids are u32
# What the handlers accept, for the OpenAPI schema: a text is not empty, a list holds 1 to
# --max-client-batch-size texts (32 by default; the handlers answer TEI's 400/422 otherwise).
DEFAULT_MAX_CLIENT_BATCH = 32
_TEXT_SCHEMA = {"type": "string", "minLength": 1}
_INPUTS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        _TEXT_SCHEMA,
        {"type": "array", "items": _TEXT_SCHEMA, "minItems": 1, "maxItems": DEFAULT_MAX_CLIENT_BATCH},
    ]
}

_MODEL = Field(
    default=None,
    description="A served model's name (see GET /v1/models); the default model when absent. An "
    "extension of TEI's body for servers with several models: 404 for a name the server does not serve",
    examples=[None],
)
_PROMPT_NAME = Field(
    default=None,
    description="A prompt of the model (its sentence-transformers `prompts`, or --prompt) to prepend "
    "before tokenizing; null: the model's default prompt, if any. A name the model lacks is a 422",
    examples=[None],
)


class TeiEmbedRequest(BaseModel):
    """TEI's `POST /embed` (and `POST /`) body."""

    model_config = ConfigDict(extra="forbid", strict=True, title="TEIEmbedRequest")

    inputs: str | list[str] = Field(
        description="A text or a list of texts (1 to --max-client-batch-size, default 32)",
        examples=["What is Deep Learning?", ["What is Deep Learning?", "Trio is a Python library."]],
        json_schema_extra=_INPUTS_SCHEMA,
    )
    normalize: bool = Field(default=True, description="Unit-length vectors (false: before normalising)")
    truncate: bool | None = Field(
        default=None,
        description="Cut a text over the model's token limit (the default, null, is true here); "
        "false: such a text is a 422",
    )
    truncation_direction: TruncationDirection = Field(
        default="Right",
        description="Which end of a long text is cut off: Right keeps its start, Left its end",
    )
    prompt_name: str | None = _PROMPT_NAME
    dimensions: int | None = Field(
        default=None,
        description="Keep the first `dimensions` components (then normalise, with `normalize`); "
        "1 <= N <= the model's dimension, else 422",
    )
    model: str | None = _MODEL
    encoding_format: EncodingFormat = Field(default="float", description=ENCODING_FORMAT_DESCRIPTION)


def _one_of(title: str, description: str, models: list[type[BaseModel]], **kwargs: Any) -> dict[str, Any]:
    """A schema that is exactly one of `models`' schemas (their shared definitions merged)."""
    schemas = [model.model_json_schema(**kwargs) for model in models]
    defs: dict[str, Any] = {}
    for schema in schemas:
        defs.update(schema.pop("$defs", {}))
    result: dict[str, Any] = {"title": title, "description": description, "oneOf": schemas}
    if defs:
        result["$defs"] = defs
    return result


class TeiEmbedResponse(RootModel[list[list[float] | list[int] | str]]):
    """One vector per input, in order; a list even for a single string."""

    model_config = ConfigDict(title="TEIEmbedResponse")


class EmbedBody(RootModel[Any]):
    """`POST /embed` takes the native body (`input_text`) or TEI's (`inputs`): the one it names.
    Only documents the union: the route's `choose_body` picks the model that validates a body."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        from .schemas import EmbedRequest

        return _one_of(
            "EmbedBody",
            "The native body (`input_text`: one text, answered `{embedding, model}`) or TEI's "
            "(`inputs`: a text or a list, answered with a list of vectors). A body with both fields, "
            "or neither, is a 422 in the native error shape.",
            [EmbedRequest, TeiEmbedRequest],
            **kwargs,
        )


class EmbedAnswer(RootModel[Any]):
    """`POST /embed`'s answer, in the shape of its body."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        from .schemas import EmbedResponse

        return _one_of(
            "EmbedAnswer",
            "`{embedding, model}` for the native body; a list of vectors for TEI's",
            [EmbedResponse, TeiEmbedResponse],
            **kwargs,
        )


class EmbedError(RootModel[Any]):
    """`POST /embed`'s error body, in the shape of its request body."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        from .schemas import ErrorResponse

        return _one_of(
            "EmbedError",
            "`{error, detail}` for the native body (and for a body of neither shape); TEI's "
            "`{error, error_type}` for TEI's",
            [ErrorResponse, TeiErrorResponse],
            **kwargs,
        )


class TeiTokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, title="TEITokenizeRequest")

    inputs: str | list[str] = Field(
        description="A text or a list of texts (1 to --max-client-batch-size)",
        examples=["test"],
        json_schema_extra=_INPUTS_SCHEMA,
    )
    add_special_tokens: bool = Field(default=True, description="Include the model's special tokens")
    prompt_name: str | None = _PROMPT_NAME
    model: str | None = _MODEL


class TeiToken(BaseModel):
    model_config = ConfigDict(title="TEIToken")

    id: int = Field(examples=[1037])
    text: str = Field(description="The token's piece of the text, or the special token", examples=["test"])
    special: bool = Field(examples=[False])
    start: int | None = Field(description="UTF-8 byte offset of the piece (null: special)", examples=[0])
    stop: int | None = Field(description="UTF-8 byte offset past the piece (null: special)", examples=[4])


class TeiTokenizeResponse(RootModel[list[list[TeiToken]]]):
    """Per input, its tokens in order."""

    model_config = ConfigDict(title="TEITokenizeResponse")


class TeiDecodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, title="TEIDecodeRequest")

    ids: list[TokenId] | list[list[TokenId]] = Field(
        description="Token ids, or a list of 1 to --max-client-batch-size id lists (none empty)",
        examples=[[101, 3231, 102]],
        json_schema_extra={
            "anyOf": [
                {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
                    "minItems": 1,
                },
                {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
                        "minItems": 1,
                    },
                    "minItems": 1,
                    "maxItems": DEFAULT_MAX_CLIENT_BATCH,
                },
            ]
        },
    )
    skip_special_tokens: bool = Field(default=True, description="Leave the special tokens out")
    model: str | None = _MODEL


class TeiDecodeResponse(RootModel[list[str]]):
    """Per id list, its text."""

    model_config = ConfigDict(title="TEIDecodeResponse")


class TeiPooling(BaseModel):
    pooling: str = Field(description="The model's pooling (cls, mean, last_token, ...)", examples=["mean"])


class TeiModelType(BaseModel):
    embedding: TeiPooling


class TeiInfo(BaseModel):
    """TEI's `GET /info` fields that apply to this server (the default model, or `?model=`)."""

    model_config = ConfigDict(title="TEIInfo", protected_namespaces=())

    model_id: str = Field(examples=["sentence-transformers/all-MiniLM-L6-v2"])
    model_sha: str | None = Field(description="Always null: models are not pinned to a hub revision")
    model_dtype: str = Field(examples=["float32"])
    served_model_name: str = Field(description="The name clients send as `model`")
    model_type: TeiModelType
    max_concurrent_requests: int
    max_input_length: int = Field(description="The model's token limit")
    max_batch_tokens: int = Field(description="Padded tokens per forward pass (calibrated or configured)")
    max_batch_requests: int | None = Field(description="Texts per forward pass (--max-batch-size)")
    max_client_batch_size: int
    auto_truncate: bool = Field(description="Always true: a long text is truncated unless truncate: false")
    tokenization_workers: int = Field(description="Threads tokenizing for the batcher (one)")
    version: str
    sha: str | None = Field(description="Always null")
    docker_label: str | None = Field(description="Always null")


class TeiErrorResponse(BaseModel):
    """TEI's error body."""

    model_config = ConfigDict(title="TEIErrorResponse")

    error: str = Field(examples=["batch size 33 > maximum allowed batch size 32"])
    error_type: Literal["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"] = Field(
        examples=["Validation"]
    )
