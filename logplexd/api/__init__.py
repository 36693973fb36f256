"""The APIs served on the control listener, sans-IO behind ``web``'s server.

- ``ControlApi`` (``control.py``): Logplex's v2/v3 channels, tokens, drains, sessions.
- ``ReadRoutes`` (``reads.py``): session streams and channel logs.
- ``DrainStatusRoutes`` (``drain_status.py``): each drain's health, for operators.
- ``Rods``/``RodsApi`` (``rods.py``): the control rods and ``/admin/rods``.
- ``platform/``: the Heroku Platform API's apps, log drains and log sessions.
"""

from __future__ import annotations

from typing import Any

import trio

from ..web import serve_http
from .control import ApiConfig, ControlApi
from .drain_status import DrainHealth, DrainStatusRoutes
from .listener import ApiListener
from .platform import mount_platform
from .reads import ReadRoutes
from .rods import ROD_NAMES, RodError, Rods, RodsApi, RodState, parse_changes


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
        errors=control_api.error_response,
        task_status=task_status,
    )


__all__ = [
    "ROD_NAMES",
    "ApiConfig",
    "ApiListener",
    "ControlApi",
    "DrainHealth",
    "DrainStatusRoutes",
    "ReadRoutes",
    "RodError",
    "RodState",
    "Rods",
    "RodsApi",
    "mount_platform",
    "parse_changes",
    "run_api",
]
