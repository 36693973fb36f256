"""Drains under test: receivers (TCP/TLS syslog sink, scripted h11 HTTP sink), a running
``DrainManager``, and messages appended to a channel as routing would."""

from __future__ import annotations

import random
import re
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import trio
import trio.testing

from logplexd.drains import DrainManager, DrainSettings, DrainStats
from logplexd.drains.pump import write_payloads
from logplexd.native import parse_frames
from logplexd.router.registry import Channel, Registry

from .syslog import message as syslog_message
from .syslog import octet_counted
from .wait import wait_until

TOKEN = "d.2b0fa2d1-76b4-4b8a-9e0b-8f6a0b0c1d2e"


def message(i: int, text: str = "drain test message") -> bytes:
    """Message ``i`` of app "app" (unframed, as a ring holds it)."""
    return syslog_message("app", f"{text} {i}")


def delivered(i: int, text: str = "drain test message") -> bytes:
    """What a syslog drain sends for ``message(i, text)``: octet-counted, the drain token
    as hostname, a newline after the text."""
    return octet_counted(syslog_message("app", f"{text} {i}\n", host=TOKEN))


_L10 = re.compile(rb"Error L10 \(output buffer overflow\): (\d+) messages dropped")


def l10_count(frame: bytes) -> int | None:
    """The count an L10 frame (syslog or HTTP) announces; None for any other frame."""
    found = _L10.search(frame)
    return None if found is None else int(found.group(1))


def l10_total(data: bytes) -> int:
    """The counts of every L10 in ``data`` (a receiver's bytes), summed."""
    return sum(int(found.group(1)) for found in _L10.finditer(data))


def append(channel: Channel, frames: list[bytes]) -> None:
    """What routing does: append to the ring, then wake the channel's readers."""
    channel.ring.append_batch(parse_frames(frames))
    channel.notify()


def stats_of(manager: DrainManager, drain_id: int) -> DrainStats:
    stats = manager.drain_stats(drain_id)
    assert stats is not None, f"no drain {drain_id}"
    return stats


async def start_manager(
    nursery: trio.Nursery,
    registry: Registry,
    settings: DrainSettings | None = None,
    *,
    seed: int = 7,
    **kwargs: object,
) -> DrainManager:
    """A running ``DrainManager``; ``seed`` fixes its retry jitter, ``kwargs`` go to it."""
    if settings is not None:
        kwargs["settings"] = settings
    manager = DrainManager(registry, rng=random.Random(seed), **kwargs)  # type: ignore[arg-type]
    await nursery.start(manager.run)
    return manager


async def manager_with_sinks(
    nursery: trio.Nursery,
    registry: Registry,
    count: int,
    settings: DrainSettings | None = None,
    **manager_options: object,
) -> tuple[DrainManager, list[SyslogSink]]:
    """A running manager (``start_manager``) with drains 1..``count`` of channels
    app0, app1..., each to a ``SyslogSink`` of its own."""
    manager = await start_manager(nursery, registry, settings, **manager_options)
    sinks = []
    for n in range(count):
        registry.ensure_channel(f"app{n}")
        sink = SyslogSink()
        await nursery.start(sink.serve)
        sinks.append(sink)
        manager.add_drain(f"app{n}", n + 1, TOKEN, f"syslog://127.0.0.1:{sink.port}")
    return manager, sinks


class HeldWrites:
    """The pump's worker-thread writes, held until ``go`` is set: a round in flight. With
    ``partial_at``, the first drain's write takes only that many bytes."""

    def __init__(self, partial_at: int | None = None) -> None:
        self.started = threading.Event()
        self.go = threading.Event()
        self.partial_at = partial_at

    def __call__(self, jobs: list[tuple[int, bytes]]) -> list[int | OSError]:
        self.started.set()
        assert self.go.wait(10)
        if self.partial_at is not None:
            fd, data = jobs[0]
            jobs[0] = (fd, data[: self.partial_at])
        return write_payloads(jobs)


async def shut_down_during_a_held_write(
    nursery: trio.Nursery,
    registry: Registry,
    manager: DrainManager,
    sinks: list[SyslogSink],
    held: HeldWrites,
) -> None:
    """``manager_with_sinks``' drains, the manager's pump writing with ``held``: message 0
    of each channel connects each drain (it parks, the pump writes for it), then messages
    1-10 of each go out in one round from the pump's worker thread, held there while
    ``manager.shutdown`` stops the drains, and released once every drain's task has left.
    Returns once the shutdown has; asserts that it waited for the write."""
    held.go.set()
    for n in range(len(sinks)):
        append(registry.channels[f"app{n}"], [message(0)])
    await wait_until(lambda: manager.pump.attached == len(sinks))
    for sink in sinks:
        await sink.wait_for(lambda sink=sink: sink.messages() == 1)
    held.go.clear()
    held.started.clear()
    for n in range(len(sinks)):
        append(registry.channels[f"app{n}"], [message(i) for i in range(1, 11)])
    await trio.to_thread.run_sync(held.started.wait, 10)
    stopped = trio.Event()

    async def shutdown() -> None:
        await manager.shutdown()
        stopped.set()

    nursery.start_soon(shutdown)
    # The grace runs out (the drains wait for the write), and their tasks are cancelled.
    await wait_until(lambda: manager.pump.attached == 0)
    await trio.testing.wait_all_tasks_blocked()
    assert not stopped.is_set()  # the shutdown waits for the write
    held.go.set()
    with trio.fail_after(10):
        await stopped.wait()


class _Notifier:
    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self._event.wait()


class SyslogSink(_Notifier):
    """Accepts connections and records every byte; ``read=False`` never reads (a dead peer)."""

    def __init__(self, *, read: bool = True, tls: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.read = read
        self.tls = tls
        self.data = bytearray()
        self.connections = 0
        self.handshake_failures = 0
        self.port = 0
        self._streams: list[trio.abc.Stream] = []
        self._resumed = trio.Event()

    async def serve(self, port: int = 0, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle, listeners)
                task_status.started(self.port)
        finally:
            for stream in self._streams:
                await trio.aclose_forcefully(stream)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self._streams.append(stream)
        if self.tls is not None:
            stream = trio.SSLStream(stream, self.tls, server_side=True)
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError:
                self.handshake_failures += 1
                self.notify()
                return
        self.connections += 1
        self.notify()
        if not self.read:
            await self._resumed.wait()
        try:
            while chunk := await stream.receive_some(65536):
                self.data += chunk
                self.notify()
        except trio.BrokenResourceError:
            pass

    def resume(self) -> None:
        """A sink made with ``read=False`` starts reading (the receiver came back)."""
        self.read = True
        self._resumed.set()

    def frames(self, *, arriving: bool = False) -> list[bytes]:
        """The received octet-counted frames, checking the framing on the way. With
        ``arriving`` (polling while data still flows) a last frame not yet complete is left
        out instead of failing."""
        out, data, i = [], bytes(self.data), 0
        while i < len(data):
            sp = data.find(b" ", i)
            if sp < 0 and arriving:
                break
            n = int(data[i:sp])
            if arriving and sp + 1 + n > len(data):
                break
            out.append(data[sp + 1 : sp + 1 + n])
            assert len(out[-1]) == n, "truncated frame"
            i = sp + 1 + n
        return out

    def messages(self) -> int:
        """Complete frames received so far (a frame still arriving is not counted)."""
        data, i, count = self.data, 0, 0
        while True:
            sp = data.find(b" ", i)
            if sp < 0:
                return count
            end = sp + 1 + int(data[i:sp])
            if end > len(data):
                return count
            count += 1
            i = end


@dataclass
class Received:
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    connection: int
    # trio.current_time() when the request was complete (under MockClock: virtual seconds).
    at: float = 0.0

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.decode().lower() == name.lower():
                return value.decode()
        return None


# What HttpSink answers one request with: a status, (status, extra response headers),
# "stall" (never answer) or "reset" (close with RST).
SinkAction = int | str | tuple[int, list[tuple[str, str]]]


@dataclass
class HttpSink(_Notifier):
    """h11 server answering each request by a script of ``SinkAction``s, then ``default``."""

    script: list[SinkAction] = field(default_factory=list)
    default: SinkAction = 200
    tls: ssl.SSLContext | None = None
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        _Notifier.__init__(self)

    async def serve(self, port: int = 0, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    async def _handle(self, raw: trio.SocketStream) -> None:
        self.connections += 1
        connection = self.connections
        stream: trio.abc.Stream = raw
        if self.tls is not None:
            stream = trio.SSLStream(raw, self.tls, server_side=True)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = None, bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(bytes(await stream.receive_some(65536)))
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                assert request is not None
                action = self.script.pop(0) if self.script else self.default
                self.requests.append(
                    Received(
                        request.target,
                        list(request.headers.raw_items()),
                        bytes(body),
                        connection,
                        trio.current_time(),
                    )
                )
                self.notify()
                if action == "stall":
                    await trio.sleep_forever()
                if action == "reset":
                    raw.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    raw.socket.close()
                    return
                status, extra = action if isinstance(action, tuple) else (action, [])
                assert isinstance(status, int)
                # 204 and 304 have no body (RFC 9110 6.4.1); the others answer "ok".
                content = b"" if status in (204, 304) else b"ok"
                length = [("Content-Length", "2")] if content else []
                response = h11.Response(status_code=status, headers=[*length, *extra])
                await stream.send_all(
                    conn.send(response)
                    + (conn.send(h11.Data(data=content)) if content else b"")
                    + conn.send(h11.EndOfMessage())
                )
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.ProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    def bodies(self) -> list[bytes]:
        return [r.body for r in self.requests]
