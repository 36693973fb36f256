"""TCP syslog input on real sockets: framing across reads, routing, limits, real peers."""

import contextlib

import pytest
import trio
import trio.testing

from logplexd.ingest.syslog import SyslogInput
from logplexd.router.registry import Registry
from tests.helpers.peers import logger_command, needs_logger
from tests.helpers.syslog import frame, message, random_splits

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


async def test_connections_beyond_the_limit_are_closed_at_once():
    async with trio.open_nursery() as nursery:
        syslog, port = await start(nursery, max_connections=2)
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        with trio.fail_after(5):
            while syslog.stats.connections_open < 2:
                await trio.sleep(0.01)
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):
            with contextlib.suppress(trio.BrokenResourceError):  # a reset is a close too
                assert await extra.receive_some(10) == b""
        assert syslog.stats.connections_rejected == 1
        await held[0].send_all(frame(TOKEN, b"still served"))
        assert await wait_for_lines(syslog.registry, 1) == [message("app", b"still served")]
        for s in held:
            await s.aclose()
        nursery.cancel_scope.cancel()


async def test_idle_connection_is_closed(autojump_clock):
    async with trio.open_nursery() as nursery:
        syslog, port = await start(nursery, idle_timeout=300)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(1000):
            assert await stream.receive_some(10) == b""
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
