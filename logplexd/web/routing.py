"""Path templates to handlers: ``/v3/channels/{name}/drains/{drain_id:int}``.

Matching tells apart "no such path" (404) from "path exists, method does not" (405, with
the allowed methods for the ``Allow`` header).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote

from .messages import Request, Response

Params = dict[str, str]
RouteHandler = Callable[[Request, Params], Awaitable[Response]]

_PLACEHOLDER = re.compile(r"\{(\w+)(?::(int))?\}")


@dataclass(frozen=True, slots=True)
class Endpoint:
    # Names the route in logs instead of the path, which may hold secrets (session ids).
    name: str
    handler: RouteHandler
    auth: bool


@dataclass(slots=True)
class _Route:
    template: str
    pattern: re.Pattern[str]
    endpoints: dict[str, Endpoint] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Match:
    endpoint: Endpoint
    params: Params


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    allowed: tuple[str, ...]


def _compile(template: str) -> re.Pattern[str]:
    pattern = ""
    position = 0
    for placeholder in _PLACEHOLDER.finditer(template):
        pattern += re.escape(template[position : placeholder.start()])
        kind = placeholder.group(2)
        segment = "[0-9]{1,18}" if kind == "int" else "[^/]+"
        pattern += f"(?P<{placeholder.group(1)}>{segment})"
        position = placeholder.end()
    pattern += re.escape(template[position:])
    return re.compile(pattern)


class AddRoute(Protocol):
    """How a group of routes mounts itself on a listener (``Router.add``'s signature)."""

    def __call__(
        self, method: str, template: str, handler: RouteHandler, *, name: str, auth: bool = True
    ) -> None: ...


class Router:
    def __init__(self) -> None:
        self._routes: list[_Route] = []

    def add(
        self, method: str, template: str, handler: RouteHandler, *, name: str, auth: bool = True
    ) -> None:
        for route in self._routes:
            if route.template == template:
                break
        else:
            route = _Route(template, _compile(template))
            self._routes.append(route)
        if method in route.endpoints:
            raise ValueError(f"{method} {template} is already routed")
        route.endpoints[method] = Endpoint(name, handler, auth)

    def routes(self) -> list[tuple[str, str, str]]:
        """(method, template, route name) of every route, in the order they were added
        (what ``logplexd/openapi.json`` must describe; tests/test_api_schema.py checks)."""
        return [
            (method, route.template, endpoint.name)
            for route in self._routes
            for method, endpoint in route.endpoints.items()
        ]

    def match(self, method: str, path: str) -> Match | MethodNotAllowed | None:
        allowed: list[str] = []
        for route in self._routes:
            found = route.pattern.fullmatch(path)
            if found is None:
                continue
            endpoint = route.endpoints.get(method)
            if endpoint is None:
                allowed.extend(m for m in route.endpoints if m not in allowed)
                continue
            try:
                params = {
                    key: unquote(value, errors="strict") for key, value in found.groupdict().items()
                }
            except UnicodeDecodeError:
                return None
            return Match(endpoint, params)
        if allowed:
            return MethodNotAllowed(tuple(allowed))
        return None
