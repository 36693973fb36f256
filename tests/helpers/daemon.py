"""A whole daemon on loopback: its settings and the auth key the tests send."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from logplexd.config import Address, Settings
from logplexd.daemon import BoundPorts, Daemon

KEY = "test-auth-key"
LOOPBACK = Address("127.0.0.1", 0)


def settings_for(tmp_path: Path, **changes: object) -> Settings:
    """Defaults, every listener on an ephemeral loopback port, data in ``tmp_path/data``,
    auth key ``KEY``; ``changes`` override any of it."""
    base: dict[str, object] = {
        "api_addr": LOOPBACK,
        "logs_addr": LOOPBACK,
        "syslog_addr": LOOPBACK,
        "data_dir": tmp_path / "data",
        "auth_key": KEY,
    }
    return dataclasses.replace(Settings(), **{**base, **changes})  # type: ignore[arg-type]


async def serve_in(
    daemon: Daemon, scope: trio.CancelScope, *, task_status: trio.TaskStatus[object]
) -> None:
    """``daemon.serve`` inside ``scope``: cancelling the scope stops this one daemon."""
    with scope:
        await daemon.serve(task_status=task_status)


@dataclasses.dataclass
class Stoppable:
    """A daemon served in a test's nursery that the test stops alone, as a kill would (no
    clean stop: ``stop``) or cleanly (``shutdown``), and waits for."""

    daemon: Daemon
    ports: BoundPorts
    scope: trio.CancelScope
    done: trio.Event

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()

    async def shutdown(self) -> None:
        await self.daemon.shutdown()
        await self.done.wait()


async def serve_stoppable(nursery: trio.Nursery, daemon: Daemon) -> Stoppable:
    """Serve ``daemon`` in ``nursery`` until the returned handle stops it."""
    scope, done = trio.CancelScope(), trio.Event()

    async def serve(*, task_status: trio.TaskStatus[object]) -> None:
        try:
            await serve_in(daemon, scope, task_status=task_status)
        finally:
            done.set()

    ports = await nursery.start(serve)
    return Stoppable(daemon, ports, scope, done)
