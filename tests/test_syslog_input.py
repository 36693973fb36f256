"""TCP syslog input on real sockets: framing across reads, routing, limits, real peers."""

import contextlib
import random
import socket

import pytest
import trio
import trio.testing

from logplexd.ingest import syslog as syslog_module
from logplexd.ingest._admission import SAMPLE, ConnectionTable
from logplexd.ingest.syslog import SyslogInput
from logplexd.router.registry import Registry
from tests.helpers.peers import logger_command, needs_logger
from tests.helpers.syslog import frame, message, random_splits
from tests.helpers.wait import wait_until

TOKEN = "t.40c71ce6-83e3-4384-a062-010f886da916"


async def start(nursery, **kw) -> tuple[SyslogInput, int]:
    registry = Registry()
    registry.add_token("app-123", TOKEN, "app")
    syslog = SyslogInput(registry, **kw)
    port = await nursery.start(syslog.serve, "127.0.0.1", 0)
    return syslog, port


async def wait_for_lines(registry: Registry, n: int, channel: str = "app-123") -> list[bytes]:
    ch = registry.channel(channel)
    assert ch is not None
    with trio.fail_after(10):
        while len(ch.ring) < n:
            await ch.wait_appended()
    return ch.ring.last(10_000).frames()


@pytest.mark.parametrize("chunking", ["whole", "bytewise", "random"])
async def test_frames_split_any_way_arrive_in_order(chunking, rng):
    data = b"".join(frame(TOKEN, b"message %d" % i) for i in range(50))
    if chunking == "whole":
        chunks = [data]
    elif chunking == "bytewise":
        chunks = [data[i : i + 1] for i in range(len(data))]
    else:
        chunks = random_splits(data, rng)
    async with trio.open_nursery() as nursery:
        syslog, port = await start(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        for chunk in chunks:
            await stream.send_all(chunk)
        lines = await wait_for_lines(syslog.registry, 50)
        assert lines == [message("app", b"message %d" % i) for i in range(50)]
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_bad_input_is_counted_and_connection_stays_usable():
    async with trio.open_nursery() as nursery:
        syslog, port = await start(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        big = b"<134>1 - - " + TOKEN.encode() + b" - - - " + b"x" * 10300
        await stream.send_all(
            frame(TOKEN, b"first")
            + b"garbage without a length\n"
            + b"%d %s" % (len(big), big)
            + b"99999999999 nonsense\n"
            + frame("t.00000000-0000-0000-0000-000000000000", b"unknown")
            + b"\x00\xff\xfe binary junk\n"
            + frame(TOKEN, b"last")
        )
        lines = await wait_for_lines(syslog.registry, 2)
        assert lines == [message("app", b"first"), message("app", b"last")]
        assert syslog.stats.malformed == 4
        assert syslog.stats.unknown_token == 1
        assert syslog.stats.routed == 2
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def eof(stream: trio.SocketStream, timeout: float = 5) -> None:
    """The server closed ``stream`` (a reset is a close too)."""
    with trio.fail_after(timeout):
        with contextlib.suppress(trio.BrokenResourceError):
            while await stream.receive_some(100):
                pass


async def test_a_new_connection_at_the_limit_evicts_the_oldest_silent_one():
    """Issue 22: connections that never send a byte do not lock producers out."""
    async with trio.open_nursery() as nursery:
        syslog, port = await start(nursery, max_connections=3)
        active = await trio.open_tcp_stream("127.0.0.1", port)
        await active.send_all(frame(TOKEN, b"first"))
        assert await wait_for_lines(syslog.registry, 1) == [message("app", b"first")]
        silent = []
        for _ in range(2):
            silent.append(await trio.open_tcp_stream("127.0.0.1", port))
            await wait_until(lambda: syslog.stats.connections_open == 1 + len(silent))
        producer = await trio.open_tcp_stream("127.0.0.1", port)
        await producer.send_all(frame(TOKEN, b"let in"))
        assert (await wait_for_lines(syslog.registry, 2))[-1] == message("app", b"let in")
        await eof(silent[0])  # the oldest silent one made room
        stats = syslog.stats
        assert (stats.connections_evicted, stats.connections_rejected) == (1, 0)
        assert stats.connections_open == 3
        # The others are untouched.
        await silent[1].send_all(frame(TOKEN, b"second silent speaks"))
        await active.send_all(frame(TOKEN, b"active still served"))
        assert sorted((await wait_for_lines(syslog.registry, 4))[-2:]) == sorted(
            [message("app", b"second silent speaks"), message("app", b"active still served")]
        )
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="idle time from Linux TCP_INFO")
async def test_at_the_limit_an_idle_connection_that_spoke_makes_room():
    """A connection that sent one frame and then went quiet is idle too."""
    async with trio.open_nursery() as nursery:
        syslog, port = await start(nursery, max_connections=2)
        quiet = []
        for n in range(2):
            quiet.append(await trio.open_tcp_stream("127.0.0.1", port))
            await quiet[-1].send_all(frame(TOKEN, b"hello %d" % n))
            await wait_for_lines(syslog.registry, n + 1)
        producer = await trio.open_tcp_stream("127.0.0.1", port)
        await producer.send_all(frame(TOKEN, b"let in"))
        assert (await wait_for_lines(syslog.registry, 3))[-1] == message("app", b"let in")
        assert (syslog.stats.connections_evicted, syslog.stats.connections_rejected) == (1, 0)
        assert syslog.stats.connections_open == 2
        nursery.cancel_scope.cancel()


async def test_connections_beyond_the_limit_are_closed_at_once_when_none_is_idle(monkeypatch):
    # Connections whose idle time is unknown (bytes waiting, or no TCP_INFO) are never
    # evicted: then the new connection is refused, as before issue 22.
    monkeypatch.setattr(syslog_module, "_kernel_idle", lambda stream: None)
    async with trio.open_nursery() as nursery:
        syslog, port = await start(nursery, max_connections=2)
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        for n, stream in enumerate(held):
            await stream.send_all(frame(TOKEN, b"spoke %d" % n))
        await wait_for_lines(syslog.registry, 2)
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        await eof(extra)
        assert syslog.stats.connections_rejected == 1
        assert syslog.stats.connections_evicted == 0
        await held[0].send_all(frame(TOKEN, b"still served"))
        assert (await wait_for_lines(syslog.registry, 3))[-1] == message("app", b"still served")
        for s in held:
            await s.aclose()
        nursery.cancel_scope.cancel()


async def test_a_connection_that_sends_nothing_is_closed_after_the_first_byte_timeout(
    autojump_clock,
):
    async with trio.open_nursery() as nursery:
        syslog, port = await start(nursery, first_byte_timeout=10, idle_timeout=300)
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        speaker = await trio.open_tcp_stream("127.0.0.1", port)
        await speaker.send_all(frame(TOKEN, b"in time"))
        start_time = trio.current_time()
        await eof(silent, 100)
        assert 10 <= trio.current_time() - start_time < 300
        assert syslog.stats.connections_silent_closed == 1
        assert syslog.stats.connections_idle_closed == 0
        # The one that spoke in time is held to the idle timeout only.
        await speaker.send_all(frame(TOKEN, b"later"))
        assert await wait_for_lines(syslog.registry, 2) == [
            message("app", b"in time"),
            message("app", b"later"),
        ]
        assert syslog.stats.connections_open == 1
        nursery.cancel_scope.cancel()


async def test_idle_connection_is_closed(autojump_clock):
    async with trio.open_nursery() as nursery:
        syslog, port = await start(nursery, idle_timeout=300)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(frame(TOKEN, b"then nothing"))
        with trio.fail_after(1000):
            assert await stream.receive_some(10) == b""
        assert syslog.stats.connections_idle_closed == 1
        nursery.cancel_scope.cancel()


async def test_a_connection_held_longer_than_the_idle_timeout_is_not_idle(autojump_clock):
    # Waiting for a held channel is pushback, not idleness: the connection stays open, its
    # message is routed once released, and only then does the idle timeout count again.
    async with trio.open_nursery() as nursery:
        syslog, port = await start(nursery, idle_timeout=300)
        channel = syslog.registry.channel("app-123")
        holder = object()
        channel.hold(holder)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(frame(TOKEN, b"while held"))
        await trio.sleep(1000)  # over three idle timeouts, held all along
        assert syslog.stats.connections_idle_closed == 0
        assert syslog.stats.connections_held == 1 and len(channel.ring) == 0
        channel.release(holder)
        assert (await wait_for_lines(syslog.registry, 1))[0].endswith(b"while held")
        with trio.fail_after(1000):
            assert await stream.receive_some(10) == b""  # now idle: closed
        assert syslog.stats.connections_idle_closed == 1
        nursery.cancel_scope.cancel()


@pytest.mark.integration
@needs_logger
@pytest.mark.parametrize("octet_count", [True, False])
async def test_logger_rfc5424_lands_in_the_channel(octet_count):
    async with trio.open_nursery() as nursery:
        syslog, port = await start(nursery)
        command = logger_command(port, TOKEN, "hello from logger", octet_count=octet_count)
        await trio.run_process(command)
        (line,) = await wait_for_lines(syslog.registry, 1)
        fields = syslog.registry.channel("app-123").ring.last(1).fields(0)
        assert fields["valid"] and fields["app"] == b"app"
        assert fields["msg"] == b"hello from logger"
        assert b" app - - [timeQuality" in line
        nursery.cancel_scope.cancel()


async def test_tls_input_routes_and_reloads_its_certificate(tmp_path):
    trustme = pytest.importorskip("trustme")
    import ssl

    from logplexd.ingest.syslog import ServerCertificate

    ca = trustme.CA()
    paths = []
    for n in range(2):
        cert = ca.issue_cert("localhost")
        cert_file, key_file = tmp_path / f"c{n}.pem", tmp_path / f"k{n}.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        paths.append((str(cert_file), str(key_file)))
    certificate = ServerCertificate(*paths[0])
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def connect(port):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, client_ctx, server_hostname="localhost")
        await stream.do_handshake()
        return stream

    async with trio.open_nursery() as nursery:
        registry = Registry()
        registry.add_token("app-123", TOKEN, "app")
        syslog = SyslogInput(registry)
        port = await nursery.start(syslog.serve_tls, "127.0.0.1", 0, certificate)
        first = await connect(port)
        await first.send_all(frame(TOKEN, b"over tls"))
        assert await wait_for_lines(registry, 1) == [message("app", b"over tls")]
        serial0 = first.getpeercert()["serialNumber"]
        certificate.cert_file, certificate.key_file = paths[1]
        certificate.reload()
        second = await connect(port)
        assert second.getpeercert()["serialNumber"] != serial0
        # The connection opened before the reload keeps working.
        await first.send_all(frame(TOKEN, b"after reload"))
        await second.send_all(frame(TOKEN, b"new connection"))
        lines = await wait_for_lines(registry, 3)
        assert sorted(lines[1:]) == sorted(
            [message("app", b"after reload"), message("app", b"new connection")]
        )
        # A plain-TCP client speaking to the TLS port is cut without disturbing the rest.
        plain = await trio.open_tcp_stream("127.0.0.1", port)
        await plain.send_all(frame(TOKEN, b"not tls"))
        with trio.fail_after(5):
            with contextlib.suppress(trio.BrokenResourceError):
                await plain.receive_some(100)
        await second.send_all(frame(TOKEN, b"still fine"))
        assert (await wait_for_lines(registry, 4))[-1] == message("app", b"still fine")
        nursery.cancel_scope.cancel()


# -- the admission table, sans-IO (issue 22) ----------------------------------------------------


def test_table_evicts_the_oldest_silent_connection_first():
    table = ConnectionTable()
    a, b, c = (table.add(name) for name in "abc")
    table.activate(a)
    # a spoke long ago, b and c never did: the oldest silent one goes first.
    assert table.victim(lambda stream: 1000.0) is b
    table.evict(b)
    assert b.evicted and len(table) == 2
    assert table.victim(lambda stream: 1000.0) is c
    table.activate(c)
    # None silent: the longest idle of the others, never one whose idle time is unknown.
    idle = {"a": 5.0, "c": 7.0}
    assert table.victim(idle.get) is c
    assert table.victim(lambda stream: None) is None
    table.remove(b)  # its read loop ended
    assert len(table) == 2
    table.remove(a)
    assert table.victim(idle.get) is c and len(table) == 1


async def test_table_cancels_what_the_victim_waits_on():
    table = ConnectionTable()
    silent, spoke = table.add("s"), table.add("t")
    table.activate(spoke)
    silent.first = trio.CancelScope()
    table.evict(silent)
    assert silent.first.cancel_called and not silent.scope.cancel_called
    table.evict(spoke)
    assert spoke.scope.cancel_called
    assert len(table) == 0
    table.evict(spoke)  # twice is once
    assert len(table) == 0


def test_table_samples_a_bounded_number_of_connections():
    table = ConnectionTable(random.Random(1))
    for n in range(10 * SAMPLE):
        table.activate(table.add(n))
    looked_at = []
    table.victim(lambda stream: looked_at.append(stream) or 1.0)
    assert len(looked_at) == SAMPLE
