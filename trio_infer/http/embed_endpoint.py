"""`POST /embed` answered in raw ASGI, ahead of Quart.

The hot route does what its Quart twin did (request id, API key, content type, size limit, JSON and
schema validation, the caller's deadline, one access log line, metrics, errors mapped by
`responses.error_body`) without building Quart's request, context and response objects, which cost
more than the rest of the serving path. The route is still declared in `app.py`, which documents it in
/openapi.json and answers its other methods (405).

Cancellation contract: a client that disconnects while its texts wait cancels the wait (as quart-trio
does for its handlers), so the batcher withdraws them and nothing is computed for nobody.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
import trio

from ..core import errors
from ..core.jobs import Job
from . import access
from .bodies import check_content_type, parse_model
from .responses import error_body, error_headers
from .schemas import MAX_INPUT_CHARS, EmbedRequest
from .throttle import release_work_slot

if TYPE_CHECKING:
    from hypercorn.typing import (
        ASGIReceiveCallable,
        ASGISendCallable,
        HTTPResponseBodyEvent,
        HTTPResponseStartEvent,
        HTTPScope,
        Scope,
    )

    from ..core.service import EmbeddingService

log = logging.getLogger(__name__)

ASGIApp = Any
_PATH = "/embed"
_TIMEOUT_HEADER = access.TIMEOUT_HEADER.lower()
_CLIENT_CLOSED = 499


class EmbedEndpoint:
    def __init__(self, app: ASGIApp, service: EmbeddingService) -> None:
        self.app = app
        self.service = service
        settings = service.settings
        self._api_key = settings.api_key.encode() if settings.api_key else None
        self._max_body = settings.max_body_size
        self._validation = {MAX_INPUT_CHARS: settings.max_input_chars}  # --max-input-chars

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "http" and scope["path"] == _PATH and scope["method"] == "POST":
            await self._handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _handle(self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        started = time.perf_counter()
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        request_id = access.request_id(headers.get("x-request-id"))
        extra: dict[str, str] = {}
        try:
            status, body = 200, await self._answer(headers, receive, request_id)
        except errors.ServiceError as error:
            status, extra = error.status, error_headers(error)
            body = orjson.dumps(error_body(error, openai=False))
        except Exception:
            log.exception("unhandled error (request %s)", request_id)
            status, body = (
                500,
                orjson.dumps(error_body(errors.ServiceError("internal server error"), openai=False)),
            )
        if body is None:
            status = _CLIENT_CLOSED  # nginx's code for it: logged and counted, never sent
        else:
            if self.service.lifecycle.closing:
                extra["Connection"] = "close"
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode()),
                    *((name.lower().encode(), value.encode()) for name, value in extra.items()),
                ],
                "trailers": False,
            }
            await send(start)
            end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
            await send(end)
        elapsed = time.perf_counter() - started
        self.service.metrics.count_http(_PATH, "POST", status, elapsed)
        access.log_access("POST", _PATH, status, elapsed, request_id)

    async def _answer(
        self, headers: dict[str, str], receive: ASGIReceiveCallable, request_id: str
    ) -> bytes | None:
        """The response body, or None when the client went away first."""
        access.check_api_key(_PATH, headers.get("authorization"), self._api_key)
        check_content_type(headers.get("content-type", "").split(";", 1)[0].strip().lower())
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise errors.PayloadTooLarge(f"the body exceeds {self._max_body} bytes")
        data = await self._read_body(receive)
        if data is None:
            return None
        request = parse_model(data, EmbedRequest, self._validation)
        time_limit = access.parse_timeout(headers.get(_TIMEOUT_HEADER))
        # Errors are caught inside the nursery so they leave it as themselves, not in an exception group.
        outcome: list[Job] | errors.ServiceError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            try:
                ticket = self.service.admit(
                    [request.input_text], time_limit=time_limit, request_id=request_id
                )
                release_work_slot()  # waiting for the model is no event-loop work
                outcome = await self.service.wait(ticket)
            except errors.ServiceError as error:
                outcome = error
            nursery.cancel_scope.cancel()
        if outcome is None:
            return None  # the disconnect watcher cancelled the wait
        if isinstance(outcome, errors.ServiceError):
            raise outcome
        return orjson.dumps(
            {"embedding": outcome[0].vector, "model": self.service.model_name},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    async def _read_body(self, receive: ASGIReceiveCallable) -> bytes | None:
        """The whole body (413 past the limit), or None if the client left before sending it."""
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await receive()
            if event["type"] != "http.request":
                return None
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise errors.PayloadTooLarge(f"the body exceeds {self._max_body} bytes")
            chunks.append(chunk)
            if not event.get("more_body", False):
                return b"".join(chunks)


async def _cancel_on_disconnect(receive: ASGIReceiveCallable, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
