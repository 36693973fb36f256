"""TCP syslog input: a thin trio adapter around the native ``OctetFramer`` and router.

One read becomes one batch becomes one ``Registry.route`` call: no Python object per
message. Connections are bounded in number and cut when idle (which also ends half-open
ones whose peer vanished without a FIN).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ..native import Batch, OctetFramer
from ..router import Registry
from ._thread import ConnectionReader, ReaderEnd

log = logging.getLogger("logplexd.syslog")

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
    bytes_received: int = 0
    frames: int = 0
    malformed: int = 0
    routed: int = 0
    unknown_token: int = 0
    # Reads done (and framed) in a worker thread rather than on the event loop.
    offloaded_reads: int = 0


class SyslogInput:
    def __init__(
        self,
        registry: Registry,
        *,
        max_frame: int = 10240,
        max_connections: int = 1024,
        idle_timeout: float = 300.0,
        threads: int = 0,
    ) -> None:
        self.registry = registry
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
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
            self.handle_connection, list(listeners), task_status=_Started(task_status, bound)
        )

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        stats = self.stats
        if stats.connections_open >= self.max_connections:
            stats.connections_rejected += 1
            await trio.aclose_forcefully(stream)
            return
        stats.connections_open += 1
        stats.connections_total += 1
        _enable_keepalive(stream)
        framer = OctetFramer(self.max_frame)
        fd = -1
        if self.threads and isinstance(stream, trio.SocketStream):
            fd = stream.socket.fileno()
        try:
            while True:
                with trio.move_on_after(self.idle_timeout) as idle:
                    data = await stream.receive_some(READ_SIZE)
                if idle.cancelled_caught:
                    stats.connections_idle_closed += 1
                    break
                if not data:
                    break
                stats.bytes_received += len(data)
                self.ingest(framer, data)
                busy = fd >= 0 and len(data) >= OFFLOAD_READ_BYTES
                if (
                    busy
                    and self._offloaded < self.threads
                    and not await self._read_in_thread(fd, framer)
                ):
                    break
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
                                self._route(item[1])
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

    def ingest(self, framer: OctetFramer, data: bytes | bytearray) -> None:
        self._route(framer.feed(data))

    def _route(self, batch: Batch) -> None:
        stats = self.stats
        stats.malformed += batch.malformed
        if len(batch):
            stats.frames += len(batch)
            counts = self.registry.route(batch)
            stats.routed += counts.routed
            stats.unknown_token += counts.unknown_token


class ServerCertificate:
    """The TLS listener's certificate; ``reload()`` swaps it for new connections only."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.reload()

    def reload(self) -> None:
        # load_cert_chain on the live context: connections already open keep their session.
        self.context.load_cert_chain(self.cert_file, self.key_file)
        log.info("TLS certificate loaded from %s", self.cert_file)


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
