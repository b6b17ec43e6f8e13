"""The OpenAI-compatible API: `POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/<id>`.

Errors under `/v1` use OpenAI's nested shape `{"error": {"message", "type", "param", "code"}}` with the
same statuses as the native API (the app's error handlers pick the shape by path).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from quart import Blueprint, Response, current_app, g, request
from quart.blueprints import BlueprintSetupState
from quart_schema import document_request, document_response

from ..core import errors
from ..core.jobs import Vector
from ..core.service import EmbeddingService
from . import access
from .bodies import read_model
from .openai_schemas import EmbeddingsRequest, EmbeddingsResponse, ModelList, ModelObject, OpenAIErrorResponse
from .responses import json_response
from .throttle import release_work_slot

OWNED_BY = "trio-infer"
_CREATED_KEY = "openai_model_created"

blueprint = Blueprint("openai", __name__, url_prefix="/v1")


@blueprint.record_once
def _remember_load_time(state: BlueprintSetupState) -> None:
    # The app is created once the model has loaded, so this is the model's `created` time.
    state.app.extensions[_CREATED_KEY] = int(time.time())


def _service() -> EmbeddingService:
    service: EmbeddingService = current_app.extensions["embedding_service"]
    return service


def _model_names(service: EmbeddingService) -> tuple[str, str]:
    return service.model_name, service.model_name.rsplit("/", 1)[-1]


def _model_object(service: EmbeddingService) -> dict[str, Any]:
    return {
        "id": service.model_name,
        "object": "model",
        "created": current_app.extensions.get(_CREATED_KEY, 0),
        "owned_by": OWNED_BY,
    }


def _check_model(service: EmbeddingService, model: str) -> None:
    if model not in _model_names(service):
        raise errors.NotFound(
            f"the model {model!r} does not exist; this server serves {service.model_name!r}",
            param="model",
            code="model_not_found",
        )


def _check_dimensions(service: EmbeddingService, dimensions: int | None) -> None:
    if dimensions is not None and not 1 <= dimensions <= service.dimension:
        raise errors.BadRequest(
            f"dimensions must be between 1 and {service.dimension} for {service.model_name}, got {dimensions}",
            param="dimensions",
            code="invalid_value",
        )


def _shorten(vector: Vector, dimensions: int) -> Vector:
    """The first `dimensions` components, re-normalized to unit length."""
    head = vector[:dimensions].astype(np.float32)
    norm = float(np.linalg.norm(head))
    return head / np.float32(norm) if norm > 0 else head


def _encode(vector: Vector, encoding_format: str | None) -> Any:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
    return vector


_ERRORS_DOCUMENTED = (400, 401, 404, 413, 415, 422, 500, 503, 504)


F = TypeVar("F", bound=Callable[..., Any])


def _document_errors(*statuses: int) -> Callable[[F], F]:
    """OpenAI's error shape in /openapi.json for each of `statuses`."""

    def decorate(func: F) -> F:
        for status in statuses:
            func = document_response(OpenAIErrorResponse, status)(func)
        return func

    return decorate


@blueprint.post("/embeddings")
@document_request(EmbeddingsRequest)
@document_response(EmbeddingsResponse, 200)
@_document_errors(*_ERRORS_DOCUMENTED)
async def create_embeddings() -> Response:
    """Embed a text or a list of texts (OpenAI-compatible).

    Each text is batched with other requests' texts; `usage` counts the model's own tokens (after
    truncation to its maximum; with `"truncate": false` a longer text is a 400 `input_too_long`).
    A list is admitted whole or refused with 503 (`Retry-After`).
    Token id arrays are refused with 400 `token_ids_not_supported`: send text.
    """

    service = _service()
    body = await read_model(request, EmbeddingsRequest)
    _check_model(service, body.model)
    _check_dimensions(service, body.dimensions)
    ticket = service.admit(
        body.input,
        time_limit=access.parse_timeout(request.headers.get(access.TIMEOUT_HEADER)),
        request_id=g.request_id,
        truncate=body.truncate,
    )
    release_work_slot()  # waiting for the model is no event-loop work
    try:
        jobs = await service.wait(ticket)
    except errors.InputTooLong as error:
        index = next(i for i, job in enumerate(ticket.jobs) if job.error is error)
        raise errors.InputTooLong(f"input.{index}: {error.detail}", param=f"input.{index}") from None
    data = []
    prompt_tokens = 0
    for index, job in enumerate(jobs):
        assert job.vector is not None  # a finished job without an error has its vector
        vector = job.vector
        if body.dimensions is not None and body.dimensions < vector.shape[0]:
            vector = _shorten(vector, body.dimensions)
        data.append(
            {"object": "embedding", "index": index, "embedding": _encode(vector, body.encoding_format)}
        )
        prompt_tokens += job.n_tokens
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": service.model_name,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
    )


@blueprint.get("/models")
@document_response(ModelList, 200)
@_document_errors(401, 500)
async def list_models() -> Response:
    """The one model this server serves (OpenAI-compatible)."""
    return json_response({"object": "list", "data": [_model_object(_service())]})


@blueprint.get("/models/<path:model_id>")
@document_response(ModelObject, 200)
@_document_errors(401, 404, 500)
async def retrieve_model(model_id: str) -> Response:
    """The served model, by its full or short name; 404 `model_not_found` otherwise."""
    service = _service()
    _check_model(service, model_id)
    return json_response(_model_object(service))


__all__ = ["blueprint"]
