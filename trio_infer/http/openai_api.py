"""The OpenAI-compatible API: `POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/<id>`.

Errors under `/v1` use OpenAI's nested shape `{"error": {"message", "type", "param", "code"}}` with the
same statuses as the native API (the pipeline picks the shape by path).
"""

from __future__ import annotations

import time
from typing import Any

from ..core import errors
from ..core.jobs import Vector
from ..core.service import EmbeddingService, ServedModel
from ..models import prompts
from . import access, vectors
from .openai_schemas import EmbeddingsRequest, EmbeddingsResponse, ModelList, ModelObject, OpenAIErrorResponse
from .responses import Reply, json_reply
from .routes import Request, Route

OWNED_BY = "trio-infer"
_TIMEOUT_HEADER = access.TIMEOUT_HEADER.lower()


def _model_object(model: ServedModel, created: int) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": created, "owned_by": OWNED_BY}


def _check_dimensions(model: ServedModel, dimensions: int | None) -> None:
    if dimensions is not None and not 1 <= dimensions <= model.dimension:
        raise errors.BadRequest(
            f"dimensions must be between 1 and {model.dimension} for {model.name}, got {dimensions}",
            param="dimensions",
            code="invalid_value",
        )


_EMBEDDINGS_ERRORS = (400, 401, 404, 408, 413, 415, 422, 500, 503, 504)


def _errors(*statuses: int) -> dict[int, Any]:
    """OpenAI's error shape in /openapi.json for each of `statuses`."""
    return dict.fromkeys(statuses, OpenAIErrorResponse)


def routes(service: EmbeddingService) -> list[Route]:
    # The routes are built once the models have loaded, so this is their `created` time.
    created = int(time.time())

    async def create_embeddings(request: Request) -> Reply:
        """Embed a text or a list of texts (OpenAI-compatible).

        Each text is batched with other requests' texts; `usage` counts the model's own tokens (after
        truncation to its maximum; with `"truncate": false` a longer text is a 400 `input_too_long`).
        A list is admitted whole or refused with 503 (`Retry-After`).
        Token id arrays are refused with 400 `token_ids_not_supported`: send text.
        """
        body: EmbeddingsRequest = request.body
        model = service.model(body.model)
        _check_dimensions(model, body.dimensions)
        prompt = prompts.resolve(model, prompt_name=body.prompt_name, input_type=body.input_type)
        ticket = service.admit(
            prompts.apply(prompt, body.input),
            model=model,
            time_limit=access.parse_timeout(request.headers.get(_TIMEOUT_HEADER)),
            request_id=request.request_id,
            truncate=body.truncate,
            priority=request.priority,
            caller=request.caller,
        )
        request.slot.release()  # waiting for the model is no event-loop work
        try:
            jobs = await service.wait(ticket)
        except errors.InputTooLong as error:
            index = next(i for i, job in enumerate(ticket.jobs) if job.error is error)
            raise errors.InputTooLong(f"input.{index}: {error.detail}", param=f"input.{index}") from None
        found: list[Vector] = []
        for job in jobs:
            assert job.vector is not None  # a finished job without an error has its vector
            found.append(job.vector)
        encoded = vectors.encode(model, found, body.encoding_format, body.dimensions)
        data = [
            {"object": "embedding", "index": index, "embedding": embedding}
            for index, embedding in enumerate(encoded)
        ]
        prompt_tokens = sum(job.n_tokens for job in jobs)
        return json_reply(
            {
                "object": "list",
                "data": data,
                "model": model.name,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            }
        )

    async def list_models(request: Request) -> Reply:
        """Every model this server serves, the default first (OpenAI-compatible)."""
        return json_reply(
            {"object": "list", "data": [_model_object(model, created) for model in service.models]}
        )

    async def retrieve_model(request: Request) -> Reply:
        """A served model, by its name, full name or short name; 404 `model_not_found` otherwise."""
        return json_reply(_model_object(service.model(request.params["model_id"]), created))

    return [
        Route(
            "/v1/embeddings",
            "POST",
            create_embeddings,
            body=EmbeddingsRequest,
            responses={200: EmbeddingsResponse, **_errors(*_EMBEDDINGS_ERRORS)},
        ),
        Route("/v1/models", "GET", list_models, responses={200: ModelList, **_errors(401, 500)}),
        Route(
            "/v1/models/{model_id:path}",
            "GET",
            retrieve_model,
            responses={200: ModelObject, **_errors(401, 404, 500)},
        ),
    ]


__all__ = ["routes"]
