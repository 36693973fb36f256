"""The control API (sans-IO) and ``run_api`` to serve it with the HTTP server."""

from __future__ import annotations

from typing import Any

import trio

from ..http.server import serve_http
from .control import ApiConfig, ControlApi
from .routing import Params, RouteHandler, Router


async def run_api(
    control_api: ControlApi,
    host: str,
    port: int,
    *,
    max_connections: int = 1024,
    max_body: int = 1 << 20,
    header_timeout: float = 10.0,
    idle_timeout: float = 60.0,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``control_api`` until cancelled; ``task_status.started(bound_port)``."""
    await serve_http(
        control_api.handle,
        host,
        port,
        max_connections=max_connections,
        max_body=max_body,
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
        task_status=task_status,
    )


__all__ = ["ApiConfig", "ControlApi", "Params", "RouteHandler", "Router", "run_api"]
