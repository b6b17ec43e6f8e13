"""The native API: `POST /embed`, one text in, its vector out."""

from __future__ import annotations

import orjson

from ..core.service import EmbeddingService
from ..models import prompts
from . import access, vectors
from .responses import Reply
from .routes import Request, Route
from .schemas import MAX_INPUT_CHARS, EmbedRequest, EmbedResponse, ErrorResponse

_TIMEOUT_HEADER = access.TIMEOUT_HEADER.lower()
ERROR_STATUSES = (400, 401, 404, 408, 413, 415, 422, 500, 503, 504)


def routes(service: EmbeddingService) -> list[Route]:
    async def embed(request: Request) -> Reply:
        """Embed one text, with the model named by `model` (the default model when absent).

        Errors are JSON `{"error", "detail"}`. 503 (overloaded, not ready, shutting down) carries
        `Retry-After` when retrying later can help. `X-Request-Timeout: <seconds>` shortens the deadline.
        """
        body: EmbedRequest = request.body
        time_limit = access.parse_timeout(request.headers.get(_TIMEOUT_HEADER))
        model = service.model(body.model)
        texts = prompts.apply(prompts.resolve(model, prompt_name=body.prompt_name), [body.input_text])
        ticket = service.admit(
            texts,
            model=model,
            time_limit=time_limit,
            request_id=request.request_id,
            priority=request.priority,
            caller=request.caller,
        )
        request.slot.release()  # waiting for the model is no event-loop work
        jobs = await service.wait(ticket)
        assert jobs[0].vector is not None  # a finished job without an error has its vector
        (embedding,) = vectors.encode(model, [jobs[0].vector], body.encoding_format, None)
        return Reply(
            orjson.dumps({"embedding": embedding, "model": model.name}, option=orjson.OPT_SERIALIZE_NUMPY)
        )

    return [
        Route(
            "/embed",
            "POST",
            embed,
            body=EmbedRequest,
            context={MAX_INPUT_CHARS: service.settings.max_input_chars},  # --max-input-chars
            responses={200: EmbedResponse, **dict.fromkeys(ERROR_STATUSES, ErrorResponse)},
        )
    ]
