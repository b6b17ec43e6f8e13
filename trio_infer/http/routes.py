"""The route table: every path the server answers, its method, handler, and the models that document it.

A `Route` is declared once and drives everything: dispatch (exact paths, plus `{name}` and a trailing
`{name:path}` parameter), the checks done on the request's headers before its body is read, the
metrics label, and the OpenAPI document (`openapi.py`). There is no other way a request is answered.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..core.priority import ANONYMOUS, Priority

if TYPE_CHECKING:
    from .responses import Reply
    from .throttle import Slot


@dataclass(slots=True)
class Request:
    """What a handler sees of its request.

    `body` is the request validated as the route's `body` model (None for routes without one).
    `slot` is the request's event-loop work slot: a handler releases it before a long wait (for the
    model) so that waiting requests do not hold back the ones doing work.
    `priority` and `caller` are who sent it and in which class: what a handler passes to
    `service.admit` (the pipeline sets both from `X-Priority` and the API key).
    """

    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    params: Mapping[str, str]
    body: Any
    request_id: str
    slot: Slot
    priority: Priority = Priority.INTERACTIVE
    caller: str = ANONYMOUS


Handler = Callable[[Request], Awaitable["Reply"]]


@dataclass(frozen=True, slots=True)
class Route:
    """One method on one path.

    - `body`: the pydantic model of a JSON request body (Content-Type and Content-Length are checked
      before reading; the body is validated before the handler runs). None: no body is read.
    - `responses`: status -> model (None: documented without a body schema), for /openapi.json and
      for the metric series created at start-up.
    - `open`: answered without the API key (probes, metrics, documentation).
    - `capped`: counted against `--max-concurrent-requests` (503 above it). Probes and `/metrics` are
      not: under overload is when an orchestrator or a scraper most needs an answer.
    - `probe`: cheap: takes no event-loop work slot, so it is answered within a few scheduling
      rounds whatever else is running.
    - `documented`: listed in /openapi.json.
    - `content_type`: the 200 answer's media type in /openapi.json.
    - `context`: pydantic's validation context for `body` (settings a validator reads).
    """

    path: str
    method: str
    handler: Handler
    body: type[BaseModel] | None = None
    responses: Mapping[int, type[BaseModel] | None] = field(default_factory=dict)
    open: bool = False
    capped: bool = True
    probe: bool = False
    documented: bool = True
    content_type: str = "application/json"
    summary: str = ""
    description: str = ""
    context: Mapping[str, object] | None = None

    @property
    def template(self) -> str:
        """The path as OpenAPI and the metrics label write it: `/v1/models/{model_id}`."""
        return _PARAM.sub(lambda m: "{" + m.group(1) + "}", self.path)


_PARAM = re.compile(r"\{(\w+)(?::path)?\}")


def _pattern(path: str) -> re.Pattern[str]:
    parts = []
    position = 0
    for match in _PARAM.finditer(path):
        parts.append(re.escape(path[position : match.start()]))
        name = match.group(1)
        parts.append(f"(?P<{name}>.+)" if match.group(0).endswith(":path}") else f"(?P<{name}>[^/]+)")
        position = match.end()
    parts.append(re.escape(path[position:]))
    return re.compile("".join(parts))


@dataclass(frozen=True, slots=True)
class Match:
    """The result of a lookup: the route (None: 404 or 405), the metrics label, the path parameters,
    the methods the path allows (for 405's `Allow`), and whether the path is open without the API key
    (only a declared open route's exact path is; an unknown path is not)."""

    route: Route | None
    label: str
    params: Mapping[str, str]
    allowed: tuple[str, ...]
    open: bool


_NO_PARAMS: Mapping[str, str] = {}
UNMATCHED = "unmatched"
_UNMATCHED = Match(None, UNMATCHED, _NO_PARAMS, (), False)


def _found(route: Route, label: str, params: Mapping[str, str]) -> Match:
    return Match(route, label, params, (), route.open)


def _refused(methods: Mapping[str, Route], label: str, params: Mapping[str, str]) -> Match:
    """The path exists but not with this method: 405, open only if every route of the path is."""
    return Match(None, label, params, tuple(sorted(methods)), all(r.open for r in methods.values()))


class RouteTable:
    """Routes by exact path (a dict lookup), then parametrised ones in declaration order. A GET
    route also answers HEAD (without the body)."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: list[Route] = list(routes)
        self._exact: dict[str, dict[str, Route]] = {}
        self._patterns: list[tuple[re.Pattern[str], str, dict[str, Route]]] = []
        for route in self.routes:
            if _PARAM.search(route.path):
                pattern = _pattern(route.path)
                table = next((t for p, _, t in self._patterns if p.pattern == pattern.pattern), None)
                if table is None:
                    table = {}
                    self._patterns.append((pattern, route.template, table))
            else:
                table = self._exact.setdefault(route.path, {})
            if route.method in table:
                raise ValueError(f"{route.method} {route.path} is declared twice")
            table[route.method] = route
            if route.method == "GET" and "HEAD" not in table:
                table["HEAD"] = route

        # Exact paths' answers are built once: the lookup on the hot path allocates nothing.
        self._exact_matches = {
            path: (
                {m: _found(r, path, _NO_PARAMS) for m, r in methods.items()},
                _refused(methods, path, _NO_PARAMS),
            )
            for path, methods in self._exact.items()
        }

    def match(self, path: str, method: str) -> Match:
        exact = self._exact_matches.get(path)
        if exact is not None:
            found, refused = exact
            return found.get(method, refused)
        for pattern, template, table in self._patterns:
            hit = pattern.fullmatch(path)
            if hit is not None:
                route = table.get(method)
                params = hit.groupdict()
                return _found(route, template, params) if route else _refused(table, template, params)
        return _UNMATCHED

    def labels(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """(route label, method, statuses) of every declared route, for metrics present from start-up."""
        return [
            (route.template, route.method, tuple(sorted({200, *route.responses}))) for route in self.routes
        ]
