"""Hostile and broken input against the whole daemon: each gets its documented answer or is
cut, the daemon keeps running, and the next good message is routed correctly."""

import resource

import pytest
import trio

from logplexd.daemon import Daemon
from logplexd.native import parse_frames
from tests.helpers.daemon import settings_for
from tests.helpers.metrics import scrape, value
from tests.helpers.syslog import frame

TOKEN = "t.6f3bbd4a-0000-4000-8000-000000000001"
pytestmark = pytest.mark.integration


async def start(nursery, tmp_path, **overrides):
    daemon = Daemon(settings_for(tmp_path, **overrides))
    ports = await nursery.start(daemon.serve)
    daemon.registry.add_token("victim", TOKEN, "app")
    return daemon, ports


async def routed_next(daemon, ports, text: bytes) -> None:
    """A fresh, well-behaved producer still gets through."""
    channel = daemon.registry.channel("victim")
    before = channel.ring.head
    stream = await trio.open_tcp_stream("127.0.0.1", ports.syslog)
    await stream.send_all(frame(TOKEN, text))
    while channel.ring.head == before:
        await channel.wait_appended()
    fields = channel.ring.last(1).fields(0)
    assert fields["msg"] == text and fields["app"] == b"app"
    await stream.aclose()


BAD_TCP = {
    "garbage": b"this is not syslog at all\n",
    "frame of 10241 bytes": b"10241 " + b"x" * 10241,
    "length 99999999999": b"99999999999 <13>1 huge\n",
    "NUL bytes": b"\x00\x00\x00\n",
    "invalid UTF-8 in a frame": b"12 \xff\xfe\xfd\xfc invalid",
    "truncated frame then close": b"500 <134>1 only part of it",
}


@pytest.mark.parametrize("name", list(BAD_TCP))
async def test_bad_tcp_input(tmp_path, name):
    async with trio.open_nursery() as nursery:
        daemon, ports = await start(nursery, tmp_path)
        with trio.fail_after(20):
            stream = await trio.open_tcp_stream("127.0.0.1", ports.syslog)
            await stream.send_all(BAD_TCP[name])
            await stream.aclose()
            await routed_next(daemon, ports, b"after " + name.encode())
            assert daemon.syslog.stats.routed == 1
        nursery.cancel_scope.cancel()


async def http_exchange(port: int, raw: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(raw)
    out = b""
    with trio.move_on_after(5):
        while b"\r\n\r\n" not in out:
            data = await stream.receive_some(65536)
            if not data:
                break
            out += data
    await stream.aclose()
    return out


async def test_http_body_that_lies_about_its_length_is_cut(tmp_path):
    async with trio.open_nursery() as nursery:
        daemon, ports = await start(nursery, tmp_path)
        with trio.fail_after(20):
            body = frame(TOKEN, b"lying")
            stream = await trio.open_tcp_stream("127.0.0.1", ports.logs)
            await stream.send_all(
                b"POST /logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/logplex-1\r\n"
                b"Authorization: Basic dG9rZW46"
                + b"\r\nContent-Length: %d\r\n\r\n" % (len(body) + 100)
                + body
            )
            await stream.send_eof()
            with trio.move_on_after(5):
                while await stream.receive_some(4096):
                    pass
            await stream.aclose()
            assert len(daemon.registry.channel("victim").ring) == 0
            await routed_next(daemon, ports, b"after the liar")
        nursery.cancel_scope.cancel()


async def test_http_oversized_frame_and_invalid_utf8(tmp_path):
    import base64

    auth = base64.b64encode(f"token:{TOKEN}".encode())
    async with trio.open_nursery() as nursery:
        daemon, ports = await start(nursery, tmp_path)
        with trio.fail_after(20):
            for body, expect in [
                (b"10241 " + b"x" * 10241, b"HTTP/1.1 400 Malformed log messages"),
                (frame(TOKEN, b"\xff\xfe not utf-8"), b"HTTP/1.1 204 "),
            ]:
                reply = await http_exchange(
                    ports.logs,
                    b"POST /logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/logplex-1\r\n"
                    b"Authorization: Basic "
                    + auth
                    + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
                    + body,
                )
                assert reply.startswith(expect), reply[:80]
            assert daemon.registry.channel("victim").ring.last(1).fields(0)["msg"] == (
                b"\xff\xfe not utf-8"
            )
            await routed_next(daemon, ports, b"after http")
        nursery.cancel_scope.cancel()


async def test_tail_reader_that_stops_reading_does_not_slow_ingestion(tmp_path):
    async with trio.open_nursery() as nursery:
        daemon, ports = await start(nursery, tmp_path, history_messages=100)
        session = await daemon.store.create_session({"channel_id": "victim", "tail": True})
        sid = getattr(session, "id", session)
        with trio.fail_after(30):
            reader = await trio.open_tcp_stream("127.0.0.1", ports.api)
            await reader.send_all(b"GET /sessions/%s HTTP/1.1\r\nHost: x\r\n\r\n" % sid.encode())
            head = await reader.receive_some(4096)
            assert head.startswith(b"HTTP/1.1 200")
            # The reader now stops reading. 20 MB of logs go through the channel anyway.
            channel = daemon.registry.channel("victim")
            line = (
                b"<134>1 2012-12-10T03:00:48Z host "
                + TOKEN.encode()
                + b" web.1 - - "
                + (b"y" * 1000)
            )
            batch = parse_frames([line] * 1000)
            started = trio.current_time()
            for _ in range(20):
                # As an input does: it waits while the tail holds the channel (the tail
                # keeps up until its reader has left a chunk unsent for 0.1 s).
                counts = daemon.registry.route(batch)
                while counts.rest is not None:
                    for held in counts.held:
                        await held.wait_released()
                    counts = daemon.registry.route(batch, counts.rest)
                await trio.lowlevel.checkpoint()
            assert channel.ring.head == 20_000
            assert trio.current_time() - started < 5  # one slow verdict, not a stall
            await routed_next(daemon, ports, b"still routed")
            # When it reads again it learns how much it lost.
            received = b""
            while b"Error L11" not in received:
                received += await reader.receive_some(1 << 20)
            await reader.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.may_skip(reason="the file descriptor limit is the runner's")
async def test_5000_connections_are_bounded_and_the_daemon_survives(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 7000:
        pytest.skip(f"needs ~7000 file descriptors, have {soft}")
    async with trio.open_nursery() as nursery:
        daemon, ports = await start(
            nursery, tmp_path, max_syslog_connections=1000, syslog_first_byte_timeout=600
        )
        with trio.fail_after(60):
            streams = []
            for _ in range(5000):
                streams.append(await trio.open_tcp_stream("127.0.0.1", ports.syslog))
            stats = daemon.syslog.stats
            while stats.connections_total + stats.connections_rejected < 5000:
                await trio.sleep(0.01)
            assert daemon.syslog.stats.connections_open == 1000
            # None of them sent a byte: each one beyond the limit made room by evicting the
            # oldest (issue 22), none had to be refused.
            assert daemon.syslog.stats.connections_evicted == 4000
            assert daemon.syslog.stats.connections_rejected == 0
            for s in streams:
                await s.aclose()
            while daemon.syslog.stats.connections_open:
                await trio.sleep(0.01)
            await routed_next(daemon, ports, b"after the flood")
        nursery.cancel_scope.cancel()


@pytest.mark.may_skip(reason="the file descriptor limit is the runner's")
async def test_silent_connections_at_the_limit_do_not_lock_producers_out(tmp_path):
    """Issue 22: about 1,030 connections that never send a byte filled the 1,024 places, and
    producers were then accepted and closed at once for up to syslog_idle_timeout (300 s)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2600:
        pytest.skip(f"needs ~2600 file descriptors, have {soft}")
    async with trio.open_nursery() as nursery:
        daemon, ports = await start(nursery, tmp_path)
        stats = daemon.syslog.stats
        assert daemon.syslog.max_connections == 1024  # the default
        with trio.fail_after(60):
            silent = [await trio.open_tcp_stream("127.0.0.1", ports.syslog) for _ in range(1030)]
            while stats.connections_total + stats.connections_rejected < 1030:
                await trio.sleep(0.01)
            for n in range(3):
                await routed_next(daemon, ports, b"producer %d gets through" % n)
        assert stats.connections_rejected == 0
        # 6 silent ones for the 6 beyond the limit, 1 for the first producer; the next ones
        # may take the place the one before left (or evict again, if it is not yet free).
        assert 7 <= stats.connections_evicted <= 9
        found = await scrape(ports.api)
        assert value(found, "logplexd_syslog_connections_evicted_total") == (
            stats.connections_evicted
        )
        assert value(found, "logplexd_syslog_connections_rejected_total") == 0
        assert value(found, "logplexd_syslog_connections_silent_closed_total") == 0
        for stream in silent:
            await stream.aclose()
        nursery.cancel_scope.cancel()
