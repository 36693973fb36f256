"""Connections of the data plane's own to each Redis server, for its frequent calls.

Every flush's ``APPEND``, the followers' reads and their position reports went through the
general client (coredis), which spends ~0.3 ms of Python per round trip (its reader and
writer tasks, a scope per call): with one busy channel a quarter of a node's CPU. Here a
``ServerLink`` is one TCP connection to one Redis server, used by one task at a time: a call
packs its commands at once (``pack_pipeline``, ``_native/resp.pyx``: a flush's frames are
sent from where they are, not copied into the request), sends them back to back (on a
paced link a large request first from a worker thread, ``THREAD_SEND_BYTES``) and reads
their replies in the same task (``RespReader``). A call that fails or is cancelled part
way closes the connection (replies may still be on their way); the next call opens a new
one (``AUTH``, ``SELECT`` and ``CLIENT SETNAME`` first).

``DirectLinks`` keeps one link per server and purpose (the writer's, the follower's
blocking read, the position reports...): a blocking read never holds up a write.
"""

from __future__ import annotations

import logging
import os
import select
import socket
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ..native import NEED_DATA, RespError, RespReader, pack_pipeline
from ..store import RedisTarget

# Bytes asked of the socket per receive.
RECEIVE_BYTES = 256 * 1024
# Arguments of at least this many bytes (a stream entry's frames) are sent from where they
# are, gathered with the RESP around them by one ``sendmsg`` (at most SEND_BUFFERS a call,
# under Linux's IOV_MAX of 1,024): 1,000 channels' entries of ~8 KB were copied once more
# into the request, 11 % of the writer task's time (py-spy, bench/RESULTS.md 2026-12-04).
BY_REFERENCE = 2048
SEND_BUFFERS = 512
# On a link the kernel paces (``paced``: BBR), a request at least this large is written from
# a worker thread first: the kernel's copy into the socket, its pacing timers and, to a Redis
# on loopback, the receive work it runs in the sender's context then leave the loop's
# thread, which routes on meanwhile. Under BBR, against the loop writing it all: one busy
# channel 1.05x and 1.03x the messages a second at 0.97-0.99x the CPU, 1,000 channels 1.02x.
# On an unpaced link (CUBIC, the default: ``redis_tcp_congestion``) the thread's hand-offs
# cost more than the copy it takes off the loop: without it 0.97-0.98x the CPU at 1.04x the
# rate with 8 connections on one channel, 1.01-1.03x with 1,000 channels, 0.98x with one
# connection (bench/RESULTS.md, "Session of 2026-12-07 (sixth)").
THREAD_SEND_BYTES = 64 * 1024
CONNECT_TIMEOUT = 2.0
# A Unix socket's send buffer is ~200 KB by default (loopback TCP's grows to 4 MB): a flush
# of 1,000 busy channels (~30 MB) then went to Redis in ~200 KB steps, a wake-up of each
# side per step, at 0.90x the rate of TCP; with this, 1.01-1.03x (bench/RESULTS.md).
UNIX_SEND_BUFFER = 4 * 1024 * 1024

Address = tuple[str, int]

log = logging.getLogger("logplexd.cluster")

# Linux's socket option (None where the platform has none).
_TCP_CONGESTION: int | None = getattr(socket, "TCP_CONGESTION", None)


class CongestionControl:
    """The TCP congestion control a link's socket is given (``redis_tcp_congestion``; ""
    leaves the system's), one for all of a data plane's links, whichever connection they
    came with. Under BBR, the kernel paces what a socket sends, arming a timer
    every few packets; a flush of megabytes to a Redis nearby then cost a timer per ~64 KB,
    on a VM a trap to the hypervisor each, and the worker thread's write took less of the
    request at once (the loop sent the rest): with one busy channel the worker thread armed
    930 timers per million messages, 106 under CUBIC, at 1.07-1.11x the messages a second
    and 0.93-0.96x the node's CPU (bench/RESULTS.md). Where the name is refused (unknown to
    the kernel, or not in ``net.ipv4.tcp_allowed_congestion_control``) the socket keeps the
    system's, said once in the log."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._refused = False

    def apply(self, sock: Any) -> None:
        if not self.name or self._refused or _TCP_CONGESTION is None:
            return  # (a platform without the option, not Linux: the system's, silently)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_CONGESTION, self.name.encode())
        except OSError as exc:
            self._refused = True
            log.warning(
                "data plane: TCP congestion control %r not available (%s): the links to "
                "Redis keep the system's (redis_tcp_congestion)",
                self.name,
                exc.strerror or exc,
            )


def paced(congestion_control: str | None) -> bool:
    """Whether the kernel paces what a socket of this congestion control sends (BBR and its
    versions), with a timer every few packets."""
    return congestion_control is not None and congestion_control.startswith("bbr")


class RespConnectionError(ConnectionError):
    """The connection to Redis broke, or Redis closed it."""


class RespUnreachable(RespConnectionError):
    """No connection could be made: nothing of the call was sent."""


class ServerLink:
    def __init__(
        self,
        address: Address,
        target: RedisTarget,
        name: str,
        congestion: CongestionControl | None = None,
    ) -> None:
        self.address = address
        self._target = target
        self._name = name
        self._congestion = congestion if congestion is not None else CongestionControl("")
        self._stream: trio.SocketStream | None = None
        self._poll: select.poll | None = None
        self._reader = RespReader()
        self._lock = trio.Lock()
        self.opened = 0  # connections made (a test and the metrics of the link look)
        # The open connection's id on the server (``CLIENT ID``; None: none open): another
        # connection can end a blocking read of this one early (``CLIENT UNBLOCK``).
        self.client_id: int | None = None
        # What the open connection sends from a worker thread first (``send_gathered``):
        # THREAD_SEND_BYTES on a paced link, 0 (the loop sends it all) otherwise.
        self.thread_bytes = 0

    @property
    def connected(self) -> bool:
        return self._stream is not None

    @property
    def congestion_control(self) -> str | None:
        """The TCP congestion control of the open connection (None: none open, or not TCP)."""
        stream = self._stream
        if stream is None or self._target.socket_path is not None or _TCP_CONGESTION is None:
            return None
        try:
            raw = stream.socket.getsockopt(socket.IPPROTO_TCP, _TCP_CONGESTION, 16)
        except OSError:
            return None  # closed under it meanwhile: a scrape must not fail for that
        return bytes(raw).split(b"\0", 1)[0].decode()

    async def call(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` in one write and return their replies, in order (an error
        reply is a ``RespError`` in its place)."""
        got: list[list[Any]] = []
        await self.call_parts([commands], lambda _, replies: got.append(replies))
        return got[0]

    async def call_parts(
        self,
        parts: Sequence[Sequence[Sequence[Any]]],
        on_part: Callable[[int, list[Any]], None],
    ) -> None:
        """Send the commands of every part in one write, and hand each part's replies to
        ``on_part`` (its index, the replies in order) as soon as they are all read, once
        the whole request is written (Redis may still be running the last parts then).
        What ``on_part`` raises ends the call (and closes the connection: replies may still
        be coming)."""
        async with self._lock:
            try:
                if self._stream is not None and self._poll is not None and self._poll.poll(0):
                    # Readable before a call asked anything: the server closed it (it
                    # restarted, or timed an idle client out) or sent what nobody asked for.
                    self.close()
                if self._stream is None:
                    await self._open()
                commands = [command for part in parts for command in part]
                await self._exchange(
                    pack_pipeline(commands, BY_REFERENCE), [len(part) for part in parts], on_part
                )
            except BaseException:
                self.close()
                raise

    async def _exchange(
        self,
        request: list[Any],
        counts: Sequence[int],
        on_part: Callable[[int, list[Any]], None],
    ) -> None:
        """Send ``request`` (``pack_pipeline``'s pieces, in order), then read ``counts[i]``
        replies for each part ``i`` in turn and hand them to ``on_part``."""
        stream = self._stream
        assert stream is not None
        reader = self._reader
        try:
            await send_gathered(stream.socket, request, self.thread_bytes)
            for index, count in enumerate(counts):
                replies: list[Any] = []
                while len(replies) < count:
                    reply = reader.next_reply()
                    if reply is NEED_DATA:
                        data = await stream.receive_some(RECEIVE_BYTES)
                        if not data:
                            raise RespConnectionError(
                                f"Redis {self._where()} closed the connection"
                            )
                        reader.feed(data)
                    else:
                        replies.append(reply)
                on_part(index, replies)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if isinstance(exc, RespConnectionError):
                raise
            raise RespConnectionError(
                f"Redis {self._where()}: {exc or 'connection lost'}"
            ) from None

    async def _open(self) -> None:
        host, port = self.address
        socket_path = self._target.socket_path
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                if socket_path is not None:
                    stream = await trio.open_unix_socket(socket_path)
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SEND_BUFFER)
                else:
                    stream = await trio.open_tcp_stream(host, port)
                    self._congestion.apply(stream.socket)
        except (OSError, trio.TooSlowError) as exc:
            raise RespUnreachable(f"Redis {self._where()}: {exc or 'no answer in time'}") from None
        self._stream = stream
        self.thread_bytes = THREAD_SEND_BYTES if paced(self.congestion_control) else 0
        self._poll = select.poll()
        self._poll.register(stream.socket.fileno(), select.POLLIN | select.POLLPRI)
        self._reader = RespReader()
        self.opened += 1
        target = self._target
        hello: list[list[Any]] = []
        if target.password is not None:
            login = [target.username, target.password] if target.username else [target.password]
            hello.append(["AUTH", *login])
        if target.db:
            hello.append(["SELECT", target.db])
        hello.append(["CLIENT", "SETNAME", self._name])
        hello.append(["CLIENT", "ID"])
        replies: list[list[Any]] = []
        await self._exchange(pack_pipeline(hello), [len(hello)], lambda _, got: replies.append(got))
        # (An ACL that refuses ``CLIENT ID`` costs only the early end of a blocking read.)
        *greeted, client_id = replies[0]
        _raise_errors(0, greeted)
        self.client_id = client_id if isinstance(client_id, int) else None

    def _where(self) -> str:
        if self._target.socket_path is not None:
            return self._target.describe()  # the one server: as the store's log lines say
        return f"{self.address[0]}:{self.address[1]}"

    def close(self) -> None:
        stream, self._stream = self._stream, None
        self._poll = None
        self.client_id = None
        if stream is not None:
            # Not awaited: a socket close is immediate, and this runs in cancelled code too.
            stream.socket.close()


class DirectLinks:
    """One ``ServerLink`` per (server, purpose), opened when first used, closed together."""

    def __init__(
        self, target: RedisTarget, name: str, *, congestion: CongestionControl | None = None
    ) -> None:
        self._target = target
        self._name = name
        self._congestion = congestion if congestion is not None else CongestionControl("")
        self._links: dict[tuple[Address, str], ServerLink] = {}
        self._forgotten = 0  # connections the links dropped by ``forget`` had opened

    def link(self, address: Address, purpose: str) -> ServerLink:
        link = self._links.get((address, purpose))
        if link is None:
            link = self._links[address, purpose] = ServerLink(
                address, self._target, self._name, self._congestion
            )
        return link

    def forget(self, address: Address) -> None:
        """Close and drop the links to ``address`` (a server not reached: on a cluster, a
        node that failed over and may never come back), so that links are only ever kept
        to servers that answered lately."""
        for key in [key for key in self._links if key[0] == address]:
            link = self._links.pop(key)
            self._forgotten += link.opened
            link.close()

    def __len__(self) -> int:
        return len(self._links)

    def congestion_controls(self) -> dict[str, int]:
        """The open TCP links by their congestion control (``redis_links``)."""
        found: dict[str, int] = {}
        for link in self._links.values():
            name = link.congestion_control
            if name is not None:
                found[name] = found.get(name, 0) + 1
        return found

    @property
    def opened(self) -> int:
        """Connections opened so far, by every link, forgotten ones too."""
        return self._forgotten + sum(link.opened for link in self._links.values())

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()


async def send_gathered(
    sock: trio.socket.SocketType, pieces: Sequence[Any], thread_bytes: int = THREAD_SEND_BYTES
) -> None:
    """Send ``pieces`` in order, SEND_BUFFERS at a time per ``sendmsg``, whatever part of
    them each call takes. A request of ``thread_bytes`` or more (0: none) is first written
    from a worker thread, as far as the socket takes it at once (``_write_while_taken``);
    the event loop sends the rest."""
    views = [memoryview(piece) for piece in pieces if len(piece)]
    first = 0
    if thread_bytes and sum(len(view) for view in views) >= thread_bytes:
        sent = await trio.to_thread.run_sync(_write_while_taken, sock.fileno(), list(views))
        first = _advance(views, first, sent)
    while first < len(views):
        sent = await sock.sendmsg(views[first : first + SEND_BUFFERS])
        first = _advance(views, first, sent)


def _advance(views: list[memoryview], first: int, sent: int) -> int:
    """Drop ``sent`` bytes from the front of ``views[first:]``; the first view not sent
    whole (it keeps only its unsent part)."""
    while sent:
        size = len(views[first])
        if sent < size:
            views[first] = views[first][sent:]
            break
        sent -= size
        first += 1
    return first


def _write_while_taken(fd: int, views: list[memoryview]) -> int:
    """In a worker thread: write ``views`` to the (non-blocking) socket ``fd`` until it
    takes no more; the bytes written. Through a duplicate of ``fd``: a link closed
    meanwhile (shutdown, another task) cannot have its number reused under this write."""
    own = os.dup(fd)
    try:
        written = first = 0
        while first < len(views):
            try:
                sent = os.writev(own, views[first : first + SEND_BUFFERS])
            except BlockingIOError:
                break
            written += sent
            first = _advance(views, first, sent)
        return written
    finally:
        os.close(own)


def _raise_errors(_: int, replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, RespError):
            raise reply


def parse_address(name: str) -> Address:
    """``host:port`` (a cluster node's name) as an address."""
    host, _, port = name.rpartition(":")
    return host.strip("[]"), int(port)
