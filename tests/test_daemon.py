"""The whole daemon on real sockets, driven by real clients (curl, logger)."""

import json
import signal
import subprocess

import pytest
import trio

from logplexd.daemon import Daemon
from logplexd.native import parse_frames
from tests.helpers.child import DaemonProcess
from tests.helpers.curl import AUTH, JSON, api, curl
from tests.helpers.daemon import KEY, serve_in, settings_for
from tests.helpers.drains import HttpSink, SyslogSink
from tests.helpers.peers import logger_command, needs_curl
from tests.helpers.syslog import frame
from tests.helpers.wait import wait_until

pytestmark = [pytest.mark.integration, needs_curl]


async def test_channel_ingest_session_and_channel_logs(tmp_path):
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        with trio.fail_after(30):
            status, _, body = await curl(api(ports, "/v3/healthcheck"))
            assert (status, body) == (200, b"OK")
            status, _, body = await curl(f"http://127.0.0.1:{ports.logs}/healthcheck")
            assert (status, body) == (200, b"OK")

            status, headers, body = await curl(
                "-X",
                "PUT",
                *AUTH,
                *JSON,
                "-d",
                '{"tokens":["app"]}',
                api(ports, "/v3/channels/app-123"),
            )
            assert status == 201 and "request-id" in headers
            token = json.loads(body)["tokens"]["app"]

            # TCP syslog, with a real logger, octet-counted RFC 5424.
            await trio.run_process(logger_command(ports.syslog, token, "from logger"))
            # HTTP input, with curl.
            body_file = tmp_path / "frames"
            body_file.write_bytes(frame(token, "from curl 1") + frame(token, "from curl 2"))
            status, headers, _ = await curl(
                "-u",
                f"token:{token}",
                "-H",
                "Content-Type: application/logplex-1",
                "-H",
                "Logplex-Msg-Count: 2",
                "--data-binary",
                f"@{body_file}",
                f"http://127.0.0.1:{ports.logs}/logs",
            )
            assert status == 204
            channel = daemon.registry.channel("app-123")
            while len(channel.ring) < 3:
                await channel.wait_appended()

            status, headers, body = await curl(
                "-X",
                "POST",
                *AUTH,
                *JSON,
                "-d",
                '{"channel_id":"app-123","num":"2"}',
                api(ports, "/v3/sessions"),
            )
            assert status == 201
            url = json.loads(body)["url"]
            assert url.startswith(f"http://127.0.0.1:{ports.api}/sessions/")
            status, headers, body = await curl(url)
            assert status == 200 and headers["transfer-encoding"] == "chunked"
            assert headers["content-type"].startswith("text/plain")
            assert body == (
                b"2012-12-10T03:00:48.123456Z app[console.1]: from curl 1\n"
                b"2012-12-10T03:00:48.123456Z app[console.1]: from curl 2\n"
            )

            status, headers, body = await curl(*AUTH, api(ports, "/v3/channels/app-123/logs"))
            assert status == 200 and headers["logplex-msg-count"] == "3"
            assert headers["content-type"] == "application/logplex-1"
            assert body.endswith(
                b"<134>1 2012-12-10T03:00:48.123456Z host app console.1 - from curl 2\n"
            )
            assert b" host app - - from logger\n" in body  # PROCID "-", then no SD field
            assert b"timeQuality" not in body
        nursery.cancel_scope.cancel()


def chunked(lines: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(line), line) for line in lines)


# The tail pump writes HTTP/1.1 chunks itself (``--raw``: the bytes on the wire); an
# HTTP/1.0 client gets the lines unframed, until the connection closes.
@pytest.mark.parametrize(
    ("options", "wire"),
    [(["-sN"], b"".join), (["-sN", "--raw"], chunked), (["-sN", "--http1.0"], b"".join)],
    ids=["decoded", "raw-chunks", "http1.0"],
)
async def test_live_tail_with_curl_n(tmp_path, options, wire):
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        with trio.fail_after(30):
            _, _, body = await curl(
                "-X",
                "PUT",
                *AUTH,
                *JSON,
                "-d",
                '{"tokens":["web"]}',
                api(ports, "/v3/channels/tailme"),
            )
            token = json.loads(body)["tokens"]["web"]
            _, _, body = await curl(
                "-X",
                "POST",
                *AUTH,
                *JSON,
                "-d",
                '{"channel_id":"tailme","tail":true}',
                api(ports, "/v3/sessions"),
            )
            url = json.loads(body)["url"]
            proc = await trio.lowlevel.open_process(["curl", *options, url], stdout=subprocess.PIPE)
            try:
                received = b""
                sender = await trio.open_tcp_stream("127.0.0.1", ports.syslog)
                for i in range(3):
                    await sender.send_all(frame(token, f"live {i}"))
                    while not received.endswith(b"live %d\n" % i + b"\r\n" * (wire is chunked)):
                        received += await proc.stdout.receive_some(4096)
                assert received == wire(
                    [b"2012-12-10T03:00:48.123456Z web[console.1]: live %d\n" % i for i in range(3)]
                )
                await sender.aclose()
            finally:
                proc.kill()
                await proc.wait()
        nursery.cancel_scope.cancel()


async def test_second_daemon_on_the_same_data_dir_is_refused(tmp_path):
    from logplexd.store.model import StoreLocked

    async with trio.open_nursery() as nursery:
        await nursery.start(Daemon(settings_for(tmp_path)).serve)
        with pytest.raises(StoreLocked):
            await Daemon(settings_for(tmp_path)).serve()
        nursery.cancel_scope.cancel()


async def test_the_gc_thresholds_are_the_daemons_while_it_runs_and_given_back(tmp_path):
    import gc

    from logplexd.daemon.compose import GC_THRESHOLDS

    before = gc.get_threshold()
    assert before != GC_THRESHOLDS
    # Daemons of one process overlap (several nodes in a test): the first started stops
    # first and leaves the thresholds to the other; the last to stop gives them back.
    first, second = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as inner:
            await inner.start(serve_in, Daemon(settings_for(tmp_path / "first")), first)
            assert gc.get_threshold() == GC_THRESHOLDS
            await outer.start(serve_in, Daemon(settings_for(tmp_path / "second")), second)
            first.cancel()
        assert gc.get_threshold() == GC_THRESHOLDS  # the second still runs
        second.cancel()
    assert gc.get_threshold() == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_console_daemon_starts_answers_and_stops_cleanly_on_signal(tmp_path, signum):
    daemon = DaemonProcess(tmp_path / "d")
    ports = daemon.start()
    try:
        out = subprocess.run(
            ["curl", "-sS", f"http://127.0.0.1:{ports.api}/v3/healthcheck"],
            capture_output=True,
            timeout=10,
            check=True,
        )
        assert out.stdout == b"OK"
    finally:
        status = daemon.kill(signum, timeout=15)
    assert status == 0
    assert "Traceback" not in daemon.log
    assert KEY not in daemon.log


def test_the_daemon_process_runs_without_transparent_huge_pages(tmp_path):
    """Its rings reserve their bounds' address space up front and touch what they hold: a
    kernel that gives every touched region a huge page (THP ``always``) made a node with
    1,000 channels 2.4x the memory and half the speed (daemon/_allocator.py)."""
    daemon = DaemonProcess(tmp_path / "d")
    daemon.start()
    try:
        assert daemon.process is not None
        with open(f"/proc/{daemon.process.pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    finally:
        daemon.kill(signal.SIGTERM, timeout=15)
    assert fields["THP_enabled"].strip() == "0"


async def test_drains_added_changed_and_deleted_through_the_api(tmp_path):
    daemon = Daemon(settings_for(tmp_path))
    sink, other, web = SyslogSink(), SyslogSink(), HttpSink()
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        for s in (sink, other, web):
            await nursery.start(s.serve)
        with trio.fail_after(30):
            _, _, body = await curl(
                "-X",
                "PUT",
                *AUTH,
                *JSON,
                "-d",
                '{"tokens":["app"]}',
                api(ports, "/v3/channels/app-123"),
            )
            token = json.loads(body)["tokens"]["app"]
            status, headers, body = await curl(
                "-X",
                "POST",
                *AUTH,
                *JSON,
                "-d",
                json.dumps({"url": f"syslog://127.0.0.1:{sink.port}/"}),
                api(ports, "/v3/channels/app-123/drains"),
            )
            assert status == 201
            drain = json.loads(body)
            status, _, _ = await curl(
                "-X",
                "POST",
                *AUTH,
                *JSON,
                "-d",
                json.dumps({"url": f"http://user:pw@127.0.0.1:{web.port}/logs"}),
                api(ports, "/v3/channels/app-123/drains"),
            )
            assert status == 201
            feed = await trio.open_tcp_stream("127.0.0.1", ports.syslog)
            await feed.send_all(frame(token, "drain test message 3"))
            await sink.wait_for(lambda: sink.messages() >= 1)
            assert sink.frames() == [
                f"<134>1 2012-12-10T03:00:48.123456Z {drain['token']} app console.1 - - "
                "drain test message 3\n".encode()
            ]
            await web.wait_for(lambda: len(web.requests) >= 1)
            request = web.requests[0]
            assert request.header("Logplex-Msg-Count") == "1"
            assert request.header("Authorization") == "Basic dXNlcjpwdw=="
            payload = (
                b"<134>1 2012-12-10T03:00:48.123456Z host app console.1 - drain test message 3"
            )
            assert request.body == b"%d %s" % (len(payload), payload)
            # Changing the URL moves the drain at once, without a restart.
            status, _, _ = await curl(
                "-X",
                "PUT",
                *AUTH,
                *JSON,
                "-d",
                json.dumps({"url": f"syslog://127.0.0.1:{other.port}/"}),
                api(ports, f"/v3/channels/app-123/drains/{drain['id']}"),
            )
            assert status == 200
            await feed.send_all(frame(token, "after the move"))
            await other.wait_for(lambda: other.messages() >= 1)
            assert other.frames()[0].endswith(b" app console.1 - - after the move\n")
            # Deleting the channel stops its drains.
            status, _, _ = await curl("-X", "DELETE", *AUTH, api(ports, "/v3/channels/app-123"))
            assert status == 204
            await trio.testing.wait_all_tasks_blocked()
            assert daemon.drains.stats() == []
            assert sink.messages() == 1
            await feed.aclose()
        nursery.cancel_scope.cancel()


async def test_shutdown_flushes_drains_within_the_deadline(tmp_path):
    daemon = Daemon(settings_for(tmp_path))
    sink = SyslogSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.serve)
        await nursery.start(daemon.serve)
        with trio.fail_after(30):
            daemon.registry.add_token("ch", "t.x", "app")
            daemon.drains.add_drain("ch", 1, "d.x", f"syslog://127.0.0.1:{sink.port}")
            lines = [f"<134>1 2012-12-10T03:00:48Z h t.x p - - m{i}".encode() for i in range(1000)]
            daemon.registry.route(parse_frames(lines))
            await daemon.shutdown()
        # Every message the ring held was delivered before the daemon let go.
        assert sink.messages() == 1000
        nursery.cancel_scope.cancel()


async def test_shutdown_flushes_16_parked_drains_once_each(tmp_path):
    # Parked drains are written by the pump, rounds of 8 or more from its worker thread:
    # the flush at shutdown kicks them, maybe while a write of theirs is in flight.
    daemon = Daemon(settings_for(tmp_path))
    sinks = [SyslogSink() for _ in range(16)]
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve)
        with trio.fail_after(30):
            for n, sink in enumerate(sinks):
                await nursery.start(sink.serve)
                daemon.registry.add_token(f"ch{n}", f"t.x{n}", f"app{n}")
                daemon.drains.add_drain(f"ch{n}", n + 1, "d.x", f"syslog://127.0.0.1:{sink.port}")

            def lines(first: int, count: int) -> list[bytes]:
                return [
                    f"<134>1 2012-12-10T03:00:48Z h t.x{i % 16} p - - m{i}".encode()
                    for i in range(first, first + count)
                ]

            daemon.registry.route(parse_frames(lines(0, 16)))
            await wait_until(lambda: daemon.drains.pump.attached == 16)
            for start in range(16, 16_016, 2_000):
                # Whole, as an input that waited for its held channel would (no ring laps).
                daemon.registry.route(parse_frames(lines(start, 2_000)), until_held=False)
                await trio.lowlevel.checkpoint()
            await daemon.shutdown()
        for n, sink in enumerate(sinks):
            assert [f.rsplit(b" ", 1)[1].rstrip(b"\n") for f in sink.frames()] == [
                b"m%d" % i for i in range(n, 16_016, 16)
            ]
        assert daemon.drains.pump.threaded_rounds > 0
        nursery.cancel_scope.cancel()


async def test_channel_stats_only_when_asked(tmp_path):
    daemon = Daemon(settings_for(tmp_path))
    sink = SyslogSink()
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        await nursery.start(sink.serve)
        with trio.fail_after(30):
            _, _, body = await curl(
                "-X",
                "PUT",
                *AUTH,
                *JSON,
                "-d",
                '{"tokens":["app"]}',
                api(ports, "/v3/channels/st"),
            )
            token = json.loads(body)["tokens"]["app"]
            _, _, body = await curl(
                "-X",
                "POST",
                *AUTH,
                *JSON,
                "-d",
                json.dumps({"url": f"syslog://127.0.0.1:{sink.port}/"}),
                api(ports, "/v3/channels/st/drains"),
            )
            drain = json.loads(body)
            feed = await trio.open_tcp_stream("127.0.0.1", ports.syslog)
            await feed.send_all(frame(token, "one") + frame(token, "two"))
            await sink.wait_for(lambda: sink.messages() >= 2)
            _, _, plain = await curl(*AUTH, api(ports, "/v3/channels/st"))
            assert json.loads(plain)["drains"] == [drain]  # the seed's body, untouched
            status, _, body = await curl(*AUTH, api(ports, "/v3/channels/st?stats=1"))
            stats = json.loads(body)["drains"][0]["stats"]
            assert status == 200
            assert stats["delivered"] == 2 and stats["dropped"] == 0
            assert stats["state"] in ("connected", "ready", "idle", "sending")
            await feed.aclose()
        nursery.cancel_scope.cancel()
