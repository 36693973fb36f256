"""L14: a TLS drain whose receiver fails certificate validation says so in its channel.

REFERENCE §5.4: the original injects ``Error L14 (certificate validation)`` into the
channel's tails and history when a TLS drain's handshake fails. Here: the exact line, that
it is written once per failing streak (plus once per ``l14_interval``), never once per
retry, and that a good delivery ends the streak so the next failure is announced again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import socket
import ssl

import pytest
import trio

from logplexd.daemon import Daemon
from logplexd.drains import DrainSettings
from logplexd.drains.policy import L14_INTERVAL, certificate_failure, l14_due, l14_frame
from logplexd.drains.transport import TlsContexts
from logplexd.native import parse_frames
from logplexd.router.registry import Channel, Registry
from tests.helpers.daemon import settings_for
from tests.helpers.drains import (
    TOKEN,
    HttpSink,
    SyslogSink,
    append,
    message,
    start_manager,
    stats_of,
)
from tests.helpers.http import request
from tests.helpers.tls import server_context
from tests.helpers.wait import wait_until

# Retries every few tens of ms instead of 2, 4, 8 ... s: many failed handshakes per second.
FAST = DrainSettings(
    syslog_connect_timeout=2.0,
    syslog_backoff_cap=0.02,
    http_connect_timeout=2.0,
    http_backoff_base=0.01,
    http_backoff_cap=0.02,
)
STAMP = rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"


def l14_lines(channel: Channel) -> list[bytes]:
    return [f for f in channel.ring.last(10_000).frames() if b"Error L14" in f]


# -- the pure parts -------------------------------------------------------------------------


def test_l14_frame_is_the_originals_line():
    line = l14_frame(
        TOKEN,
        "Hostname mismatch, certificate is not valid for 'evilserver'.",
        "syslog+tls://logs.example:6514",
        b"2026-11-24T20:00:00+00:00",
    )
    assert line == (
        b"<188>1 2026-11-24T20:00:00+00:00 " + TOKEN.encode() + b" heroku logplex - - "
        b'Error L14 (certificate validation): error="Hostname mismatch, certificate is not '
        b'valid for \'evilserver\'." uri="syslog+tls://logs.example:6514"'
    )
    # A valid RFC 5424 frame: sessions, channel logs and drains all render it.
    fields = parse_frames([line]).fields(0)
    assert fields["valid"] and fields["pri"] == 188
    assert (fields["hostname"], fields["app"], fields["procid"]) == (
        TOKEN.encode(),
        b"heroku",
        b"logplex",
    )


def test_l14_text_cannot_forge_a_line_or_break_its_quotes():
    line = l14_frame(TOKEN, 'bad"\r\nforged', 'https://h.example/a"b\\', b"T")
    assert b"\r" not in line and b"\n" not in line
    assert line.endswith(b'error="bad\\"  forged" uri="https://h.example/a\\"b\\\\"')


@pytest.mark.parametrize(
    ("last", "now", "due"),
    [
        (None, 0.0, True),  # first certificate failure of a streak
        (100.0, 100.0, False),  # the next retry
        (100.0, 100.0 + L14_INTERVAL - 0.001, False),
        (100.0, 100.0 + L14_INTERVAL, True),  # once per interval while it keeps failing
    ],
)
def test_l14_due(last, now, due):
    assert l14_due(last, now) is due


async def handshake_error(server: ssl.SSLContext, client: ssl.SSLContext, name: str):
    """The exception a real handshake against ``server`` ends with, as a drain sees it."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def serve(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, server, server_side=True)
        try:
            await tls.do_handshake()
            await tls.receive_some(10)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, serve, listeners)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, client, server_hostname=name)
        try:
            with trio.fail_after(10):
                await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            error: BaseException = exc
        else:
            raise AssertionError("the handshake succeeded")
        finally:
            await trio.aclose_forcefully(stream)
        nursery.cancel_scope.cancel()
    return error


async def peer_alert(server: ssl.SSLContext, client: ssl.SSLContext) -> BaseException:
    """A server (a blocking one: trio's SSLStream does not send the alert when its
    handshake fails) that refuses the client's TLS version: what the client sees."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def refuse() -> None:
            sock, _ = listener.accept()
            with sock, contextlib.suppress(ssl.SSLError, OSError):
                server.wrap_socket(sock, server_side=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, refuse)
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            stream = trio.SSLStream(tcp, client, server_hostname="127.0.0.1")
            with pytest.raises(trio.BrokenResourceError) as caught:
                with trio.fail_after(10):
                    await stream.do_handshake()
            await trio.aclose_forcefully(stream)
    return caught.value


async def test_certificate_failure_names_the_alert(ca, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    trusting = ssl.create_default_context(cafile=str(ca_file))
    system = ssl.create_default_context()

    wrong_host = await handshake_error(server_context(ca, "evilserver"), trusting, "127.0.0.1")
    assert certificate_failure(wrong_host) == (
        "IP address mismatch, certificate is not valid for '127.0.0.1'."
    )
    untrusted = await handshake_error(server_context(ca, "127.0.0.1"), system, "127.0.0.1")
    assert certificate_failure(untrusted) == "unable to get local issuer certificate"
    # An alert the *peer* sends during the handshake counts too (the original's tls_alert).
    modern = server_context(ca, "127.0.0.1")
    modern.minimum_version = ssl.TLSVersion.TLSv1_3
    old = ssl.create_default_context(cafile=str(ca_file))
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    alert = await peer_alert(modern, old)
    assert certificate_failure(alert) == "protocol version"

    # Not TLS failures: no L14.
    refused = ConnectionRefusedError(111, "Connection refused")
    unresolved = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    for error in (refused, unresolved, trio.TooSlowError(), EOFError("closed"), "HTTP 503"):
        assert certificate_failure(error) is None, error
    wrapped = trio.BrokenResourceError()
    wrapped.__cause__ = ConnectionResetError(104, "reset")
    assert certificate_failure(wrapped) is None


# -- a drain against a receiver with a bad certificate -----------------------------------------


async def test_wrong_host_l14_once_per_streak_and_again_after_a_good_delivery(
    nursery, ca, tmp_path
):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    bad, good = server_context(ca, "evilserver"), server_context(ca, "127.0.0.1")
    sink = SyslogSink(tls=bad)
    port = await nursery.start(sink.serve)
    registry = Registry()
    channel = registry.ensure_channel("app")
    manager = await start_manager(nursery, registry, FAST, seed=9, tls_ca_file=str(ca_file))
    manager.add_drain("app", 1, TOKEN, f"syslog+tls://127.0.0.1:{port}")
    append(channel, [message(1)])

    # Many failed handshakes (one every ~20 ms), one notice.
    await sink.wait_for(lambda: sink.handshake_failures >= 8)
    await wait_until(lambda: stats_of(manager, 1).state == "backoff")
    lines = l14_lines(channel)
    assert len(lines) == 1, lines
    assert re.fullmatch(
        rb"<188>1 " + STAMP + b" " + TOKEN.encode() + rb" heroku logplex - - "
        rb"Error L14 \(certificate validation\): "
        rb"error=\"IP address mismatch, certificate is not valid for '127\.0\.0\.1'\.\" "
        rb"uri=\"syslog\+tls://127\.0\.0\.1:" + str(port).encode() + b'"',
        lines[0],
    ), lines[0]
    assert stats_of(manager, 1).delivered == 0 and sink.connections == 0

    # The receiver gets a good certificate: the drain delivers what it held (the notice is
    # in the same channel, after the message, so it is delivered too).
    sink.tls = good
    await sink.wait_for(lambda: b"drain test message 1" in sink.data and b"L14" in sink.data)
    assert len(l14_lines(channel)) == 1

    # The certificate goes bad again and the connection drops: a new failing streak.
    sink.tls = bad
    for stream in sink._streams:
        with contextlib.suppress(OSError):
            stream.socket.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
    failures = sink.handshake_failures
    append(channel, [message(2)])
    await sink.wait_for(lambda: sink.handshake_failures >= failures + 8)
    assert len(l14_lines(channel)) == 2


async def test_l14_repeats_only_after_the_interval(nursery, ca, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sink = SyslogSink(tls=server_context(ca, "evilserver"))
    port = await nursery.start(sink.serve)
    registry = Registry()
    channel = registry.ensure_channel("app")
    settings = dataclasses.replace(FAST, l14_interval=0.5)
    manager = await start_manager(nursery, registry, settings, seed=9, tls_ca_file=str(ca_file))
    manager.add_drain("app", 1, TOKEN, f"syslog+tls://127.0.0.1:{port}")
    append(channel, [message(1)])
    start = trio.current_time()
    await wait_until(lambda: len(l14_lines(channel)) >= 3)
    # Three notices need two full intervals, however many handshakes failed meanwhile.
    assert trio.current_time() - start >= 1.0
    assert sink.handshake_failures > 3 * 3


async def test_https_drain_with_an_untrusted_certificate(nursery, ca):
    sink = HttpSink(tls=server_context(ca, "127.0.0.1"))
    port = await nursery.start(sink.serve)
    registry = Registry()
    channel = registry.ensure_channel("app")
    # No CA file: the system store does not know the test CA.
    manager = await start_manager(nursery, registry, FAST, seed=9)
    manager.add_drain("app", 1, TOKEN, f"https://user:secret@127.0.0.1:{port}/logs")
    append(channel, [message(1)])
    await wait_until(lambda: len(l14_lines(channel)) == 1)
    await trio.sleep(0.3)  # retries go on (about every 20 ms) ...
    assert len(l14_lines(channel)) == 1  # ... without another notice
    line = l14_lines(channel)[0]
    assert line.endswith(
        b'error="unable to get local issuer certificate" '
        b'uri="https://***@127.0.0.1:' + str(port).encode() + b'/logs"'
    )
    assert b"secret" not in line
    assert sink.requests == [] and stats_of(manager, 1).delivered == 0
    await wait_until(lambda: stats_of(manager, 1).state == "backoff")


async def test_no_l14_for_errors_that_are_not_about_certificates(nursery):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    registry = Registry()
    channel = registry.ensure_channel("app")
    manager = await start_manager(nursery, registry, FAST, seed=9)
    manager.add_drain("app", 1, TOKEN, f"syslog+tls://127.0.0.1:{port}")
    append(channel, [message(1)])
    await wait_until(lambda: stats_of(manager, 1).last_error is not None)
    await trio.sleep(0.2)
    assert l14_lines(channel) == []


# -- the whole daemon: the notice in a session and in channel logs --------------------------------


async def test_session_shows_the_l14_line(nursery, ca, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sink = SyslogSink(tls=server_context(ca, "evilserver"))
    sink_port = await nursery.start(sink.serve)
    daemon = Daemon(settings_for(tmp_path))
    # Trust the test CA (the daemon trusts the system store) and retry fast.
    daemon.drains.tls = TlsContexts(str(ca_file))
    daemon.drains.settings = FAST
    with trio.fail_after(30):
        ports = await nursery.start(daemon.serve)
        status, _, body = await request(
            ports.api, "PUT", "/v3/channels/l14app", body={"tokens": ["web"]}
        )
        assert status == 201, body
        token = json.loads(body)["tokens"]["web"]
        url = f"syslog+tls://127.0.0.1:{sink_port}"
        status, _, body = await request(
            ports.api, "POST", "/v3/channels/l14app/drains", body={"url": url}
        )
        assert status == 201, body
        drain_token = json.loads(body)["token"]
        line = f"<134>1 2024-01-01T00:00:00Z host {token} web.1 - - hello".encode()
        syslog = await trio.open_tcp_stream("127.0.0.1", ports.syslog)
        await syslog.send_all(b"%d %s" % (len(line), line))
        await sink.wait_for(lambda: sink.handshake_failures >= 5)

        status, _, body = await request(
            ports.api, "POST", "/v3/sessions", body={"channel_id": "l14app", "num": "10"}
        )
        assert status == 201, body
        session = "/" + json.loads(body)["url"].split("/", 3)[3]
        status, _, body = await request(ports.api, "GET", session)
        assert status == 200
        lines = body.split(b"\n")
        assert lines[0] == b"2024-01-01T00:00:00Z web[web.1]: hello"
        assert re.fullmatch(
            STAMP + rb" heroku\[logplex\]: Error L14 \(certificate validation\): "
            rb"error=\"IP address mismatch, certificate is not valid for '127\.0\.0\.1'\.\" "
            rb"uri=\"syslog\+tls://127\.0\.0\.1:" + str(sink_port).encode() + b'"',
            lines[1],
        ), lines
        assert lines[2:] == [b""]  # one notice, however many handshakes failed

        status, _, body = await request(ports.api, "GET", "/v3/channels/l14app/logs")
        assert status == 200
        assert body.count(b"Error L14 (certificate validation)") == 1
        assert b"logplex - Error L14" in body and drain_token.encode() not in body
        await syslog.aclose()
