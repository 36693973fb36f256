"""The daemon: owns the registry, the store and every listener, in one nursery.

Shutdown is a cancel scope with a deadline: listeners stop at once, and only the final
flush (store compaction) is shielded, itself bounded by the same deadline.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass

import trio

from .config import Settings
from .registry import Registry
from .syslog_input import SyslogInput

log = logging.getLogger("logplexd")


@dataclass(frozen=True)
class BoundPorts:
    api: int
    logs: int
    syslog: int


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry(settings.history_messages, settings.history_bytes)
        self.syslog = SyslogInput(
            self.registry,
            max_frame=settings.max_frame,
            max_connections=settings.max_syslog_connections,
            idle_timeout=settings.syslog_idle_timeout,
        )
        self.store = None
        self.api = None
        self.ports: BoundPorts | None = None

    def _open_store(self) -> None:
        from .store import open_store

        self.store = open_store(self.settings.data_dir)
        self.store.load_into(self.registry)

    async def serve(self, *, task_status: trio.TaskStatus[BoundPorts] = trio.TASK_STATUS_IGNORED):
        """Run until cancelled; reports the bound ports once every listener is up."""
        from .api import ControlApi, LogsApi
        from .http.server import serve_http

        s = self.settings
        self._open_store()
        assert self.store is not None
        self.api = ControlApi(
            self.store,
            self.registry,
            auth_key=s.auth_key,
            public_url=s.public_url,
            max_drains_per_channel=s.max_drains_per_channel,
        )
        logs_api = LogsApi(self.registry, self.store, max_frame=s.max_frame)
        try:
            async with trio.open_nursery() as nursery:
                syslog_port = await nursery.start(self.syslog.serve, *s.syslog_addr)
                api_port = await nursery.start(
                    lambda task_status: serve_http(
                        self.api.handle,
                        *s.api_addr,
                        max_connections=s.api_max_connections,
                        max_body=s.api_max_body,
                        task_status=task_status,
                    )
                )
                logs_port = await nursery.start(
                    lambda task_status: serve_http(
                        logs_api.handle,
                        *s.logs_addr,
                        max_connections=s.api_max_connections,
                        max_body=logs_api.max_body,
                        task_status=task_status,
                    )
                )
                self.ports = BoundPorts(api_port, logs_port, syslog_port)
                log.info(
                    "logplexd ready: api %s:%d, logs %s:%d, syslog %s:%d, data %s",
                    s.api_addr[0], api_port, s.logs_addr[0], logs_port,
                    s.syslog_addr[0], syslog_port, s.data_dir,
                )
                task_status.started(self.ports)
        finally:
            await self._final_flush()

    async def _final_flush(self) -> None:
        if self.store is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(self.settings.shutdown_timeout):
            await trio.to_thread.run_sync(self.store.close)
        self.store = None


async def run_until_signalled(settings: Settings) -> None:
    daemon = Daemon(settings)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()


def run(settings: Settings) -> int:
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        trio.run(run_until_signalled, settings)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
