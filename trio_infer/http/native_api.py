"""The native API: `POST /embed`, one text in, its vector out. The same route takes TEI's body
(`inputs`), answered by `tei_api` in TEI's shapes: the body's fields tell the two apart."""

from __future__ import annotations

import orjson

from ..core.service import EmbeddingService
from ..models import prompts
from . import access, vectors
from .responses import Reply
from .routes import Request, Route
from .schemas import MAX_INPUT_CHARS, EmbedRequest
from .tei_api import TeiApi, choose_embed_body
from .tei_schemas import EmbedAnswer, EmbedBody, EmbedError

_TIMEOUT_HEADER = access.TIMEOUT_HEADER.lower()
ERROR_STATUSES = (400, 401, 404, 408, 413, 415, 422, 424, 429, 500, 503, 504)


def routes(service: EmbeddingService, tei: TeiApi) -> list[Route]:
    async def embed(request: Request) -> Reply:
        """Embed one text (`input_text`), or TEI's `inputs` (a text or a list of texts), with the
        model named by `model` (the default model when absent).

        With `input_text`: answers `{"embedding", "model"}`; errors are JSON `{"error", "detail"}`;
        503 (overloaded, not ready, shutting down) carries `Retry-After` when retrying later can help.
        With `inputs`: TEI's body and answer (a list of vectors), TEI's errors `{"error",
        "error_type"}` and statuses (429 Overloaded with `Retry-After`), see `POST /`.
        A body with both fields or neither is a 422 naming both shapes.
        `X-Request-Timeout: <seconds>` shortens the deadline.
        """
        if not isinstance(request.body, EmbedRequest):
            return await tei.embed(request)
        body = request.body
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
            body=EmbedBody,
            choose_body=choose_embed_body,
            context={MAX_INPUT_CHARS: service.settings.max_input_chars},  # --max-input-chars
            responses={200: EmbedAnswer, **dict.fromkeys(ERROR_STATUSES, EmbedError)},
        )
    ]
