"""Busy syslog connections read and framed by a worker thread (logplexd/_ingest_thread.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import trio

from logplexd.ingest._thread import MAX_QUEUED, ConnectionReader, ReaderEnd
from logplexd.ingest.syslog import OFFLOAD_READ_BYTES, SyslogInput
from logplexd.native import OctetFramer
from logplexd.router.registry import Registry
from tests.helpers.syslog import frame, message

TOKEN = "t.40c71ce6-83e3-4384-a062-010f886da916"


def reader_on_pair(**kw) -> tuple[ConnectionReader, socket.socket, socket.socket]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    options = {"read_size": 4096, "quiet_below": 0, "idle_timeout": 10.0} | kw
    return ConnectionReader(ours.fileno(), OctetFramer(), **options), ours, peer


async def collect(
    reader: ConnectionReader, send: Callable[[], None] | None = None
) -> tuple[list[bytes], object]:
    """Run the thread (and ``send`` in another); return the frames handed over and the end."""
    frames: list[bytes] = []
    end: object = None
    async with trio.open_nursery() as nursery:
        if send is not None:
            nursery.start_soon(trio.to_thread.run_sync, send)
        nursery.start_soon(trio.to_thread.run_sync, reader.run)
        while end is None:
            for item in await reader.items():
                if isinstance(item, tuple):
                    frames.extend(item[1].frames())
                else:
                    end = item
    reader.close()
    return frames, end


async def test_frames_arrive_in_order_then_eof():
    reader, ours, peer = reader_on_pair()
    data = b"".join(frame(TOKEN, b"message %d" % i) for i in range(2000))

    def send() -> None:  # more than the socket buffers hold: from a thread
        peer.sendall(data)
        peer.shutdown(socket.SHUT_WR)

    with trio.fail_after(10):
        frames, end = await collect(reader, send)
    assert end is ReaderEnd.EOF
    assert len(frames) == 2000
    assert frames[0].endswith(b"message 0") and frames[-1].endswith(b"message 1999")
    ours.close()
    peer.close()


async def test_a_small_read_hands_the_connection_back():
    reader, ours, peer = reader_on_pair(quiet_below=1024)
    peer.sendall(frame(TOKEN, b"just one"))
    with trio.fail_after(10):
        frames, end = await collect(reader)
    assert end is ReaderEnd.QUIET and len(frames) == 1
    ours.close()
    peer.close()


async def test_silence_for_the_idle_timeout_ends_it():
    reader, ours, peer = reader_on_pair(idle_timeout=0.05)
    with trio.fail_after(10):
        frames, end = await collect(reader)
    assert end is ReaderEnd.IDLE and frames == []
    ours.close()
    peer.close()


async def test_a_reset_is_handed_over_as_the_error():
    reader, ours, peer = reader_on_pair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()
    with trio.fail_after(10):
        frames, end = await collect(reader)
    # A socketpair peer closing gives EOF; either way the thread ends and says how.
    assert end is ReaderEnd.EOF or isinstance(end, OSError)
    ours.close()


async def test_the_queue_is_bounded_and_stop_ends_the_thread():
    reader, ours, peer = reader_on_pair(read_size=100)
    peer.sendall(b"".join(frame(TOKEN, b"m%d" % i) for i in range(100)))  # far more than 4 reads
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, reader.run)
        with trio.fail_after(10):
            while True:  # the thread fills the queue, then waits for the loop
                await trio.sleep(0.01)
                with reader._lock:
                    if len(reader._queue) >= MAX_QUEUED:
                        break
            await trio.sleep(0.05)
            with reader._lock:
                assert len(reader._queue) == MAX_QUEUED
            reader.stop()
    # The thread has returned (the nursery waited for it): what it queued is still there.
    items = await reader.items()
    assert items[-1] is ReaderEnd.STOPPED and len(items) == MAX_QUEUED + 1
    reader.close()
    ours.close()
    peer.close()


@pytest.mark.parametrize("threads", [0, 2])
async def test_a_busy_connection_moves_to_a_thread_and_keeps_its_order(threads):
    registry = Registry(history_messages=100_000, history_bytes=64 << 20, buffer_messages=100_000)
    registry.add_token("app-123", TOKEN, "app")
    syslog = SyslogInput(registry, threads=threads)
    n = 40_000  # ~4 MB: many full reads
    data = b"".join(frame(TOKEN, b"message %d" % i) for i in range(n))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(syslog.serve, "127.0.0.1", 0)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(data)
        # Then a trickle: the connection goes quiet and back to the loop, and still works.
        channel = registry.channel("app-123")
        assert channel is not None
        with trio.fail_after(20):
            while len(channel.ring) < n:
                await trio.sleep(0.01)
            await stream.send_all(frame(TOKEN, b"after the burst"))
            while len(channel.ring) < n + 1:
                await trio.sleep(0.01)
        lines = channel.ring.last(n + 1).frames()
        assert lines == [message("app", b"message %d" % i) for i in range(n)] + [
            message("app", b"after the burst")
        ]
        await stream.aclose()
        with trio.fail_after(5):
            while syslog.stats.connections_open:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert syslog.stats.routed == n + 1
    if threads:
        assert syslog.stats.offloaded_reads > 0
        assert syslog._offloaded == 0
    else:
        assert syslog.stats.offloaded_reads == 0


async def test_shutdown_while_a_thread_reads_does_not_hang():
    registry = Registry()
    registry.add_token("app-123", TOKEN, "app")
    syslog = SyslogInput(registry, threads=1)
    big = frame(TOKEN, b"x" * 9000)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(syslog.serve, "127.0.0.1", 0)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(10):
            while syslog.stats.offloaded_reads == 0:
                await stream.send_all(big * (OFFLOAD_READ_BYTES // len(big) + 2))
        # The sender stops sending but keeps the connection open: the thread waits in poll.
        shutdown = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - shutdown < 5  # the nursery's exit is the wait
    await stream.aclose()
    assert syslog._offloaded == 0


async def test_the_daemon_setting_reaches_the_syslog_input(tmp_path):
    import dataclasses

    from logplexd.daemon import Daemon
    from tests.helpers.daemon import settings_for

    settings = dataclasses.replace(settings_for(tmp_path), ingest_threads=3)
    daemon = Daemon(settings)
    assert daemon.syslog.threads == 3
    assert Daemon(dataclasses.replace(settings, ingest_threads=0)).syslog.threads == 0


async def test_hostile_bytes_on_a_threaded_connection_are_counted_and_it_keeps_routing():
    registry = Registry(history_messages=100_000, history_bytes=64 << 20, buffer_messages=100_000)
    registry.add_token("app-123", TOKEN, "app")
    syslog = SyslogInput(registry, threads=2, max_frame=2048)
    good = b"".join(frame(TOKEN, b"good %d" % i) for i in range(3000))
    # Garbage lengths, an oversized frame and binary noise between two good bursts.
    hostile = b"99999999999 x\n" + b"3000 " + b"y" * 3000 + b"\x00\xff" * 5000 + b"\n"
    after = b"".join(frame(TOKEN, b"after %d" % i) for i in range(3000))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(syslog.serve, "127.0.0.1", 0)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(good + hostile + after)
        await stream.aclose()
        channel = registry.channel("app-123")
        assert channel is not None
        with trio.fail_after(20):
            while syslog.stats.connections_open or syslog.stats.connections_total == 0:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    lines = channel.ring.last(10_000).frames()
    assert lines[:3000] == [message("app", b"good %d" % i) for i in range(3000)]
    assert syslog.stats.malformed >= 2
    # Whatever the garbage swallowed, the framer resynchronised and routed what followed.
    assert lines[-1] == message("app", b"after 2999")
    assert syslog.stats.offloaded_reads > 0
