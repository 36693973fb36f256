"""The daemon: owns the registry, the store and every listener, in one nursery.

Shutdown is a cancel scope with a deadline: listeners stop at once, and only the final
flush (store compaction) is shielded, itself bounded by the same deadline.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, replace
from functools import partial

import trio

from .api import ControlApi, run_api
from .config import Settings
from .creds import CredentialChecker
from .data_routes import LogsListener, ReadRoutes
from .drain_sync import attach_drains
from .drains import DrainManager
from .http.server import serve_http
from .logs_ingest import LogsIngest
from .registry import Registry
from .store import open_store
from .store.base import Store
from .store.model import StoreError
from .syslog_input import ServerCertificate, SyslogInput

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
        self.drains = DrainManager(self.registry)
        self.store: Store | None = None
        self._core: trio.Nursery | None = None
        self._listeners = trio.CancelScope()
        self.api: ControlApi | None = None
        self.logs: LogsIngest | None = None
        self.ports: BoundPorts | None = None

    async def serve(self, *, task_status: trio.TaskStatus[BoundPorts] = trio.TASK_STATUS_IGNORED):
        """Run until cancelled or ``shutdown()``; reports the bound ports once all listen."""
        s = self.settings
        store = self.store = open_store(s.data_dir)
        try:
            self.api = ControlApi(
                store,
                self.registry,
                auth_key=s.auth_key or "",
                public_url=s.resolved_public_url(),
                max_drains_per_channel=s.max_drains_per_channel,
            )
            reads = ReadRoutes(store, self.registry)
            self.api.add_route(
                "GET", "/sessions/{session_id}", reads.session, name="session.get", auth=False
            )
            self.api.add_route(
                "GET", "/v3/channels/{channel}/logs", reads.channel_logs, name="v3.channel.logs"
            )
            credentials = CredentialChecker(store)

            async def any_channel_permissions(cred_id: str, password: str):
                credential = await credentials.check(cred_id, password)
                return None if credential is None else frozenset(credential.permissions)

            self.logs = LogsIngest(self.registry, any_channel_permissions, max_frame=s.max_frame)
            async with trio.open_nursery() as core:
                self._core = core
                await core.start(store.maintain)
                await core.start(self.drains.run)
                attach_drains(store, self.drains)
                self.ports = await core.start(self._serve_listeners)
                task_status.started(self.ports)
        finally:
            await self._final_flush()

    async def _serve_listeners(self, *, task_status: trio.TaskStatus[BoundPorts]) -> None:
        s = self.settings
        api, logs = self.api, self.logs
        assert api is not None and logs is not None
        with self._listeners:
            async with trio.open_nursery() as nursery:
                syslog_port = await nursery.start(self.syslog.serve, *s.syslog_addr)
                if s.tls_enabled:
                    certificate = ServerCertificate(str(s.tls_cert), str(s.tls_key))
                    await nursery.start(self.syslog.serve_tls, *s.tls_syslog_addr, certificate)
                api_port = await nursery.start(
                    partial(
                        run_api,
                        api,
                        *s.api_addr,
                        max_connections=s.api_max_connections,
                        max_body=s.api_max_body,
                    )
                )
                # With port 0 only now is the session URL known; nothing could have asked yet.
                api.config = replace(
                    api.config,
                    public_url=s.resolved_public_url((s.api_addr.host, api_port)).rstrip("/"),
                )
                logs_port = await nursery.start(
                    partial(
                        serve_http,
                        LogsListener(logs).handle,
                        *s.logs_addr,
                        max_connections=s.api_max_connections,
                        max_body=logs.max_body,
                    )
                )
                log.info(
                    "logplexd ready: api %s:%d, logs %s:%d, syslog %s:%d, data dir %s",
                    s.api_addr.host,
                    api_port,
                    s.logs_addr.host,
                    logs_port,
                    s.syslog_addr.host,
                    syslog_port,
                    s.data_dir,
                )
                task_status.started(BoundPorts(api_port, logs_port, syslog_port))

    async def shutdown(self) -> None:
        """Stop accepting, give drains ``shutdown_timeout`` to flush, then stop everything."""
        self._listeners.cancel()
        await self.drains.shutdown(self.settings.shutdown_timeout)
        if self._core is not None:
            self._core.cancel_scope.cancel()

    async def _final_flush(self) -> None:
        store, self.store = self.store, None
        if store is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(self.settings.shutdown_timeout):
            await trio.to_thread.run_sync(store.close)


async def run_until_signalled(settings: Settings) -> None:
    daemon = Daemon(settings)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                break
            with trio.move_on_after(settings.shutdown_timeout * 2):
                await daemon.shutdown()
            nursery.cancel_scope.cancel()


def run(settings: Settings) -> int:
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        trio.run(run_until_signalled, settings)
    except BaseException as exc:
        errors = list(_leaves(exc))
        if errors and all(isinstance(e, OSError | StoreError) for e in errors):
            for error in errors:
                log.error("cannot start: %s", error)
            return 1
        raise
    log.info("logplexd stopped")
    return 0


def _leaves(exc: BaseException):
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc
