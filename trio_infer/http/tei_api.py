"""TEI's API (Hugging Face text-embeddings-inference): `POST /embed` with TEI's body (the route is the
native API's: it tells the two bodies apart by their fields), `POST /`, `POST /tokenize`,
`POST /decode` and `GET /info`, so TEI's clients work unchanged.

Statuses and messages are TEI's (router/src/http/server.rs, core/src/tokenization.rs), and so is the
error body `{"error", "error_type"}` (mapped in `responses.error_reply`). Where this server differs:
`truncate` defaults to true (TEI's `--auto-truncate`); unknown fields are a 422 (TEI ignores them);
token ids as `inputs` are a 422 (send text); `model` picks one of several served models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import BaseModel

from ..core import errors
from ..core.jobs import Job, Vector
from ..core.service import EmbeddingService, ServedModel
from ..core.vectors import finish
from ..models import prompts
from ..models.tokens import AsyncTokenizer, tokenizer_of
from . import access
from .index import version
from .responses import ErrorShape, Reply, json_reply
from .routes import Request, Route
from .schemas import EmbedRequest
from .tei_schemas import (
    TeiDecodeRequest,
    TeiDecodeResponse,
    TeiEmbedRequest,
    TeiEmbedResponse,
    TeiErrorResponse,
    TeiInfo,
    TeiTokenizeRequest,
    TeiTokenizeResponse,
)
from .vectors import encode

_TIMEOUT_HEADER = access.TIMEOUT_HEADER.lower()
# TEI's own words (core/src/lib.rs prefixes the errors its tokenizer and infer steps raise).
_INVALID = "Input validation error: "
_EMBED_ERRORS = (400, 401, 404, 408, 413, 415, 422, 424, 429, 503, 504)
_TOKENIZER_ERRORS = (400, 401, 404, 408, 413, 415, 422, 500)
TOKENIZATION_WORKERS = 1  # the batcher tokenizes in one thread (and the tokenizer routes in another)


def choose_embed_body(value: object) -> tuple[type[BaseModel], ErrorShape]:
    """`POST /embed`'s body: the native one (`input_text`) or TEI's (`inputs`), by the field it has.
    Raises ValidationFailed (422, native shape) for a body with both fields or neither."""
    if isinstance(value, dict):
        native, tei = "input_text" in value, "inputs" in value
        if native != tei:
            return (EmbedRequest, ErrorShape.NATIVE) if native else (TeiEmbedRequest, ErrorShape.TEI)
        detail = "both input_text and inputs" if native else "neither input_text nor inputs"
        raise errors.ValidationFailed(
            f'the body has {detail}: send the native body {{"input_text": "..."}} '
            f'or TEI\'s {{"inputs": "..." or ["...", ...]}}',
            param="inputs" if native else None,
        )
    return EmbedRequest, ErrorShape.NATIVE  # not an object: the native model's own 422 says so


class TeiApi:
    """TEI's handlers over `service`; holds no state of its own beyond the settings it reads."""

    def __init__(self, service: EmbeddingService) -> None:
        self.service = service
        self.max_client_batch_size = service.settings.max_client_batch_size

    # -- the one place a TEI body becomes texts, and vectors become TEI's answer ---------------------

    def texts(self, model: ServedModel, inputs: str | list[str], prompt_name: str | None) -> list[str]:
        """The texts to admit for TEI's `inputs`, the prompt `prompt_name` names (else the model's
        default) prepended; raises TEI's errors for an empty list or text, a list over
        --max-client-batch-size, and a prompt the model lacks (422, as TEI's)."""
        texts = [inputs] if isinstance(inputs, str) else inputs
        self._check_batch(len(texts), "inputs")
        if any(not text for text in texts):
            raise errors.EmptyInput(f"{_INVALID}`inputs` cannot be empty", param="inputs")
        try:
            prompt = prompts.resolve(model, prompt_name=prompt_name)
        except errors.BadRequest as error:
            raise errors.ValidationFailed(f"{_INVALID}{error.detail}", param="prompt_name") from None
        return prompts.apply(prompt, texts)

    def _check_batch(self, size: int, field: str) -> None:
        if size == 0:
            raise errors.EmptyInput(f"`{field}` cannot be empty", param=field)
        if size > self.max_client_batch_size:
            raise errors.ValidationFailed(
                f"batch size {size} > maximum allowed batch size {self.max_client_batch_size}",
                param=field,
            )

    @staticmethod
    def vectors(jobs: Sequence[Job], *, normalize: bool, dimensions: int | None) -> list[Vector]:
        """TEI's vectors: the first `dimensions` components, then unit length with `normalize` (TEI
        normalises after cutting, whatever the model's own pipeline does)."""
        result = []
        for job in jobs:
            assert job.vector is not None  # a finished job without an error has its vector
            vector = job.vector if dimensions is None else job.vector[:dimensions]
            result.append(finish(vector, normalize=normalize))
        return result

    @staticmethod
    def answer(model: ServedModel, vectors: list[Vector], body: TeiEmbedRequest) -> Reply:
        """TEI's `/embed` answer: a JSON list of vectors in `encoding_format` (the one place vectors
        are encoded). The compact formats quantize unit vectors with the model's ranges, so they
        need `normalize` (422 otherwise)."""
        if body.encoding_format not in ("float", "base64") and not body.normalize:
            raise errors.ValidationFailed(
                f"{_INVALID}`encoding_format` {body.encoding_format} quantizes unit vectors: it needs "
                "`normalize: true`",
                param="encoding_format",
            )
        encoded = encode(model, vectors, body.encoding_format, body.dimensions)
        return Reply(orjson.dumps(encoded, option=orjson.OPT_SERIALIZE_NUMPY))

    # -- handlers ------------------------------------------------------------------------------------

    async def embed(self, request: Request) -> Reply:
        """Embed a text or a list of texts (TEI's `/embed`; a list of vectors, even for one text).

        Errors are TEI's `{"error", "error_type"}`: 400 Empty, 422 Validation (a list over
        --max-client-batch-size, a text over the token limit with `truncate: false`), 424 Backend,
        429 Overloaded (with `Retry-After`), 503 Unhealthy (not ready, draining).
        """
        body: TeiEmbedRequest = request.body
        model = self.service.model(body.model)
        texts = self.texts(model, body.inputs, body.prompt_name)
        _check_dimensions(model, body.dimensions)
        ticket = self.service.admit(
            texts,
            model=model,
            time_limit=access.parse_timeout(request.headers.get(_TIMEOUT_HEADER)),
            request_id=request.request_id,
            truncate=body.truncate is not False,  # null: this server's default, true
            truncate_left=body.truncation_direction in ("Left", "left"),
            normalize=body.normalize,
            priority=request.priority,
            caller=request.caller,
        )
        request.slot.release()  # waiting for the model is no event-loop work
        try:
            jobs = await self.service.wait(ticket)
        except errors.InputTooLong:
            job = next(job for job in ticket.jobs if isinstance(job.error, errors.InputTooLong))
            raise errors.InputTooLong(
                f"{_INVALID}`inputs` must have less than {model.batcher.embedder.max_tokens} tokens. "
                f"Given: {job.text_tokens}",
                param="inputs",
            ) from None
        return self.answer(
            model, self.vectors(jobs, normalize=body.normalize, dimensions=body.dimensions), body
        )

    async def tokenize(self, request: Request) -> Reply:
        """Tokenize a text or a list of texts with the model's own tokenizer (TEI's `/tokenize`).

        Per input, its tokens: `id`, `text` (its piece of the input, or the special token), `special`,
        and `start`/`stop`, UTF-8 byte offsets into the input (null for a special token). Untruncated.
        """
        body: TeiTokenizeRequest = request.body
        model = self.service.model(body.model)
        texts = self.texts(model, body.inputs, body.prompt_name)
        tokenizer = _tokenizer(model)
        request.slot.release()  # the tokenizer runs in a thread of its own
        tokens = await tokenizer.tokenize_detailed(texts, body.add_special_tokens)
        return json_reply(
            [
                [
                    {"id": t.id, "text": t.text, "special": t.special, "start": t.start, "stop": t.stop}
                    for t in row
                ]
                for row in tokens
            ]
        )

    async def decode(self, request: Request) -> Reply:
        """The text of token ids, or of each list of a list of them (TEI's `/decode`)."""
        body: TeiDecodeRequest = request.body
        model = self.service.model(body.model)
        ids: list[list[int]]
        if body.ids and isinstance(body.ids[0], list):
            ids = body.ids  # the list-of-lists branch
            self._check_batch(len(ids), "ids")
        else:
            ids = [body.ids]  # type: ignore[list-item]  # the flat branch
        if any(not row for row in ids):
            raise errors.EmptyInput(f"{_INVALID}`input_ids` cannot be empty", param="ids")
        tokenizer = _tokenizer(model)
        request.slot.release()
        return json_reply(await tokenizer.decode(ids, body.skip_special_tokens))

    async def info(self, request: Request) -> Reply:
        """TEI's server information for the default model: its id, dtype, pooling, limits, version."""
        return json_reply(self.describe(self.service.default))

    def describe(self, model: ServedModel) -> dict[str, Any]:
        embedder = model.batcher.embedder
        settings = self.service.settings
        return {
            "model_id": model.full_name,
            "model_sha": None,
            "model_dtype": model.precision,
            "served_model_name": model.name,
            "model_type": {"embedding": {"pooling": str(getattr(embedder, "pooling", "unknown"))}},
            "max_concurrent_requests": settings.max_concurrent_requests,
            "max_input_length": embedder.max_tokens,
            "max_batch_tokens": model.batcher.limits.max_batch_tokens,
            "max_batch_requests": model.batcher.limits.max_batch_size,
            "max_client_batch_size": self.max_client_batch_size,
            "auto_truncate": True,
            "tokenization_workers": TOKENIZATION_WORKERS,
            "version": version(),
            "sha": None,
            "docker_label": None,
        }

    def routes(self) -> list[Route]:
        """TEI's routes besides `POST /embed` (declared by the native API, see `choose_embed_body`)."""
        tei = ErrorShape.TEI

        async def embed_root(request: Request) -> Reply:
            """Embed as TEI's `POST /` does for an embedding model: the same body and answer as
            TEI's `/embed`."""
            return await self.embed(request)

        return [
            Route(
                "/",
                "POST",
                embed_root,
                body=TeiEmbedRequest,
                error_shape=tei,
                responses={200: TeiEmbedResponse, **dict.fromkeys(_EMBED_ERRORS, TeiErrorResponse)},
            ),
            Route(
                "/tokenize",
                "POST",
                self.tokenize,
                body=TeiTokenizeRequest,
                error_shape=tei,
                responses={200: TeiTokenizeResponse, **dict.fromkeys(_TOKENIZER_ERRORS, TeiErrorResponse)},
            ),
            Route(
                "/decode",
                "POST",
                self.decode,
                body=TeiDecodeRequest,
                error_shape=tei,
                responses={200: TeiDecodeResponse, **dict.fromkeys(_TOKENIZER_ERRORS, TeiErrorResponse)},
            ),
            Route(
                "/info",
                "GET",
                self.info,
                error_shape=tei,
                responses={200: TeiInfo, **dict.fromkeys((401, 500), TeiErrorResponse)},
            ),
        ]


def _check_dimensions(model: ServedModel, dimensions: int | None) -> None:
    if dimensions is None:
        return
    if dimensions <= 0:
        raise errors.ValidationFailed(f"{_INVALID}`dimensions` should be positive", param="dimensions")
    if dimensions > model.dimension:
        raise errors.ValidationFailed(
            f"{_INVALID}`dimensions` should be smaller than the maximum embedding dimension.",
            param="dimensions",
        )


def _tokenizer(model: ServedModel) -> AsyncTokenizer:
    tokenizer = tokenizer_of(model.batcher.embedder)
    if tokenizer is None:
        raise errors.BadRequest(f"the model {model.name!r} offers no tokenizer", param="model")
    return tokenizer


__all__ = ["TeiApi", "choose_embed_body"]
