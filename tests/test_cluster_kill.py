"""A Redis-mode node killed (``kill -9``) with messages Redis does not have yet: at its
next start their channel's drain announces them with one L10 of the exact count, and a
node killed with nothing unwritten announces nothing. The daemon runs in a child process
on a real redis-server; Redis is made to hold every write (``CLIENT PAUSE ... WRITE``)
while the messages come in, so none of them reaches it before the kill."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import pytest
import trio

from logplexd.cluster import APPEND, PROPOSE, Keys
from logplexd.daemon import Daemon
from tests.helpers.child import DaemonProcess
from tests.helpers.cluster import (
    Sink,
    channel_with_drain,
    expected,
    node_settings,
    oldest,
    padded,
    send_numbered,
    text,
)
from tests.helpers.curl import api, curl
from tests.helpers.daemon import serve_in, serve_stoppable
from tests.helpers.drains import SyslogSink, l10_count, l10_total
from tests.helpers.net import free_port
from tests.helpers.peers import needs_curl
from tests.helpers.redis import RedisServer, ReplyLosingProxy, counter
from tests.helpers.syslog import frame, send_syslog
from tests.helpers.wait import wait_until

pytestmark = [pytest.mark.integration, needs_curl]

UNWRITTEN = 500


def daemon(tmp_path: Path, server: RedisServer) -> DaemonProcess:
    return DaemonProcess(
        tmp_path / "data",
        ("--store-url", server.url, "--node-id", "A", "--drain-lease-ttl", "1"),
    )


async def metric(ports, sample: str) -> int:
    """The value of a /metrics sample (its name and labels as printed; 0: not there)."""
    _, _, body = await curl(api(ports, "/metrics"))
    for line in body.decode().splitlines():
        if line.rpartition(" ")[0] == sample:
            return int(float(line.split()[-1]))
    return 0


async def routed(ports) -> int:
    return await metric(ports, 'logplexd_messages_routed_total{input="syslog"}')


async def send(ports, token: str, label: str, n: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", ports.syslog)
    await stream.send_all(b"".join(frame(token, f"{label} {i}") for i in range(n)))
    await stream.aclose()


def seen(sink: SyslogSink) -> tuple[list[str], list[int]]:
    """(the texts the sink received, the counts of its L10s)."""
    texts, losses = [], []
    for f in sink.frames():
        count = l10_count(f)
        if count is not None:
            losses.append(count)
        else:
            texts.append(f.rstrip(b"\n").rsplit(b" - - ", 1)[1].decode())
    return texts, losses


async def test_a_killed_node_announces_what_redis_never_had_and_nothing_more(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    sink_port = free_port()
    first = daemon(tmp_path, redis_server)
    ports = await trio.to_thread.run_sync(first.start)
    try:
        token, drain_id = await channel_with_drain(ports, sink_port, "app")
        # From here Redis holds every write: the node routes, and cannot write.
        redis_server.command("CLIENT", "PAUSE", "60000", "WRITE")
        await send(ports, token, "lost", UNWRITTEN)
        with trio.fail_after(20):
            while await routed(ports) < UNWRITTEN:
                await trio.sleep(0.05)
    finally:
        status = await trio.to_thread.run_sync(first.kill, signal.SIGKILL)
        redis_server.command("CLIENT", "UNPAUSE")
    assert status == -signal.SIGKILL, first.log
    assert redis_server.command("XLEN", Keys().stream("app")) == b":0\r\n"  # none in Redis

    sink = SyslogSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.serve, sink_port)
        second = daemon(tmp_path, redis_server)
        ports = await trio.to_thread.run_sync(second.start)
        try:
            # Told once, exactly, by the drain (whichever node runs it reads the marker).
            await wait_until(lambda: seen(sink)[1], timeout=30)
            assert "not acknowledged by Redis" in second.log
            # What comes next is delivered as usual; and with everything written, a kill
            # leaves nothing to announce.
            await send(ports, token, "kept", 10)
            await wait_until(lambda: len(seen(sink)[0]) == 10, timeout=30)
            # Killed once the drain's checkpoint is stored: what it delivered is not
            # delivered again (a drain resumes from its checkpoint, at least once).
            keys = Keys()
            checkpoint, sequence = keys.checkpoint("app", drain_id), keys.appended("app")[1]
            await wait_until(
                lambda: (
                    redis_server.command("GET", checkpoint) == redis_server.command("GET", sequence)
                ),
                timeout=30,
            )
        finally:
            status = await trio.to_thread.run_sync(second.kill, signal.SIGKILL)
        assert status == -signal.SIGKILL
        third = daemon(tmp_path, redis_server)
        ports = await trio.to_thread.run_sync(third.start)
        try:
            await send(ports, token, "after", 5)
            await wait_until(lambda: len(seen(sink)[0]) == 15, timeout=30)
        finally:
            await trio.to_thread.run_sync(third.kill, signal.SIGTERM)
        nursery.cancel_scope.cancel()

    texts, losses = seen(sink)
    assert losses == [UNWRITTEN]
    assert texts == [f"kept {i}" for i in range(10)] + [f"after {i}" for i in range(5)]
    assert "not acknowledged by Redis" not in third.log


async def test_a_write_redis_stored_before_the_kill_is_not_told_as_lost(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The node is stopped as a kill stops it (no flush, no reply read) while Redis has run
    its last write and the reply is on its way, with 7 more messages routed behind that
    write: the next process finds the write's 20 messages in the stream, past the entry its
    predecessor's last answered write ended at (``UnsentLedger``, ``UNANSWERED``), and the
    drain's L10 counts the 7 alone. Before, it counted all 27."""
    proxy = ReplyLosingProxy(redis_server.port)
    sink = Sink()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            proxy_port = await nursery.start(proxy.serve)
            sink_port = await nursery.start(sink.serve)
            settings = node_settings(tmp_path, "A", redis_server, drain_lease_ttl=1)
            behind = dataclasses.replace(settings, store_url=f"redis://127.0.0.1:{proxy_port}")
            served = await serve_stoppable(nursery, first := Daemon(behind))
            ports = served.ports
            token, drain_id = await channel_with_drain(ports, sink_port)
            keys = Keys()
            sequence = keys.appended("app")[1]
            await send_numbered(ports.syslog, token, "A", range(10))
            await wait_until(lambda: len(sink.messages()) == 10, timeout=20)
            checkpoint = keys.checkpoint("app", drain_id)
            await wait_until(lambda: counter(redis_server.command("GET", checkpoint)) == 10)
            # Every answer to the writer's next write comes back 30 s late.
            proxy.slow_replies((APPEND.sha.encode(), PROPOSE.sha.encode()), 30)
            await send_numbered(ports.syslog, token, "B", range(20))
            await wait_until(lambda: counter(redis_server.command("GET", sequence)) == 30)
            # Routed behind it: the writer waits for its reply, these never leave the node.
            await send_numbered(ports.syslog, token, "C", range(7))
            staging = first.registry.staging  # type: ignore[attr-defined]
            await wait_until(lambda: staging["app"].head == 37)
            assert proxy.slowed >= 1
            await served.stop()
            assert counter(redis_server.command("GET", sequence)) == 30

            second = Daemon(settings)
            await nursery.start(serve_in, second, trio.CancelScope())
            await wait_until(lambda: l10_total(bytes(sink.data)) > 0, timeout=30)
            await wait_until(lambda: len(sink.messages()) >= 30, timeout=30)
            assert l10_total(bytes(sink.data)) == 7
            got = sink.messages()
            assert got[:10] == [text("A", i).encode() for i in range(10)]
            # From the checkpoint on, what the stream holds (at least once).
            assert set(got[10:]) == expected("B", range(20))
            assert second.plane is not None and second.plane.writer.prior_stored == 20
            nursery.cancel_scope.cancel()


async def test_a_killed_node_resumes_the_disk_backlog_its_drain_spilled(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A node killed (``kill -9``) while its drain, whose endpoint refuses connections,
    had spilled past what the channel's stream keeps (512, at most 4 x 512 for a drain
    behind) to its disk: the next start on the data dir resumes that backlog from what the
    drain journaled as it spilled, then the stream after it. All 4,000 messages of 8 KB
    arrive, in order, with no L10; before, the next start removed the backlog, and the
    stream's newest 2,048 came with an L10 for the rest."""
    keep, sent = 512, 4000
    args = (
        "--store-url", redis_server.url, "--node-id", "A",
        "--channel-buffer-messages", str(keep), "--channel-buffer-bytes", str(1024 * 1024),
        "--history-messages", "100", "--history-bytes", str(64 * 1024),
    )  # fmt: skip
    sink_port = free_port()
    first = DaemonProcess(tmp_path / "data", args)
    ports = await trio.to_thread.run_sync(first.start)
    try:
        token, drain_id = await channel_with_drain(ports, sink_port)
        with trio.fail_after(30):
            await send_syslog(ports.syslog, padded(token, "A", range(sent)))
        await wait_until(lambda: oldest(redis_server) > sent - 4 * keep, timeout=20)
        written = "logplexd_backlog_written_messages_total"
        with trio.fail_after(20):
            while await metric(ports, written) < sent - keep:
                await trio.sleep(0.05)
    finally:
        status = await trio.to_thread.run_sync(first.kill, signal.SIGKILL)
    assert status == -signal.SIGKILL, first.log
    assert (tmp_path / "data" / "redis-backlog" / "journal" / str(drain_id)).exists()

    sink = Sink()
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.serve, sink_port)
        second = DaemonProcess(tmp_path / "data", args)
        await trio.to_thread.run_sync(second.start)
        try:
            with trio.move_on_after(60):
                while len(sink.messages()) < sent:
                    await trio.sleep(0.01)
        finally:
            await trio.to_thread.run_sync(second.kill, signal.SIGTERM)
        nursery.cancel_scope.cancel()
    got = sink.messages()
    assert got == [text("A", i).encode() for i in range(sent)], (
        f"{len(got)} arrived, L10 {l10_total(bytes(sink.data))}\n{first.log[-3000:]}\n"
        f"{second.log[-6000:]}"
    )
    assert l10_total(bytes(sink.data)) == 0
    assert "journaled" in second.log
