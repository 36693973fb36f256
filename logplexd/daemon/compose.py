"""The daemon: owns the registry, the store and every listener, in one nursery.

Shutdown is a cancel scope with a deadline: listeners stop at once, and only the final
flush (store compaction) is shielded, itself bounded by the same deadline.

Around the control API it adds what operations need (issue 6): ``/metrics``, the control
rods (``/admin/rods`` and the gate in front of every API route), systemd notifications and
socket activation, and ``reload()`` (SIGHUP).
"""

from __future__ import annotations

import dataclasses
import gc
import ipaddress
import logging
import os
import shutil
import signal
import ssl
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ..api import (
    ROD_NAMES,
    ApiListener,
    ControlApi,
    DrainStatusRoutes,
    ReadRoutes,
    Rods,
    RodsApi,
    RodState,
    mount_platform,
)
from ..backlog import BacklogStore, SpillSettings
from ..cluster import (
    ClusterDrains,
    ClusterReads,
    ClusterRegistry,
    DataPlane,
    NodeDir,
    OutboundBuffer,
    UnsentLedger,
    birth_hook,
    take_carried,
    take_journaled,
)
from ..config import TLS_PAIRS, Settings, ensure_auth_key, load_settings
from ..drains import DrainSettings, GatedDrainManager, attach_drains
from ..ingest import LogsIngest, LogsListener, SyslogInput
from ..router import Registry
from ..store import (
    EmbeddedStore,
    RedisStore,
    Store,
    StoreError,
    StoreUnavailable,
    migrate_platform_journal,
    open_store,
    serve_accounts_socket,
)
from ..tails import TailHolds, TailPump, TailSessions
from ..web import (
    ConnectionCount,
    CredentialChecker,
    Request,
    Response,
    ServerCertificate,
    serve_http,
)
from ._allocator import fit_overcommit, keep_heap, no_huge_pages
from ._logging import configure_logging
from .metrics import (
    BacklogFigures,
    DrainPumpFigures,
    Metrics,
    MetricsSnapshot,
    RedisFigures,
    StoreFigures,
    TailFigures,
)
from .systemd import ActivationError, Notifier, listen_fds, trio_listeners

log = logging.getLogger("logplexd")

# How often STATUS= is refreshed for `systemctl status`.
STATUS_INTERVAL = 10.0
# The cyclic GC's thresholds once the daemon runs (Python's defaults: 700, 10, 10).
GC_THRESHOLDS = (20_000, 50, 50)
# How often the import of an earlier version's platform.lpj is tried while the store (Redis)
# cannot be reached.
PLATFORM_MIGRATION_RETRY = 1.0
# Settings a reload (SIGHUP) applies to the running daemon; the others need a restart.
LIVE_SETTINGS = frozenset(
    {
        "tls_cert",
        "tls_key",
        "api_tls_cert",
        "api_tls_key",
        "logs_tls_cert",
        "logs_tls_key",
        "public_url",
        "auth_key",
        "syslog_idle_timeout",
        "syslog_first_byte_timeout",
        "max_syslog_connections",
        "max_drains_per_channel",
        "session_url_ttl",
        "tail_max_duration",
        "shutdown_timeout",
        "log_level",
        "firehose_channel_ids",
        "firehose_filter_tokens",
        *ROD_NAMES,
    }
)


@dataclass(frozen=True)
class BoundPorts:
    api: int
    logs: int
    syslog: int


class _GcThresholds:
    """The process's GC thresholds are ``GC_THRESHOLDS`` while any daemon of it runs, and
    what they were before once the last one stops (tests and embedders run several
    daemons in a process of theirs, which overlap)."""

    def __init__(self) -> None:
        self._running = 0
        self._before = gc.get_threshold()

    def enter(self) -> None:
        if self._running == 0:
            self._before = gc.get_threshold()
            gc.set_threshold(*GC_THRESHOLDS)
        self._running += 1

    def leave(self) -> None:
        self._running -= 1
        if self._running == 0:
            gc.set_threshold(*self._before)


_GC = _GcThresholds()


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        environ: MutableMapping[str, str] | None = None,
        reload_settings: Callable[[Settings], Settings] | None = None,
    ) -> None:
        """``environ`` is where systemd's variables are read (default ``os.environ``);
        ``reload_settings`` computes the new settings on ``reload()``."""
        self.settings = settings
        self.environ = os.environ if environ is None else environ
        self._reload_settings = reload_settings or reload_from_sources
        self.node_dir: NodeDir | None = None
        try:
            self._compose(settings)
        except BaseException:
            # The data dir is held from early on (``NodeDir.open``): a daemon that was never
            # made must not keep the next process (or daemon) on it from starting.
            if self.node_dir is not None:
                self.node_dir.close()
            raise

    def _compose(self, settings: Settings) -> None:
        """Every component ``serve`` runs, made from ``settings``."""
        # Redis mode (issue 11): history, tails and drains go through Redis streams.
        self.plane: DataPlane | None = None
        self.ledger: UnsentLedger | None = None
        self.registry: Registry
        if settings.store_url:
            self.plane = DataPlane(
                settings.store_url,
                node_id=settings.resolved_node_id(),
                keep_messages=max(settings.channel_buffer_messages, settings.history_messages),
                buffer=OutboundBuffer(settings.redis_buffer_messages, settings.redis_buffer_bytes),
                tcp_congestion=settings.redis_tcp_congestion,
            )
            # Held until serve() ends: a second process on this data dir refuses to start
            # (StoreLocked), and the incarnations earlier ones recorded are dead for certain.
            node_dir = self.node_dir = NodeDir(settings.data_dir)
            node_dir.open()
            # What a kill -9 took before Redis had it: told (a loss marker, an L10) as each
            # channel is made again.
            ledger = self.ledger = UnsentLedger(settings.data_dir)
            lost, channels = ledger.open()
            if lost:
                log.warning(
                    "data plane: %d messages of %d channels routed before the last stop "
                    "were not acknowledged by Redis (the process was killed); what its last "
                    "write did not store is announced by their channels' drains",
                    lost,
                    channels,
                )
            self.registry = ClusterRegistry(
                self.plane,
                settings.history_messages,
                settings.history_bytes,
                settings.channel_buffer_messages,
                settings.channel_buffer_bytes,
                ring_messages=settings.redis_ring_messages or None,
                ledger=ledger,
            )
        else:
            self.registry = Registry(
                settings.history_messages,
                settings.history_bytes,
                settings.channel_buffer_messages,
                settings.channel_buffer_bytes,
            )
        self.registry.set_firehose(settings.firehose_channel_ids, settings.firehose_filter_tokens)
        self.syslog = SyslogInput(
            self.registry,
            max_frame=settings.max_frame,
            max_connections=settings.max_syslog_connections,
            idle_timeout=settings.syslog_idle_timeout,
            threads=settings.ingest_threads,
            first_byte_timeout=settings.syslog_first_byte_timeout,
        )
        # Disk backlogs for drains (issue 19). In Redis mode the channel's stream is the
        # backlog up to READER_SLACK x keep, and the drain's checkpoint its position; past
        # that, with ``redis_drain_spill``, a drain spills on the disk of the node that owns
        # it, for as long as it does (``ephemeral``; docs/SCALING.md).
        self.backlogs: BacklogStore | None = None
        redis_mode = self.plane is not None
        if settings.drain_spill and (settings.redis_drain_spill or not redis_mode):
            self.backlogs = BacklogStore(
                settings.data_dir / ("redis-backlog" if redis_mode else "backlog"),
                SpillSettings(
                    drain_budget_bytes=settings.drain_spill_budget,
                    total_budget_bytes=settings.drain_spill_total,
                    min_free_bytes=settings.drain_spill_min_free,
                    # Ephemeral: nothing there outlives the process but what a clean stop
                    # carries over to the next (read back at once), nor needs a sync.
                    fsync="never" if redis_mode else settings.drain_spill_fsync,
                    fsync_interval=settings.drain_spill_fsync_interval,
                    only_refused=redis_mode,
                ),
                ephemeral=redis_mode,
            )
        self.drains = GatedDrainManager(
            self.registry,
            settings=DrainSettings(overflow=settings.drain_overflow),
            backlogs=self.backlogs,
        )
        self.cluster_drains: ClusterDrains | None = None
        if self.plane is not None:
            self.cluster_drains = ClusterDrains(
                self.plane, self.drains, ttl=settings.drain_lease_ttl, node_dir=self.node_dir
            )
        self.tails = TailSessions()
        self.tail_holds = TailHolds(pushback=settings.drain_overflow == "pushback")
        self.tail_pump = TailPump(holds=self.tail_holds)
        self.rods = Rods(RodState.from_settings(settings), tails=self.tails, drains=self.drains)
        self.notifier = Notifier(self.environ)
        self.connections: dict[str, ConnectionCount] = {
            "api": ConnectionCount(),
            "logs": ConnectionCount(),
        }
        self.logs_bytes = 0
        self.metrics = Metrics(self.metrics_snapshot)
        self.store: Store | None = None
        self._core: trio.Nursery | None = None
        self._listeners = trio.CancelScope()
        # The listeners' certificates by their setting ("tls_cert", "api_tls_cert",
        # "logs_tls_cert"): loaded at start, re-read on reload().
        self._certificates: dict[str, ServerCertificate] = {}
        self.api: ControlApi | None = None
        self.logs: LogsIngest | None = None
        self.ports: BoundPorts | None = None
        self.reloads = 0
        self.tls_port: int | None = None

    async def serve(
        self, *, task_status: trio.TaskStatus[BoundPorts] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled or ``shutdown()``; reports the bound ports once all listen."""
        try:
            await self._serve(task_status)
        finally:
            # Redis mode: the data dir is free for the next process (or daemon) once this
            # one is done with it, however it ended.
            if self.node_dir is not None:
                self.node_dir.close()

    async def _serve(self, task_status: trio.TaskStatus[BoundPorts]) -> None:
        s = self.settings
        inherited = listen_fds(self.environ, unset=self.environ is os.environ)
        store = self.store = open_store(str(s.data_dir), s.store_url, node_id=s.resolved_node_id())
        if self.plane is not None and isinstance(store, RedisStore):
            # A new drain's start point is stored before the API answers (cluster.birth).
            store.drain_birth_hooks.append(birth_hook(self.plane))
        gc_tuned = False
        try:
            self.api = ControlApi(
                store,
                self.registry,
                auth_key=s.auth_key or "",
                public_url=s.resolved_public_url(),
                max_drains_per_channel=s.max_drains_per_channel,
                log_session_ttl=s.session_url_ttl,
                log_session_tail_max=s.tail_max_duration,
                drain_stats=self.drains.channel_stats,
            )
            cluster_reads = None
            if self.plane is not None and isinstance(self.registry, ClusterRegistry):
                cluster_reads = ClusterReads(self.plane, self.registry)
            ReadRoutes(
                store,
                self.registry,
                self.rods,
                cluster_reads,
                keepalive=s.sse_keepalive,
                holds=self.tail_holds,
                pump=self.tail_pump,
            ).mount(self.api.add_route)
            DrainStatusRoutes(store, self.drains.channel_stats).mount(self.api.add_route)
            mount_platform(self.api, store, self.registry)
            RodsApi(self.rods, lambda: self.settings.auth_key or "").mount(self.api.add_route)
            credentials = CredentialChecker(store)

            async def any_channel_permissions(cred_id: str, password: str) -> frozenset[str] | None:
                credential = await credentials.check(cred_id, password)
                return None if credential is None else frozenset(credential.permissions)

            self.logs = LogsIngest(
                self.registry,
                any_channel_permissions,
                max_frame=s.max_frame,
                hold_timeout=s.logs_hold_timeout,
            )
            # The store and routing index just loaded live as long as the daemon: keep the
            # cyclic GC from walking them again on every full collection.
            gc.collect()
            gc.freeze()
            # The event loop makes and drops container objects (tasks, scopes, frames) at
            # a high rate, and 1,000 drains connecting at once set off collections of a
            # heap of as many channels: young collections 28 times rarer (GC_THRESHOLDS).
            _GC.enter()
            gc_tuned = True
            logs = self.logs
            self.rods.watch(lambda state: logs.set_ingress_denied(state.deny_logs_ingress))
            async with trio.open_nursery() as core:
                self._core = core
                await core.start(store.maintain)
                # Platform records of an earlier version (its platform.lpj) into the store,
                # before anything is served; then `logplexd accounts` may reach this store.
                await core.start(self._migrate_platform_records, store)
                await core.start(serve_accounts_socket, store, s.data_dir)
                await core.start(self.drains.run)
                if self.plane is not None and self.cluster_drains is not None:
                    if self.backlogs is not None:
                        # What a clean stop carried over is kept, or else what a killed
                        # process journaled; the rest goes.
                        journaled = take_journaled(self.backlogs.directory)
                        carried = take_carried(self.backlogs.directory)
                        if not carried and journaled:
                            carried = journaled
                            log.info(
                                "drains: %d disk backlogs journaled by a process that was "
                                "killed; each is resumed if its checkpoint did not move",
                                len(journaled),
                            )
                        self.backlogs.open(keep=carried)
                        self.cluster_drains.carried = carried
                    else:
                        # Spilling turned off since: what an earlier process left goes.
                        shutil.rmtree(s.data_dir / "redis-backlog", ignore_errors=True)
                    if self.ledger is not None and isinstance(store, RedisStore):
                        core.start_soon(self._forget_unclaimed, store, self.ledger)
                    await core.start(self.plane.run)
                    await core.start(self.cluster_drains.run)
                    attach_drains(store, self.cluster_drains)
                    if isinstance(store, RedisStore) and self.cluster_drains.carried:
                        core.start_soon(self._forget_carried_absent, store, self.cluster_drains)
                else:
                    if self.backlogs is not None:
                        self.backlogs.open()
                    attach_drains(store, self.drains)
                    if self.backlogs is not None:
                        self.backlogs.prune({drain.id for drain in store.drains()})
                core.start_soon(self.metrics.loop_lag.run)
                core.start_soon(self.tail_holds.run)
                core.start_soon(self.tail_pump.run)
                self.ports = await core.start(self._serve_listeners, inherited)
                self.notifier.ready(self.status_line())
                core.start_soon(self.notifier.run_watchdog)
                core.start_soon(self._report_status)
                task_status.started(self.ports)
        finally:
            for socks in inherited.values():
                for sock in socks:
                    sock.close()
            if gc_tuned:
                _GC.leave()
            await self._final_flush()
            self.notifier.close()

    @staticmethod
    async def _forget_carried_absent(store: RedisStore, drains: ClusterDrains) -> None:
        """Once the store has loaded every drain (``attach_drains`` has added each), the
        backlogs carried over for drains deleted since the last stop go."""
        await store.loaded.wait()
        drains.forget_carried_absent()

    @staticmethod
    async def _forget_unclaimed(store: RedisStore, ledger: UnsentLedger) -> None:
        """Once the store has loaded every channel (each took over its slot of what the
        previous process left unwritten), let go of those of channels deleted meanwhile."""
        await store.loaded.wait()
        gone = ledger.forget_unclaimed()
        if gone:
            log.info("data plane: %d channels deleted since the last stop had unwritten "
                     "messages; not told", gone)  # fmt: skip

    async def _migrate_platform_records(
        self, store: Store, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Import the data dir's ``platform.lpj`` (``store.migrate_platform_journal``).

        Reports started once it is done, or once the store was found unavailable (Redis
        not reached yet): then it tries again every ``PLATFORM_MIGRATION_RETRY`` seconds
        in the background. An unreadable file stops the start, as an unreadable store does.
        """
        started = False
        while True:
            try:
                if store.failure is None:
                    await migrate_platform_journal(store, self.settings.data_dir)
                    break
            except StoreUnavailable as exc:
                log.warning("platform records: import of platform.lpj waits for the store: %s", exc)
            except (OSError, StoreError) as exc:
                if not started:
                    raise
                log.error("platform records: platform.lpj not imported: %s", exc)
                break
            if not started:
                started = True
                task_status.started()
            await trio.sleep(PLATFORM_MIGRATION_RETRY)
        if not started:
            task_status.started()

    async def _listen(
        self, role: str, inherited: Mapping[str, list[Any]], host: str, port: int
    ) -> list[trio.SocketListener]:
        socks = inherited.get(role)
        if socks:
            return trio_listeners(socks)
        return await trio.open_tcp_listeners(port, host=host)

    async def _serve_listeners(
        self, inherited: Mapping[str, list[Any]], *, task_status: trio.TaskStatus[BoundPorts]
    ) -> None:
        s = self.settings
        api, logs = self.api, self.logs
        assert api is not None and logs is not None
        with self._listeners:
            async with trio.open_nursery() as nursery:
                syslog_listeners = await self._listen("syslog", inherited, *s.syslog_addr)
                syslog_port = await nursery.start(self.syslog.serve_listeners, syslog_listeners)
                if inherited.get("syslog-tls") and not s.tls_enabled:
                    raise ActivationError(
                        "systemd passed a syslog-tls socket but tls_cert and tls_key are not set"
                    )
                syslog_tls = self._certificate("tls_cert", s.tls_cert, s.tls_key)
                if syslog_tls is not None:
                    tls_raw = await self._listen("syslog-tls", inherited, *s.tls_syslog_addr)
                    tls = [trio.SSLListener(ln, syslog_tls.context) for ln in tls_raw]
                    self.tls_port = await nursery.start(self.syslog.serve_listeners, tls)
                api_tls = self._certificate("api_tls_cert", s.api_tls_cert, s.api_tls_key)
                logs_tls = self._certificate("logs_tls_cert", s.logs_tls_cert, s.logs_tls_key)
                api_listeners = await self._listen("api", inherited, *s.api_addr)
                # /metrics is open to a scraper on loopback, as the original's.
                metrics_open = all(_is_loopback(ln) for ln in api_listeners)
                self.metrics.mount(api.add_route, auth=not metrics_open)
                listener = ApiListener(
                    api,
                    gate=self.rods.api_gate,
                    health=self._data_plane_health,
                    observe=self.metrics.observe_api,
                )
                api_port = await nursery.start(
                    partial(
                        serve_http,
                        listener.handle,
                        *s.api_addr,
                        max_connections=s.api_max_connections,
                        max_body=s.api_max_body,
                        listeners=api_listeners,
                        connections=self.connections["api"],
                        # 408/413/431/500 in the Platform API's format on its paths.
                        errors=api.error_response,
                        tls=api_tls.context if api_tls is not None else None,
                    )
                )
                # With port 0 only now is the session URL known; nothing could have asked yet.
                api_host = _listener_host(api_listeners[0], s.api_addr.host)
                api.config = replace(
                    api.config,
                    public_url=s.resolved_public_url((api_host, api_port)).rstrip("/"),
                )
                logs_listener = LogsListener(logs)

                async def handle_logs(request: Request) -> Response:
                    self.logs_bytes += len(request.body)
                    return await logs_listener.handle(request)

                logs_port = await nursery.start(
                    partial(
                        serve_http,
                        handle_logs,
                        *s.logs_addr,
                        max_connections=s.api_max_connections,
                        max_body=logs.max_body,
                        listeners=await self._listen("logs", inherited, *s.logs_addr),
                        connections=self.connections["logs"],
                        tls=logs_tls.context if logs_tls is not None else None,
                    )
                )
                log.info(
                    "logplexd ready: api %s:%d%s, logs %s:%d%s, syslog %s:%d, data dir %s",
                    api_host,
                    api_port,
                    " (https)" if api_tls is not None else "",
                    s.logs_addr.host,
                    logs_port,
                    " (https)" if logs_tls is not None else "",
                    s.syslog_addr.host,
                    syslog_port,
                    s.data_dir,
                )
                task_status.started(BoundPorts(api_port, logs_port, syslog_port))

    def _certificate(
        self, setting: str, cert_file: Path | None, key_file: Path | None
    ) -> ServerCertificate | None:
        """The certificate of one listener, loaded now, or None when it has none (plain)."""
        if cert_file is None or key_file is None:
            return None
        certificate = ServerCertificate(str(cert_file), str(key_file))
        self._certificates[setting] = certificate
        return certificate

    def _data_plane_health(self) -> Response | None:
        """Redis mode: 503 while Redis cannot be reached (and until it first is), for the
        data plane (history, drains) or the store. ``/healthcheck`` is the store's alone."""
        plane = self.plane
        if plane is None:
            return None
        failure = plane.failure or (self.store.failure if self.store is not None else None)
        if failure is None:
            return None
        return Response.text(503, "Redis unavailable: " + failure)

    def metrics_snapshot(self) -> MetricsSnapshot:
        store, plane = self.store, self.plane
        redis = None
        if plane is not None:
            redis = RedisFigures(
                trips=dict(plane.trips),
                entries_written=plane.entries_written,
                messages_written=plane.messages_written,
                bytes_written=plane.bytes_written,
                entries_read=plane.entries_read,
                messages_read=plane.messages_read,
                messages_trimmed=plane.messages_trimmed,
                writes_waited=plane.writer.deferred,
                entries_own=plane.followers.entries_own,
                entries_early=plane.followers.entries_early,
                entries_proposed=plane.writer.entries_proposed,
                proposals_moved=plane.writer.proposals_moved,
                entries_landed=plane.writer.entries_landed,
                malformed_entries=plane.malformed_entries,
                flushes_quiet=plane.writer.quiet_flushes,
                pushback_holds=plane.pushback.holds,
                buffer_messages=plane.buffer.messages,
                buffer_dropped=plane.buffer.dropped,
                reachable=plane.failure is None,
                drain_takeovers=self.cluster_drains.takeovers
                if self.cluster_drains is not None
                else 0,
                connections_opened=plane.connections_opened,
                flushes=plane.writer.flushes,
                flush_wait_seconds=plane.writer.flush_wait_seconds,
                inputs_gated_seconds=plane.pushback.gate.closed_seconds,
                link_congestion=plane.link_congestion(),
            )
        pump = self.drains.pump
        return MetricsSnapshot(
            syslog=self.syslog.stats,
            logs=self.logs.stats if self.logs is not None else None,
            logs_bytes=self.logs_bytes,
            connections=self.connections,
            drains=self.drains.stats(),
            channels=len(self.registry.channels),
            unknown_tokens=self.registry.totals.unknown_token,
            store=None
            if store is None
            else StoreFigures(
                healthy=store.failure is None,
                journal_bytes=store.journal_bytes if isinstance(store, EmbeddedStore) else None,
            ),
            tails=TailFigures(
                self.tails.active,
                self.tails.started,
                self.tails.killed,
                self.tail_holds.holds,
                self.tail_holds.slow_verdicts,
                self.tail_pump.attached,
                self.tail_pump.writes,
                self.tail_pump.rounds.current_linger,
            ),
            rods=self.rods.state,
            redis=redis,
            firehose=self.registry.firehose_posted(),
            backlog=self._backlog_figures(),
            drain_pump=DrainPumpFigures(
                pump.attached,
                pump.writes,
                pump.handed_back,
                pump.current_linger,
                pump.threaded_rounds,
            ),
        )

    def _backlog_figures(self) -> BacklogFigures | None:
        backlogs = self.backlogs
        if backlogs is None:
            return None
        return BacklogFigures(
            disk_bytes=backlogs.disk_bytes,
            queued_bytes=backlogs.queued_bytes,
            written_messages=backlogs.written_messages,
            written_bytes=backlogs.written_bytes,
            refused_messages=backlogs.refused_messages,
            cut_bytes=backlogs.cut_bytes,
            refusing=backlogs.refusing,
        )

    # -- systemd STATUS= -----------------------------------------------------------------------
    def _received(self) -> int:
        logs = self.logs.stats.frames if self.logs is not None else 0
        return self.syslog.stats.frames + logs

    def status_line(self, rate: float | None = None) -> str:
        parts = [
            f"channels={len(self.registry.channels)}",
            f"drains={len(self.drains)}",
            f"tails={self.tails.active}",
        ]
        if rate is not None:
            parts.append(f"msgs/s={rate:.0f}")
        engaged = [name for name, on in self.rods.state.flags().items() if on]
        if engaged:
            parts.append("rods=" + ",".join(engaged))
        return " ".join(parts)

    async def _report_status(self) -> None:
        if not self.notifier.enabled:
            return
        last_count, last_at = self._received(), trio.current_time()
        while True:
            await trio.sleep(STATUS_INTERVAL)
            count, now = self._received(), trio.current_time()
            rate = (count - last_count) / max(now - last_at, 1e-9)
            last_count, last_at = count, now
            self.notifier.status(self.status_line(rate))

    # -- reload (SIGHUP) -----------------------------------------------------------------------
    def reload(self) -> list[str]:
        """Re-read the configuration and the TLS certificate; apply what can change live.

        Connections stay open. Returns the settings that changed but need a restart. A bad
        new configuration is logged and the running one kept.
        """
        self.notifier.reloading()
        try:
            return self._reload()
        finally:
            self.reloads += 1
            self.notifier.ready(self.status_line())

    def _reload(self) -> list[str]:
        old = self.settings
        try:
            new = ensure_auth_key(self._reload_settings(old), announce=log.info)
        except Exception as exc:
            log.error("reload: configuration not changed: %s", exc)
            return []
        # Each listener's certificate is re-read (the files may be new at the same paths);
        # one that does not load keeps the running one.
        tls_restart: list[str] = []
        for cert_name, key_name, _ in TLS_PAIRS:
            certificate = self._certificates.get(cert_name)
            cert_file, key_file = getattr(new, cert_name), getattr(new, key_name)
            if certificate is None or cert_file is None or key_file is None:
                # Turning TLS on or off for a listener needs a restart.
                pair = (cert_name, key_name)
                tls_restart += [n for n in pair if getattr(old, n) != getattr(new, n)]
                continue
            try:
                certificate.reload(str(cert_file), str(key_file))
            except (OSError, ssl.SSLError) as exc:
                log.error("reload: %s not changed: %s", cert_name, exc)
                new = replace(
                    new, **{cert_name: getattr(old, cert_name), key_name: getattr(old, key_name)}
                )
        changed = [
            f.name
            for f in dataclasses.fields(Settings)
            if f.compare and getattr(old, f.name) != getattr(new, f.name)
        ]
        restart = [name for name in changed if name not in LIVE_SETTINGS]
        restart += [name for name in tls_restart if name not in restart]
        live = {name: getattr(new, name) for name in changed if name in LIVE_SETTINGS}
        # What needs a restart keeps its running value, so `settings` says what is in force.
        self.settings = replace(new, **{name: getattr(old, name) for name in restart})
        self._apply_live(live)
        if live:
            shown = ", ".join("auth_key" if n == "auth_key" else n for n in sorted(live))
            log.info("reload: applied %s", shown)
        if restart:
            log.warning("reload: changed but need a restart: %s", ", ".join(sorted(restart)))
        if not changed:
            log.info("reload: configuration unchanged; TLS certificate re-read")
        return sorted(restart)

    def _apply_live(self, live: Mapping[str, Any]) -> None:
        s = self.settings
        api = self.api
        api_settings = {
            "auth_key",
            "public_url",
            "max_drains_per_channel",
            "session_url_ttl",
            "tail_max_duration",
        }
        if api is not None and live.keys() & api_settings:
            config = replace(
                api.config,
                auth_key=s.auth_key or "",
                max_drains_per_channel=s.max_drains_per_channel,
                log_session_ttl=s.session_url_ttl,
                log_session_tail_max=s.tail_max_duration,
            )
            if "public_url" in live and self.ports is not None:
                bound = (s.api_addr.host, self.ports.api)
                config = replace(config, public_url=s.resolved_public_url(bound).rstrip("/"))
            api.config = config
        self.syslog.idle_timeout = s.syslog_idle_timeout
        self.syslog.first_byte_timeout = s.syslog_first_byte_timeout
        self.syslog.max_connections = s.max_syslog_connections
        if "log_level" in live:
            logging.getLogger().setLevel(s.log_level_number)
        if live.keys() & {"firehose_channel_ids", "firehose_filter_tokens"}:
            self.registry.set_firehose(s.firehose_channel_ids, s.firehose_filter_tokens)
        rods = {name: live[name] for name in ROD_NAMES if name in live}
        if rods:
            self.rods.set(rods)

    # -- shutdown ------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop accepting, give drains ``shutdown_timeout`` to flush, then stop everything."""
        self.notifier.stopping("shutting down")
        self._listeners.cancel()
        await self.drains.shutdown(self.settings.shutdown_timeout)
        if self._core is not None:
            self._core.cancel_scope.cancel()

    async def _final_flush(self) -> None:
        store, self.store = self.store, None
        if store is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(self.settings.shutdown_timeout):
            if store.failure is None:
                try:
                    await store.compact()
                except (OSError, StoreError) as exc:
                    log.warning("store compaction at shutdown failed: %s", exc)
            await trio.to_thread.run_sync(store.close)


def _is_loopback(listener: trio.SocketListener) -> bool:
    try:
        host = listener.socket.getsockname()[0]
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except (OSError, ValueError, IndexError):
        return False


def _listener_host(listener: trio.SocketListener, default: str) -> str:
    try:
        host = listener.socket.getsockname()[0]
    except OSError:
        return default
    return default if host in ("0.0.0.0", "::") else host


def reload_from_sources(old: Settings) -> Settings:
    """Load the settings again as the daemon was started: the same config file and flags.

    The flags given at start are known from ``sources``; the environment and the config
    file are read afresh.
    """
    flags = {
        name: _raw(getattr(old, name))
        for name, source in old.sources.items()
        if source.startswith("--") and name != "auth_key"
    }
    return load_settings(flags, config_file=old.config_file)


def _raw(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def run_until_signalled(settings: Settings) -> None:
    daemon = Daemon(settings)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.serve)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("received SIGHUP, reloading")
                    daemon.reload()
                    continue
                log.info("received %s, shutting down", signal.Signals(signum).name)
                break
            with trio.move_on_after(settings.shutdown_timeout * 2):
                await daemon.shutdown()
            nursery.cancel_scope.cancel()


def run(settings: Settings) -> int:
    """The daemon as a process of its own (``logplexd serve``): logging, the allocator,
    then ``run_until_signalled`` until a signal stops it."""
    configure_logging(getattr(logging, settings.log_level.upper(), logging.INFO))
    no_huge_pages()
    fit_overcommit()
    keep_heap()
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


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc
