"""The control listener's handler: what stands in front of the routes and after them.

The control rods' gate (and, in Redis mode, the data plane's health for
``/v3/healthcheck``) may answer before a route runs; every answer is timed per route name.
Both come in as callbacks, so the API knows neither the rods' owner nor the metrics. The
gate only says why it refuses: the 503 is worded by ``ControlApi.error_response``, in the
format of the path's family (the Platform API's ``{"id", "message"}`` on its paths).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..web import Match, Request, Response
from .control import ControlApi

# ``gate(method, route name)``: why the request is refused (answered 503), or None.
Gate = Callable[[str, str], str | None]
# ``observe(route name, method, status, seconds)``.
Observe = Callable[[str, str, int, float], None]
# ``health()``: a 503 while a dependency of the data plane is unreachable, or None.
Health = Callable[[], Response | None]

UNMATCHED = "unmatched"


class ApiListener:
    """``await listener.handle(request)`` for the control API's HTTP server."""

    def __init__(
        self,
        api: ControlApi,
        *,
        gate: Gate | None = None,
        health: Health | None = None,
        observe: Observe | None = None,
    ) -> None:
        self.api = api
        self.gate = gate
        self.health = health
        self.observe = observe

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        found = self.api.router.match(request.method, request.path)
        route = found.endpoint.name if isinstance(found, Match) else UNMATCHED
        refused = self.gate(request.method, route) if self.gate is not None else None
        response: Response | None = None
        if refused is not None:
            response = self.api.error_response(request, 503, refused)
        elif route == "v3.healthcheck" and self.health is not None:
            response = self.health()
        if response is None:
            response = await self.api.handle(request)
        if self.observe is not None:
            self.observe(route, request.method, response.status, time.perf_counter() - started)
        return response
