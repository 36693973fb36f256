"""TCP syslog input: a thin trio adapter around the native ``OctetFramer`` and router.

One read becomes one batch becomes one ``Registry.route`` call: no Python object per
message. Connections are bounded in number and cut when idle (which also ends half-open
ones whose peer vanished without a FIN) or when their first bytes are late; at the limit a
new connection evicts one that has sent nothing, else the longest-idle one
(``_admission.py``), so that idle connections cannot lock producers out.
"""

from __future__ import annotations

import fcntl
import logging
import math
import socket
import struct
import termios
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ..native import Batch, OctetFramer
from ..router import Registry, Releasable, RouteCounts
from ..web import ServerCertificate
from ._admission import ConnectionTable, Slot
from ._thread import ConnectionReader, ReaderEnd

log = logging.getLogger("logplexd.syslog")

DEFAULT_FIRST_BYTE_TIMEOUT = 10.0
# At most one warning this often while connections are evicted or refused at the limit.
PRESSURE_LOG_INTERVAL = 10.0
# How long a connection admitted by evicting another waits for it to be gone.
EVICTION_WAIT = 5.0

READ_SIZE = 128 * 1024
# A connection whose reads come back this full is busy: its reads and framing move to a
# worker thread (_ingest_thread.py); it returns to the event loop once reads shrink.
OFFLOAD_READ_BYTES = 64 * 1024


@dataclass
class SyslogInputStats:
    connections_open: int = 0
    connections_total: int = 0
    connections_rejected: int = 0
    connections_idle_closed: int = 0
    # Closed because their first bytes did not come within first_byte_timeout, and closed
    # to make room for a new connection at max_connections (issue 22).
    connections_silent_closed: int = 0
    connections_evicted: int = 0
    bytes_received: int = 0
    frames: int = 0
    malformed: int = 0
    routed: int = 0
    unknown_token: int = 0
    # Reads done (and framed) in a worker thread rather than on the event loop.
    offloaded_reads: int = 0
    # Times a connection stopped reading because a channel it fed was held, and how many
    # connections wait so now (pushback: the router, not a consumer, is behind).
    pushbacks: int = 0
    connections_held: int = 0


class SyslogInput:
    def __init__(
        self,
        registry: Registry,
        *,
        max_frame: int = 10240,
        max_connections: int = 1024,
        idle_timeout: float = 300.0,
        threads: int = 0,
        first_byte_timeout: float = DEFAULT_FIRST_BYTE_TIMEOUT,
    ) -> None:
        self.registry = registry
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        # A new connection's first bytes (for TLS: its ClientHello) must come this soon.
        self.first_byte_timeout = first_byte_timeout
        self._conns = ConnectionTable()
        self._pressure_logged = -PRESSURE_LOG_INTERVAL
        self.stats = SyslogInputStats()
        # Worker threads that read and frame busy plain-TCP connections (0: none).
        self.threads = threads
        self._offloaded = 0
        self._thread_limiter = trio.CapacityLimiter(max(1, threads))

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_tls(
        self,
        host: str,
        port: int,
        certificate: ServerCertificate,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """RFC 5425 syslog over TLS: the same framing and routing inside a TLS stream."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        tls = [trio.SSLListener(ln, certificate.context) for ln in listeners]
        await self.serve_listeners(tls, task_status=task_status)

    async def serve_listeners(
        self,
        listeners: Sequence[trio.abc.Listener[Any]],
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        first: Any = listeners[0]
        raw = getattr(first, "transport_listener", first)
        bound = raw.socket.getsockname()[1]
        log.info("syslog input listening on port %d", bound)
        await trio.serve_listeners(
            self._serve_connection, list(listeners), task_status=_Started(task_status, bound)
        )

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        """Admission: at ``max_connections`` the oldest connection that has sent nothing,
        else the longest-idle one (``_admission.py``), is evicted to let this one in; only
        when none can be is the new one refused."""
        conns = self._conns
        victim: Slot | None = None
        if len(conns) >= self.max_connections:
            victim = conns.victim(_kernel_idle)
            if victim is None:
                self.stats.connections_rejected += 1
                self._log_pressure()
                await trio.aclose_forcefully(stream)
                return
            conns.evict(victim)
            self.stats.connections_evicted += 1
            self._log_pressure()
        slot = conns.add(stream)
        try:
            if victim is not None:
                # Its place is ours once it is gone (its read loop's finally has run).
                with trio.move_on_after(EVICTION_WAIT):
                    await victim.done.wait()
            with slot.scope:
                await self.handle_connection(stream)
        finally:
            conns.remove(slot)
            slot.done.set()

    def _log_pressure(self) -> None:
        now = trio.current_time()
        if now - self._pressure_logged < PRESSURE_LOG_INTERVAL:
            return
        self._pressure_logged = now
        stats = self.stats
        log.warning(
            "syslog: at max_syslog_connections (%d): %d connections evicted, %d refused, "
            "%d closed before their first bytes (totals)",
            self.max_connections,
            stats.connections_evicted,
            stats.connections_rejected,
            stats.connections_silent_closed,
        )

    async def _first_bytes(self, stream: trio.abc.Stream) -> bool:
        """Wait until the connection has sent something (its first bytes are then read by
        the read loop); False when they did not come within ``first_byte_timeout`` or the
        connection was evicted meanwhile."""
        slot = self._conns.get(stream)
        if slot is not None and slot.evicted:
            return False
        sock = _raw_socket(stream)
        if sock is None:  # not a socket (tests with memory streams): nothing to wait on
            return True
        with trio.move_on_after(self.first_byte_timeout) as waiting:
            if slot is not None:
                slot.first = waiting
            try:
                await trio.lowlevel.wait_readable(sock)
            finally:
                if slot is not None:
                    slot.first = None
        if not waiting.cancelled_caught:
            if slot is not None:
                self._conns.activate(slot)
            return True
        if slot is None or not slot.evicted:
            self.stats.connections_silent_closed += 1
        return False

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        stats = self.stats
        if stats.connections_open >= self.max_connections:
            stats.connections_rejected += 1
            await trio.aclose_forcefully(stream)
            return
        stats.connections_open += 1
        stats.connections_total += 1
        _enable_keepalive(stream)
        if not await self._first_bytes(stream):
            stats.connections_open -= 1
            await trio.aclose_forcefully(stream)
            return
        framer = OctetFramer(self.max_frame)
        fd = -1
        if self.threads and isinstance(stream, trio.SocketStream):
            fd = stream.socket.fileno()
        try:
            # One scope for the connection's life, its deadline moved with every read (a
            # scope per read was 5 % of the daemon with one busy connection). Only a wait
            # for bytes is idleness: the deadline is lifted before routing waits for a
            # held channel and before a worker thread reads.
            with trio.CancelScope() as idle:
                while True:
                    idle.deadline = trio.current_time() + self.idle_timeout
                    data = await stream.receive_some(READ_SIZE)
                    if not data:
                        break
                    stats.bytes_received += len(data)
                    await self._route_all(framer.feed(data), idle)
                    busy = fd >= 0 and len(data) >= OFFLOAD_READ_BYTES
                    if busy and self._offloaded < self.threads:
                        idle.deadline = math.inf
                        if not await self._read_in_thread(fd, framer):
                            break
            if idle.cancelled_caught:
                stats.connections_idle_closed += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            stats.connections_open -= 1
            await trio.aclose_forcefully(stream)

    async def _read_in_thread(self, fd: int, framer: OctetFramer) -> bool:
        """Let a worker thread read and frame this busy connection; route what it hands over.

        Returns True when the connection got quiet (the loop reads it again), False when it
        ended (EOF, idle timeout). Raises OSError for a failed read.
        """
        stats = self.stats
        self._offloaded += 1
        reader = ConnectionReader(
            fd,
            framer,
            read_size=READ_SIZE,
            quiet_below=OFFLOAD_READ_BYTES // 4,
            idle_timeout=self.idle_timeout,
        )
        end: ReaderEnd | OSError | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_reader, reader)
                try:
                    while end is None:
                        for item in await reader.items():
                            if isinstance(item, tuple):
                                stats.offloaded_reads += 1
                                stats.bytes_received += item[0]
                                # The thread stops at its bounded queue meanwhile.
                                await self._route_all(item[1])
                            else:
                                end = item
                finally:
                    reader.stop()
        finally:
            # Only now: the thread has returned, so it can no longer touch the pipes.
            reader.close()
            self._offloaded -= 1
        if isinstance(end, OSError):
            raise end
        if end is ReaderEnd.IDLE:
            stats.connections_idle_closed += 1
        return end is ReaderEnd.QUIET

    async def _run_reader(self, reader: ConnectionReader) -> None:
        await trio.to_thread.run_sync(reader.run, limiter=self._thread_limiter)

    def ingest(self, framer: OctetFramer, data: bytes | bytearray) -> tuple[Releasable, ...]:
        """Frame and route ``data`` whole (whatever holds); returns what holds it: the
        channels it fed that a consumer holds (and in Redis mode the node's outbound gate,
        while closed). The connections use ``_route_all``, which stops at them."""
        batch = framer.feed(data)
        self._count(batch)
        return self._route(batch, hold=False).held

    async def _route_all(self, batch: Batch, idle: trio.CancelScope | None = None) -> None:
        """Route ``batch``; at a frame whose channel is held, stop reading this connection
        until it is released (lifting the ``idle`` deadline: that wait is not idleness),
        then route on from that frame (per-connection order kept)."""
        self._count(batch)
        counts = self._route(batch)
        while counts.held:
            if idle is not None:
                idle.deadline = math.inf
            await self._wait_released(counts.held)
            if counts.rest is None:
                return
            counts = self._route(batch, counts.rest)

    def _count(self, batch: Batch) -> None:
        self.stats.malformed += batch.malformed
        self.stats.frames += len(batch)

    def _route(self, batch: Batch, start: int = 0, *, hold: bool = True) -> RouteCounts:
        stats = self.stats
        if start >= len(batch):
            return RouteCounts()
        counts = self.registry.route(batch, start, until_held=hold)
        stats.routed += counts.routed
        stats.unknown_token += counts.unknown_token
        return counts

    async def _wait_released(self, held: tuple[Releasable, ...]) -> None:
        """Stop reading this connection until the channels it fed are no longer held: the
        kernel's receive buffer fills and TCP flow control slows the producer down."""
        stats = self.stats
        stats.pushbacks += 1
        stats.connections_held += 1
        try:
            for channel in held:
                await channel.wait_released()
        finally:
            stats.connections_held -= 1


class _Started:
    """Report the bound port instead of serve_listeners' listener list."""

    def __init__(self, task_status: trio.TaskStatus[int], port: int) -> None:
        self._task_status = task_status
        self._port = port

    def started(self, value: object = None) -> None:
        self._task_status.started(self._port)


def _enable_keepalive(stream: trio.abc.Stream) -> None:
    sock = getattr(stream, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
    except OSError:
        pass


def _raw_socket(stream: Any) -> Any:
    """The TCP socket under a plain or TLS stream, or None (not a socket stream)."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return getattr(stream, "socket", None)


# struct tcp_info (linux/tcp.h): __u32 tcpi_last_data_recv, in ms, at byte 52.
_TCP_INFO_LAST_DATA_RECV = 52


def _kernel_idle(stream: Any) -> float | None:
    """Seconds since the kernel last received data on this connection (Linux), or None:
    unknown, or bytes wait to be read (it is busy or held by pushback, never idle)."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    sock = _raw_socket(stream)
    if tcp_info is None or sock is None:
        return None
    try:
        if isinstance(stream, trio.SSLStream) and stream.pending():
            return None
        waiting = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        if struct.unpack("i", waiting)[0]:
            return None
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 104)
    except (OSError, ValueError):
        return None
    if len(info) < _TCP_INFO_LAST_DATA_RECV + 4:
        return None
    ms: int = struct.unpack_from("I", info, _TCP_INFO_LAST_DATA_RECV)[0]
    return ms / 1000
