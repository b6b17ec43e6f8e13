"""The one request pipeline: every HTTP request, whatever its route, is answered here.

In order, for each request:
1. a request id (the caller's `X-Request-ID` when usable, else a fresh one);
2. from the head alone, before a byte of the body is read: the caller, from the API key unless the
   path is exactly an open route's (401; `callers.py`), the route (404), the method (405 with
   `Allow`), for routes with a body its `Content-Type` (415), declared `Content-Length` (413) and
   priority class (`X-Priority`, else the caller's default; 400), and the cap on concurrent requests
   (503 with `Retry-After`);
3. the body, within `--body-timeout` (408) and `--max-body-size` (413, counted while reading);
4. an event-loop work slot (`throttle.py`), then the body validated as the route's model (400/422);
5. the handler; a client that disconnects while a handler with a body runs cancels it (so the
   batcher withdraws its texts), and the answer is recorded as 499 and never sent;
6. errors mapped by `responses.error_reply` (`/v1` paths in OpenAI's shape), an unexpected one to a
   generic 500 whose cause is logged with the request id;
7. the answer with `X-Request-ID`, `Connection: close` when the body was left unread or the server is
   draining; one access log line; the HTTP metrics with bounded labels.

Probes (`Route.probe`) go through the same steps but take no work slot; they and `/metrics` are never
refused for load (`Route.capped`).
Anything that is not HTTP (the ASGI lifespan) goes to the wrapped app, quart-trio.

Cancellation contract: the pipeline holds nothing across requests except the work-slot semaphore and
the in-flight count, both restored in `finally` blocks, so a cancelled request leaves no trace.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import trio

from ..core import errors
from ..core.priority import LABELS, Priority
from . import access
from .bodies import check_content_type, parse_model
from .callers import Caller, Callers, key_ring
from .responses import Reply, error_reply
from .routes import Match, Request, Route, RouteTable
from .throttle import NO_SLOT, Slot, WorkSlots

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
CLIENT_CLOSED = 499  # nginx's code for it: logged and counted, never sent
_CLOSE = (b"connection", b"close")
# Retry-After for a request refused by the concurrency cap: requests finish within milliseconds to the
# request timeout; a second is the least a header can say.
_CAP_RETRY_AFTER = 1.0
_PRIORITY_HEADER = access.PRIORITY_HEADER.lower()
_SHOWN = 64  # characters of a bad header value quoted back in the error


class _ClientLeft(Exception):
    """The client disconnected before its request was complete: there is nobody to answer."""


class Pipeline:
    """An ASGI app answering every HTTP request from `table`; other scopes go to `app`.

    `callers`: the key ring in force (read per request; a reload replaces it); None: the one the
    settings configure, read now."""

    def __init__(
        self, app: ASGIApp, service: EmbeddingService, table: RouteTable, callers: Callers | None = None
    ) -> None:
        self.app = app
        self.service = service
        self.table = table
        settings = service.settings
        self.callers = Callers(key_ring(settings)) if callers is None else callers
        self._max_body = settings.max_body_size
        self._body_timeout = settings.body_timeout
        self._max_in_flight = settings.max_concurrent_requests
        self._in_flight = 0
        self._work = WorkSlots()
        self._count = service.metrics.count_http
        self._in_progress = service.metrics.http_in_progress

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self._serve(scope, receive, send)

    async def _serve(self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        started = time.perf_counter()
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        request_id = access.request_id(headers.get("x-request-id"))
        method = scope["method"]
        path = scope["path"]
        match = self.table.match(path, method)
        has_body = "transfer-encoding" in headers or headers.get("content-length", "0") not in ("0", "")
        state = _State(body_unread=has_body)
        reply: Reply | None
        try:
            try:
                reply = await self._answer(match, method, path, headers, request_id, receive, state)
            except _ClientLeft:
                reply = None
            except errors.ServiceError as error:
                reply = error_reply(error, openai=_is_openai(path))
                if isinstance(error, errors.MethodNotAllowed) and match.allowed:
                    reply.headers.append((b"allow", ", ".join(match.allowed).encode()))  # RFC 9110
            except Exception:
                log.exception("unhandled error (request %s)", request_id)
                reply = error_reply(errors.ServiceError("internal server error"), openai=_is_openai(path))
            if reply is None:
                status = CLIENT_CLOSED
            else:
                status = reply.status
                close = state.body_unread or self.service.lifecycle.closing
                await _send(send, reply, request_id, method == "HEAD", close, scope["http_version"] == "2")
        finally:
            if state.counted:  # in progress until the answer is written
                self._in_flight -= 1
                self._in_progress.dec()
        elapsed = time.perf_counter() - started
        self._count(match.label, method, status, elapsed)
        access.log_access(method, path, status, elapsed, request_id)

    async def _answer(
        self,
        match: Match,
        method: str,
        path: str,
        headers: dict[str, str],
        request_id: str,
        receive: ASGIReceiveCallable,
        state: _State,
    ) -> Reply | None:
        """The handler's reply, or None when the client left while it ran. Raises ServiceError,
        _ClientLeft, or whatever the handler raises."""
        callers = self.callers
        # With a key configured, an unknown path is not open either.
        caller = callers.ring.anonymous if match.open else callers.identify(headers.get("authorization"))
        route = match.route
        if route is None:
            if match.allowed:
                raise errors.MethodNotAllowed(f"{method} is not allowed on {path}")
            raise errors.NotFound(f"no route {path}")
        if route.body is not None:
            check_content_type(headers.get("content-type"))
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self._max_body:
                raise errors.PayloadTooLarge(f"the body exceeds {self._max_body} bytes")
            priority = _priority(headers.get(_PRIORITY_HEADER), caller)
        else:
            priority = caller.priority
        if route.capped:
            if self._in_flight >= self._max_in_flight:
                raise errors.Overloaded(
                    f"more than {self._max_in_flight} requests in progress", retry_after=_CAP_RETRY_AFTER
                )
            self._in_flight += 1
            self._in_progress.inc()
            state.counted = True
        if route.body is not None:
            request = Request(
                method, path, headers, match.params, None, request_id, NO_SLOT, priority, caller.name
            )
            return await self._answer_with_body(route, request, receive, state)
        slot = NO_SLOT if route.probe else self._work.slot()
        await slot.acquire()
        try:
            return await route.handler(
                Request(method, path, headers, match.params, None, request_id, slot, priority, caller.name)
            )
        finally:
            slot.release()

    async def _answer_with_body(
        self, route: Route, request: Request, receive: ASGIReceiveCallable, state: _State
    ) -> Reply | None:
        """Read the body under its deadline, then run the handler on `request` with the body and a
        work slot filled in; a disconnect cancels the handler.

        One cancel scope serves both phases (the nursery's): it carries the body deadline while the
        body is read, and the disconnect watcher's cancel while the handler runs. The handler's
        errors are caught inside the nursery so they leave it as themselves, not in a group."""
        assert route.body is not None
        outcome: Reply | Exception | None = None
        async with trio.open_nursery() as nursery:
            scope = nursery.cancel_scope
            scope.deadline = trio.current_time() + self._body_timeout
            try:
                data = await self._read_body(receive)
                state.body_unread = False
                scope.deadline = math.inf
                slot = self._work.slot()
                await slot.acquire()
                try:
                    request.body = parse_model(data, route.body, route.context)
                    request.slot = slot
                    nursery.start_soon(_cancel_on_disconnect, receive, scope)
                    outcome = await route.handler(request)
                finally:
                    slot.release()
            except Exception as error:
                outcome = error
            scope.cancel()
        if isinstance(outcome, Exception):
            raise outcome
        if outcome is None and state.body_unread:
            raise errors.BodyTimeout(f"the body did not arrive within {self._body_timeout:g} s")
        return outcome  # None: the disconnect watcher cancelled the handler

    async def _read_body(self, receive: ASGIReceiveCallable) -> bytes:
        """The whole body. Raises PayloadTooLarge past the limit, _ClientLeft when the client
        disconnects first."""
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await receive()
            if event["type"] != "http.request":
                raise _ClientLeft
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise errors.PayloadTooLarge(f"the body exceeds {self._max_body} bytes")
            chunks.append(chunk)
            if not event.get("more_body", False):
                return b"".join(chunks)


class _State:
    __slots__ = ("body_unread", "counted")

    def __init__(self, *, body_unread: bool) -> None:
        self.body_unread = body_unread  # answering now leaves body bytes on the connection
        self.counted = False  # counted against --max-concurrent-requests


async def _cancel_on_disconnect(receive: ASGIReceiveCallable, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _send(
    send: ASGISendCallable, reply: Reply, request_id: str, head: bool, close: bool, http2: bool
) -> None:
    headers = [
        (b"content-type", reply.content_type),
        (b"content-length", str(len(reply.body)).encode()),
        (b"x-request-id", request_id.encode()),
        *reply.headers,
    ]
    if http2:  # HTTP/2 forbids connection-specific headers; a stream ends on its own
        headers = [header for header in headers if header[0] != b"connection"]
    elif close and _CLOSE not in headers:
        headers.append(_CLOSE)
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": reply.status,
        "headers": headers,
        "trailers": False,
    }
    await send(start)
    end: HTTPResponseBodyEvent = {
        "type": "http.response.body",
        "body": b"" if head else reply.body,
        "more_body": False,
    }
    await send(end)


def _priority(raw: str | None, caller: Caller) -> Priority:
    """The class `X-Priority` names (case-insensitive), else the caller's default; 400 otherwise."""
    if raw is None:
        return caller.priority
    try:
        return Priority.parse(raw)
    except ValueError:
        raise errors.BadRequest(
            f"{access.PRIORITY_HEADER} must be one of {', '.join(LABELS)}, got {raw[:_SHOWN]!r}",
            param=access.PRIORITY_HEADER,
            code="invalid_value",
        ) from None


def _is_openai(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


__all__ = ["CLIENT_CLOSED", "Pipeline", "Slot"]
