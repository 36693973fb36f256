"""Pushback in Redis mode (issues 18 and 21): a node never drops what its consumers would
take because it is itself behind.

Before: one node on Redis flooded over one TCP connection lost 46-49 % of the messages a
fast drain would have taken (bench/e2e ``logplexd-redis``): the follower appended whole
reads of the stream to the ring, lapping the drain, and nothing held the input. Now the
follower reads no further while a drain holds the channel, the node holds a channel's
inputs while its unwritten + unread share passes what the stream keeps
(``ChannelPushback``), and a receiver that stops reading is still a slow consumer: it drops
with an exact L10 and holds nobody.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
import trio

from logplexd.cluster import HOLD_KEEPS, READER_SLACK, ChannelPushback, ClusterDrains, Keys
from logplexd.config import Settings
from logplexd.daemon import Daemon
from logplexd.native import ChannelRing
from logplexd.router import Channel
from tests.helpers.cluster import (
    Sink,
    channel_on_every_node,
    expected,
    node_settings,
    numbered,
    oldest,
    padded,
    text,
)
from tests.helpers.curl import AUTH, JSON, api, curl
from tests.helpers.daemon import Stoppable, serve_in, serve_stoppable
from tests.helpers.drains import l10_total
from tests.helpers.net import free_port
from tests.helpers.peers import needs_curl
from tests.helpers.redis import RedisCluster, RedisServer, bulk_strings, eventually, integer
from tests.helpers.syslog import send_syslog

pytestmark = [pytest.mark.integration, needs_curl]

# An L10 notice: its count and "since".
L10_NOTICE = re.compile(
    rb"Error L10 \(output buffer overflow\): (\d+) messages dropped since (\S+)"
)

# A small ring and stream: a flood of a few thousand messages is many rings' worth.
RING = 2048


# -- the sans-IO rule -----------------------------------------------------------------------------


def test_channel_pushback_holds_past_three_keeps_and_releases_under_half():
    behind = {"a": 0}
    reachable = [True]
    pushback = ChannelPushback(1000, lambda name: behind[name], lambda: reachable[0])
    channel = Channel("a", ChannelRing(16, 4096))

    # The stream keeps up to READER_SLACK x keep for a follower behind: the hold mark must
    # leave room under it for the batch that passes the mark.
    assert HOLD_KEEPS == 3 and HOLD_KEEPS < READER_SLACK
    behind["a"] = 3000  # three times what the stream keeps (HOLD_KEEPS): not yet
    pushback.routed(channel)
    assert not channel.held
    behind["a"] = 3001
    pushback.routed(channel)
    assert channel.held and pushback.holds == 1
    behind["a"] = 1501  # over half: still held
    pushback.progressed(["a"])
    assert channel.held
    behind["a"] = 1500
    pushback.progressed(["a"])
    assert not channel.held

    # Redis unreachable: an outage never holds producers, and releases what was held.
    behind["a"] = 3600
    pushback.routed(channel)
    assert channel.held
    reachable[0] = False
    pushback.progressed(["b"])
    assert not channel.held
    pushback.routed(channel)
    assert not channel.held and pushback.holds == 2


# -- one whole node on a real redis-server --------------------------------------------------------


async def one_node(
    tmp_path: Path,
    server: RedisServer | RedisCluster,
    nursery: trio.Nursery,
    sinks: list[Sink],
    **overrides,
):
    settings = dataclasses.replace(
        node_settings(tmp_path, "A", server),
        **({"history_messages": RING, "channel_buffer_messages": RING} | overrides),
    )
    daemon = Daemon(settings)
    ports = await nursery.start(serve_in, daemon, trio.CancelScope())
    await eventually(lambda: daemon.plane is not None and daemon.plane.failure is None, 5)
    return daemon, ports


async def add_drain(ports, channel: str, sink_port: int) -> None:
    status, _, _ = await curl(
        "-X", "POST", *AUTH, *JSON,
        "-d", json.dumps({"url": f"syslog://127.0.0.1:{sink_port}"}),
        api(ports, f"/v3/channels/{channel}/drains"),
    )  # fmt: skip
    assert status == 201


async def app_with_a_drain(
    tmp_path: Path, server: RedisServer, nursery: trio.Nursery, sink: Sink, **overrides
):
    """One node (``one_node``) with channel "app" drained to ``sink``, once it owns that
    drain; the daemon, its ports and the channel's token."""
    daemon, ports = await one_node(tmp_path, server, nursery, [sink], **overrides)
    token = await channel_on_every_node(ports, [daemon])
    await add_drain(ports, "app", await nursery.start(sink.serve))
    await eventually(lambda: daemon.cluster_drains is not None and daemon.cluster_drains.owned(), 5)
    return daemon, ports, token


@pytest.mark.parametrize("ring", [0, 128])
async def test_a_flood_of_many_rings_reaches_a_fast_drain_whole_and_in_order(
    tmp_path: Path, redis_server: RedisServer, ring: int
) -> None:
    """``ring`` (``redis_ring_messages``) 128: the channel's ring starts at 128 messages and
    deepens, up to what the stream keeps, to twice the largest entry the follow appends
    whole (up to 512 here), so that no entry laps the drain."""
    sink = Sink()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            daemon, ports, token = await app_with_a_drain(
                tmp_path,
                redis_server,
                nursery,
                sink,
                redis_ring_messages=ring,
                history_messages=100,
            )
            readers = daemon.registry.channels["app"].ring
            assert readers.max_messages == (ring or RING)
            # 24,000 messages (about 12 rings) on one connection, in four numbered series.
            series = "ABCD"
            data = b"".join(numbered(token, tag, range(6000)) for tag in series)
            await send_syslog(ports.syslog, data)
            await eventually(lambda: len(sink.messages()) >= 24000, 40)
            got = sink.messages()
            assert len(got) == 24000  # none twice
            assert set(got) == set().union(*(expected(tag, range(6000)) for tag in series))
            assert got == [text(tag, i).encode() for tag in series for i in range(6000)]
            assert l10_total(bytes(sink.data)) == 0
            # The input was held, not dropped.
            assert daemon.syslog.stats.pushbacks > 0
            # ... by the drain (the follower paused) and by the node itself (the stream ahead).
            assert daemon.plane is not None and daemon.plane.pushback.holds > 0
            if ring:  # deepened to hold two of its largest entries (at most RING / 4 each)
                assert 128 < readers.max_messages <= RING // 2
            else:
                assert readers.max_messages == RING
            nursery.cancel_scope.cancel()


async def test_tiny_buffers_take_a_flood_whole(tmp_path: Path, redis_server: RedisServer) -> None:
    """With a channel buffer of 40 messages and an outbound buffer of 150, one read carries
    many times both. Before, the read lapped the channel's 40-deep staging ring, and one
    staging ring overfilled the outbound buffer (which dropped its oldest): lost, with an
    L10. Staging rings are now at least one read deep and feed the buffer only to three
    quarters of it; the rest waits, and so does the input."""
    sink = Sink()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            daemon, ports, token = await app_with_a_drain(
                tmp_path,
                redis_server,
                nursery,
                sink,
                history_messages=40,
                channel_buffer_messages=40,
                redis_buffer_messages=150,
            )
            await send_syslog(ports.syslog, numbered(token, "T", range(3000)))
            await eventually(lambda: len(sink.messages()) >= 3000, 40)
            assert sink.messages() == [text("T", i).encode() for i in range(3000)]
            assert l10_total(bytes(sink.data)) == 0
            nursery.cancel_scope.cancel()


async def test_many_channels_over_a_full_outbound_buffer_wait_at_one_gate_and_lose_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """20 channels, each with its own drain, fed in turn over one connection through an
    outbound buffer of 200 messages, less than one stream entry (512 messages here): the
    buffer is past half full again and again, and the node's one gate (``OutboundGate``)
    closes instead of a hold per channel. Every drain gets its channel whole and in order.
    Before, each routed piece (up to a stream entry) was larger than the whole buffer, which
    dropped every one of them as it was pushed: nothing reached a drain."""
    names = [f"c{i:02d}" for i in range(20)]
    sinks = [Sink() for _ in names]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            daemon, ports = await one_node(
                tmp_path, redis_server, nursery, sinks, redis_buffer_messages=200
            )
            tokens = []
            for name, sink in zip(names, sinks, strict=True):
                status, _, body = await curl(
                    "-X", "PUT", *AUTH, *JSON, "-d", '{"tokens":["web"]}',
                    api(ports, f"/v3/channels/{name}"),
                )  # fmt: skip
                assert status == 201
                tokens.append(json.loads(body)["tokens"]["web"])
                await add_drain(ports, name, await nursery.start(sink.serve))
            await eventually(
                lambda: (
                    daemon.cluster_drains is not None
                    and len(daemon.cluster_drains.owned()) == len(names)
                ),
                10,
            )
            plane = daemon.plane
            assert plane is not None
            data = b"".join(numbered(token, "G", [i]) for i in range(300) for token in tokens)
            await send_syslog(ports.syslog, data)
            for sink in sinks:
                await eventually(lambda sink=sink: len(sink.messages()) >= 300, 40)
            for sink in sinks:
                assert sink.messages() == [text("G", i).encode() for i in range(300)]
                assert l10_total(bytes(sink.data)) == 0
            assert plane.pushback.gate.closings > 0
            await eventually(lambda: not plane.pushback.gate.closed, 5)
            # The inputs' wait is counted (``redis_inputs_gated_seconds_total``).
            assert plane.pushback.gate.closed_seconds > 0
            assert plane.buffer.dropped == 0
            nursery.cancel_scope.cancel()


async def test_a_loss_with_nothing_after_it_is_told_at_once_by_an_l10_alone(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A loss marker read from the stream (here: 7 messages this node's outbound buffer
    dropped) is the last thing on the channel. Before, the drain counted it and left the L10
    for the next message, which never came: the loss went untold."""
    sink = Sink()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            daemon, ports, token = await app_with_a_drain(tmp_path, redis_server, nursery, sink)
            await send_syslog(ports.syslog, numbered(token, "L", range(10)))
            await eventually(lambda: len(sink.messages()) >= 10, 20)
            assert daemon.plane is not None
            daemon.plane.lose("app", 7)
            await eventually(lambda: l10_total(bytes(sink.data)) == 7, 20)
            assert sink.messages() == [text("L", i).encode() for i in range(10)]
            nursery.cancel_scope.cancel()


class StalledSink(Sink):
    """Accepts, reads ``first`` bytes, then reads nothing until ``resume`` is set."""

    def __init__(self, first: int) -> None:
        super().__init__()
        self.first = first
        self.resume = trio.Event()

    async def _handle(self, stream: trio.SocketStream) -> None:
        # (Not a smaller SO_RCVBUF: shrunk after accept, the kernel drops what it had
        # advertised room for, and retransmission backoff stalls the drain for seconds.)
        self.connections += 1
        try:
            while len(self.data) < self.first and (data := await stream.receive_some(4096)):
                self.data += data
            await self.resume.wait()
            while data := await stream.receive_some(65536):
                self.data += data
        except trio.BrokenResourceError:
            pass


async def test_a_receiver_that_stops_reading_drops_with_an_exact_l10_and_holds_no_producer(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # Far more than the stream keeps for the stalled drain (READER_SLACK x keep behind the
    # newest message, from where it had delivered: what the sockets' buffers took before
    # it stalled counts as delivered): some of it is trimmed before the drain resumes,
    # however the writes fall. (Under 10,000: ``text`` numbers messages with four digits.)
    TOTAL, KEEP = 9_900, 512
    assert TOTAL > 4 * READER_SLACK * KEEP
    stalled = StalledSink(first=4096)
    other = Sink()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            daemon, ports = await one_node(
                tmp_path,
                redis_server,
                nursery,
                [stalled, other],
                history_messages=KEEP,
                channel_buffer_messages=KEEP,
                # Without the owner's disk (the budget is then the stream's); with it,
                # ``test_a_drain_behind_past_what_the_stream_keeps_spills_to_its_owners_disk``.
                redis_drain_spill=False,
            )
            token = await channel_on_every_node(ports, [daemon])
            await add_drain(ports, "app", await nursery.start(stalled.serve))
            status, _, body = await curl(
                "-X", "PUT", *AUTH, *JSON, "-d", '{"tokens":["web"]}',
                api(ports, "/v3/channels/other"),
            )  # fmt: skip
            assert status == 201
            other_token = json.loads(body)["tokens"]["web"]
            await add_drain(ports, "other", await nursery.start(other.serve))
            await eventually(
                lambda: (
                    daemon.cluster_drains is not None and len(daemon.cluster_drains.owned()) == 2
                ),
                5,
            )
            # Both channels on one connection, interleaved: the stalled drain must not hold it.
            data = b"".join(
                numbered(token, "A", range(i, i + 100))
                + numbered(other_token, "B", range(i, i + 100))
                for i in range(0, TOTAL, 100)
            )
            with trio.fail_after(20):
                await send_syslog(ports.syslog, data)
            await eventually(lambda: len(other.messages()) >= TOTAL, 30)
            assert other.messages() == [text("B", i).encode() for i in range(TOTAL)]
            # The stalled drain: what it kept, then its L10 for exactly the rest.
            stalled.resume.set()

            def announced() -> int:
                return sum(int(n) for n, _ in L10_NOTICE.findall(bytes(stalled.data)))

            def accounted() -> bool:
                return len(stalled.messages()) + announced() >= TOTAL

            await eventually(accounted, 30)
            got = stalled.messages()
            assert len(got) == len(set(got)) and set(got) <= expected("A", range(TOTAL))
            assert stalled.connections == 1  # one connection: nothing written twice
            assert announced() > 0
            assert len(got) + announced() == TOTAL  # every message delivered or announced
            nursery.cancel_scope.cancel()


# -- a drain the ring laps reads on from the stream ------------------------------------------------

# The readers' ring holds 1 MiB (``channel_buffer_bytes``): ~128 of the 8 KB messages below,
# where the stream keeps RING (2,048) messages whatever their size.
RING_BYTES = 1024 * 1024


def small_rings(keep: int) -> dict[str, int]:
    """Settings of a node whose rings hold RING_BYTES and whose streams keep ``keep``."""
    return {
        "history_messages": 100,
        "history_bytes": 64 * 1024,
        "channel_buffer_messages": keep,
        "channel_buffer_bytes": RING_BYTES,
    }


async def small_ring_node(
    tmp_path: Path,
    server: RedisServer | RedisCluster,
    nursery: trio.Nursery,
    sinks: list[Sink],
    keep: int,
    **overrides,
):
    """``one_node`` whose rings hold RING_BYTES and whose streams keep ``keep`` messages."""
    return await one_node(tmp_path, server, nursery, sinks, **small_rings(keep), **overrides)


async def stalled_drain(
    tmp_path: Path,
    server: RedisServer | RedisCluster,
    nursery: trio.Nursery,
    stalled,
    keep: int = RING,
    *,
    drain_spill: bool = False,
):
    """One node whose rings hold RING_BYTES and whose streams keep ``keep`` messages, with
    channel "app" drained to ``stalled``; the daemon, its ports, the token and the drain.
    Its drains spill to disk only with ``drain_spill`` (``redis_drain_spill``; else the
    ring laps them)."""
    daemon, ports = await small_ring_node(
        tmp_path, server, nursery, [stalled], keep, redis_drain_spill=drain_spill
    )
    token = await channel_on_every_node(ports, [daemon])
    await add_drain(ports, "app", await nursery.start(stalled.serve))
    drains = daemon.cluster_drains
    await eventually(lambda: drains is not None and len(drains.owned()) == 1, 5)
    assert drains is not None and daemon.drains is not None
    drain = daemon.drains.drain(drains.owned()[0])
    assert drain is not None
    assert daemon.registry.channels["app"].ring.max_bytes == RING_BYTES
    return daemon, ports, token, drain


@pytest.mark.parametrize(("sent", "keep"), [(1800, RING), (1800, 512), (4000, 512)])
async def test_a_drain_its_ring_lapped_reads_on_from_the_stream_and_loses_only_what_it_trimmed(
    tmp_path: Path, redis_server: RedisServer, sent: int, keep: int
) -> None:
    """The receiver stops reading while ``sent`` messages of 8 KB arrive: the ring (1 MiB)
    laps its drain many times over. 1,800 fit in what the stream keeps (2,048), and in what
    it keeps for a drain behind when it keeps 512 (READER_SLACK x 512: the drain's
    delivered position holds the trim): all of them arrive, in order, on one connection,
    with no L10. Of 4,000 with a stream that keeps 512 (and at most 4 x 512 for a reader or
    drain behind, so some are trimmed whatever the timing), the drain gets the first ones
    it had taken, then what the stream still keeps, and an L10 for exactly the rest."""
    stalled = StalledSink(first=4096)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            _, ports, token, drain = await stalled_drain(
                tmp_path, redis_server, nursery, stalled, keep
            )
            with trio.fail_after(20):
                await send_syslog(ports.syslog, padded(token, "A", range(sent)))
            # The ring let go of what the drain had not read.
            await eventually(lambda: drain.feed.lapped > 0, 10)
            stalled.resume.set()

            def announced() -> int:
                return sum(int(n) for n, _ in L10_NOTICE.findall(bytes(stalled.data)))

            await eventually(lambda: len(stalled.messages()) + announced() >= sent, 30)
            got = stalled.messages()
            assert stalled.connections == 1
            assert len(got) + announced() == sent  # every message delivered or announced
            # In order, none twice: a run from the start, then one up to the end.
            numbers = [int(m[6:10]) for m in got]
            assert numbers == sorted(set(numbers))
            assert numbers[-1] == sent - 1
            if sent <= READER_SLACK * keep:
                assert got == [text("A", i).encode() for i in range(sent)]
                assert announced() == 0
            else:
                assert announced() > 0
                # What the stream kept for the drain, at least.
                assert len(got) >= READER_SLACK * keep
            refill = drain.feed.refill
            assert refill is not None and refill.reads > 0  # type: ignore[attr-defined]
            # Back in the ring, it keeps no batch read from the stream.
            assert not refill.reading and refill.current is None  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()


async def test_a_drain_behind_past_what_the_stream_keeps_spills_to_its_owners_disk(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """As above with 4,000 messages of 8 KB and a stream that keeps 512 (at most 4 x 512
    for a drain behind), but the node's drains spill to disk (``redis_drain_spill``): once the
    drain is half its ring behind, the owner copies what it has not delivered to its own
    disk, so what the writers trim is not lost. All 4,000 arrive, in order, on one
    connection, with no L10 (without the disk, some are lost whatever the timing: the case
    above); the drain's checkpoint then reaches the stream's last message."""
    keep, sent = 512, 4000
    assert sent > READER_SLACK * keep
    stalled = StalledSink(first=4096)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            daemon, ports, token, drain = await stalled_drain(
                tmp_path, redis_server, nursery, stalled, keep, drain_spill=True
            )
            with trio.fail_after(20):
                await send_syslog(ports.syslog, padded(token, "A", range(sent)))
            backlogs = daemon.backlogs
            assert backlogs is not None and backlogs.ephemeral
            await eventually(lambda: backlogs.written_messages > 0, 10)

            # The writers trimmed the stream past what the drain had delivered (the
            # sockets' buffers took a few hundred messages): its oldest entry ends past
            # READER_SLACK x keep behind the newest message.
            await eventually(lambda: oldest(redis_server) > sent - READER_SLACK * keep, 10)
            assert len(stalled.messages()) < sent - READER_SLACK * keep
            assert drain.feed.spilling
            stalled.resume.set()
            await eventually(lambda: len(stalled.messages()) >= sent, 30)
            assert stalled.messages() == [text("A", i).encode() for i in range(sent)]
            assert L10_NOTICE.findall(bytes(stalled.data)) == []
            assert stalled.connections == 1
            assert drain.feed.counters.lost == 0
            # The checkpoint, from the disk backlog's stream sequences, is the last message.
            checkpoint = Keys().checkpoint("app", drain.drain_id)
            sequence = Keys().appended("app")[1]
            await eventually(
                lambda: (
                    redis_server.command("GET", checkpoint) == redis_server.command("GET", sequence)
                ),
                10,
            )
            nursery.cancel_scope.cancel()


async def test_a_drain_whose_receiver_is_down_spills_to_its_owners_disk_and_sends_it_all(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The drain's endpoint refuses connections while 4,000 messages of 8 KB arrive (the
    stream keeps 512, at most 2,048 for a drain behind): a drain that cannot connect is a
    receiver that refuses data, so the owner spills what it has not delivered to its disk,
    and the writers trim the stream as ever. Once the endpoint listens, all 4,000 arrive,
    in order, with no L10."""
    keep, sent = 512, 4000
    port = free_port()
    sink = Sink()
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            daemon, ports = await small_ring_node(tmp_path, redis_server, nursery, [sink], keep)
            assert daemon.settings.redis_drain_spill  # the default
            token = await channel_on_every_node(ports, [daemon])
            await add_drain(ports, "app", port)
            drains, backlogs = daemon.cluster_drains, daemon.backlogs
            assert drains is not None and backlogs is not None
            await eventually(lambda: len(drains.owned()) == 1, 5)
            with trio.fail_after(20):
                await send_syslog(ports.syslog, padded(token, "A", range(sent)))
            await eventually(lambda: oldest(redis_server) > sent - READER_SLACK * keep, 10)
            await eventually(lambda: backlogs.written_messages >= sent - keep, 10)
            await nursery.start(sink.serve, port)
            await eventually(lambda: len(sink.messages()) >= sent, 60)
            assert sink.messages() == [text("A", i).encode() for i in range(sent)]
            assert l10_total(bytes(sink.data)) == 0
            nursery.cancel_scope.cancel()


class Spilling(NamedTuple):
    settings: Settings
    port: int
    served: Stoppable


async def spilling_node(
    tmp_path: Path, server: RedisServer, nursery: trio.Nursery, keep: int, sent: int
) -> Spilling:
    """Node A with channel "app" drained to ``port``, where nobody listens, and ``sent``
    messages of 8 KB sent to it, every write answered: a node stopped between Redis
    storing a write and the node hearing so has the next process look for that write in
    the stream (the kill -9 count, ``UnsentLedger``); here the writers trim at ``keep``,
    and what of it they trimmed would be told lost too, an L10 counting more than were."""
    port = free_port()
    settings = dataclasses.replace(node_settings(tmp_path, "A", server), **small_rings(keep))
    served = await serve_stoppable(nursery, first := Daemon(settings))
    ports = served.ports
    await eventually(lambda: first.plane is not None and first.plane.failure is None, 5)
    token = await channel_on_every_node(ports, [first])
    await add_drain(ports, "app", port)
    drains, plane = first.cluster_drains, first.plane
    assert drains is not None and plane is not None and first.backlogs is not None
    await eventually(lambda: len(drains.owned()) == 1, 5)
    with trio.fail_after(20):
        await send_syslog(ports.syslog, padded(token, "A", range(sent)))
    await eventually(lambda: plane.writer.messages_written >= sent, 10)
    return Spilling(settings, port, served)


async def test_a_node_restarted_without_its_drains_journal_resumes_from_the_checkpoint(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A node stopped as a kill would while its drain had spilled (its endpoint refusing
    connections) resumes that backlog from the drain's journal at its next start
    (``test_a_killed_node_resumes_the_disk_backlog_its_drain_spilled``). Without the
    journal (lost with a disk, removed by hand) it starts again with an empty backlog
    directory, and the drain resumes from its checkpoint in Redis: what the stream still
    holds arrives, in order; an L10 tells exactly how many the writers trimmed meanwhile
    (docs/SCALING.md, "A drain behind past the stream")."""
    keep, sent = 512, 4000
    sink = Sink()
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            spilling = await spilling_node(tmp_path, redis_server, nursery, keep, sent)
            settings, port, served = spilling.settings, spilling.port, spilling.served
            backlogs = settings.data_dir / "redis-backlog"
            await eventually(lambda: oldest(redis_server) > sent - READER_SLACK * keep, 10)
            await eventually(lambda: any(backlogs.rglob("*.seg")), 10)
            await served.stop()  # as a kill would: no final flush, the data dir let go
            journal = backlogs / "journal"
            assert any(journal.iterdir())
            shutil.rmtree(journal)
            second = Daemon(settings)
            await nursery.start(serve_in, second, trio.CancelScope())
            assert not any(backlogs.rglob("*.seg"))  # the last process's backlog is gone
            await nursery.start(sink.serve, port)

            def accounted() -> int:
                return len(sink.messages()) + l10_total(bytes(sink.data))

            await eventually(lambda: accounted() >= sent, 60)
            got = sink.messages()
            numbers = [int(m[6:10]) for m in got]
            assert numbers == list(range(sent - len(got), sent))  # the newest, in order
            assert l10_total(bytes(sink.data)) == sent - len(got) > 0
            assert len(got) >= keep
            nursery.cancel_scope.cancel()


async def test_a_loss_noted_while_a_spilled_drain_stored_no_checkpoint_is_told_after_a_kill(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A drain whose endpoint refuses connections stores no checkpoint (its delivery does
    not move). A loss the stream tells it meanwhile (here 7 messages, as a trimmed stream
    or a writer's dropped buffer would announce) is journaled with its backlog: the node
    stopped as a kill would, its next start delivers every message spilled, in order, and
    one L10 of exactly 7. Before, the journal held only the loss owed at the last
    checkpoint, and this one went untold."""
    sent, sink = 3000, Sink()
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            spilling = await spilling_node(tmp_path, redis_server, nursery, 512, sent)
            first = spilling.served.daemon
            drains, plane, store = first.cluster_drains, first.plane, first.backlogs
            assert drains is not None and plane is not None and store is not None
            await eventually(lambda: store.written_messages >= sent - 512, 10)
            assert any((spilling.settings.data_dir / "redis-backlog" / "journal").iterdir())
            drains.announce_loss("app", 7, plane.wall_clock())
            await spilling.served.stop()  # as a kill would: no final flush
            await nursery.start(serve_in, Daemon(spilling.settings), trio.CancelScope())
            await nursery.start(sink.serve, spilling.port)

            def accounted() -> int:
                return len(sink.messages()) + l10_total(bytes(sink.data))

            await eventually(lambda: accounted() >= sent + 7, 60)
            assert sink.messages() == [text("A", i).encode() for i in range(sent)]
            assert l10_total(bytes(sink.data)) == 7
            nursery.cancel_scope.cancel()


class Stopped(NamedTuple):
    settings: Settings
    port: int
    # After the stop: who holds each drain's lease, and whether each holder's liveness key
    # is there; and A's incarnation when it stopped.
    holders: dict[str, str]
    alive: dict[str, bool]
    stopped: str
    ids: dict[str, int]
    beside: Daemon | None

    def beside_drains(self) -> ClusterDrains:
        """The drains of the node started beside A (``beside``)."""
        assert self.beside is not None and self.beside.cluster_drains is not None
        return self.beside.cluster_drains


async def spilled_then_stopped(
    tmp_path: Path,
    server: RedisServer,
    nursery: trio.Nursery,
    keep: int,
    sent: int,
    *,
    ttl: float = 10.0,
    beside: str | None = None,
) -> Stopped:
    """Node A with channel "app" drained to a port nobody listens on, and channel "other"
    drained to a sink that takes everything; ``sent`` messages of 8 KB to "app", which the
    drain spills past the stream (trimmed past what a checkpoint could resume from), then
    A stopped cleanly (``Daemon.shutdown``); ``beside``: a node of that name started on the
    same Redis before the stop, and left running. ``ttl``: the nodes' drain_lease_ttl."""
    port = free_port()
    other = Sink()
    settings = dataclasses.replace(
        node_settings(tmp_path, "A", server, drain_lease_ttl=ttl), **small_rings(keep)
    )
    served = await serve_stoppable(nursery, first := Daemon(settings))
    ports = served.ports
    await eventually(lambda: first.plane is not None and first.plane.failure is None, 5)
    token = await channel_on_every_node(ports, [first])
    await add_drain(ports, "app", port)
    status, _, _ = await curl(
        "-X", "PUT", *AUTH, *JSON, "-d", '{"tokens":["web"]}', api(ports, "/v3/channels/other")
    )  # fmt: skip
    assert status == 201
    await add_drain(ports, "other", await nursery.start(other.serve))
    drains, backlogs = first.cluster_drains, first.backlogs
    assert drains is not None and backlogs is not None
    await eventually(lambda: len(drains.owned()) == 2, 5)
    holder = drains.liveness.holder
    with trio.fail_after(20):
        await send_syslog(ports.syslog, padded(token, "A", range(sent)))
    await eventually(lambda: oldest(server) > sent - READER_SLACK * keep, 10)
    await eventually(lambda: backlogs.written_messages >= sent - keep, 10)
    second = None
    if beside is not None:
        second = Daemon(dataclasses.replace(settings, data_dir=tmp_path / beside, node_id=beside))
        await nursery.start(serve_in, second, trio.CancelScope())
        await eventually(lambda: second.registry.channel_of_token(token) is not None, 5)
    await served.shutdown()
    keys = Keys()
    ids = {w.channel: i for i, w in drains.wanted.items()}
    # ("" for a key that is gone.)
    holders = {
        channel: b"".join(bulk_strings(server.command("GET", keys.lease(channel, i)))).decode()
        for channel, i in ids.items()
    }
    alive = {
        h: integer(server.command("EXISTS", keys.alive(h))) == 1
        for h in {holder, *holders.values()}
    }
    return Stopped(settings, port, holders, alive, holder, ids, second)


async def test_a_clean_stop_carries_a_spilled_drain_over_to_the_next_process(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A node stopped cleanly (a deploy, a restart) while its drain had spilled past what
    the stream keeps: the next process on the data dir resumes that disk backlog, then the
    stream after it. All 4,000 messages arrive, in order, with no L10 (before, the stream
    kept the newest 2,048 and an L10 told the rest lost). The drain with a backlog stays
    with the node for a TTL (the restarted node takes it at once); the other drain's lease
    is free at the stop."""
    keep, sent = 512, 4000
    sink = Sink()
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            settings, port, holders, alive, stopped, _, _ = await spilled_then_stopped(
                tmp_path, redis_server, nursery, keep, sent
            )
            # The other drain's lease is free to take (its holder's liveness key is gone);
            # the one with a backlog is held by another incarnation of A, alive for a TTL.
            assert holders["other"] == stopped and not alive[stopped]
            assert holders["app"].startswith("A/") and holders["app"] != stopped
            assert alive[holders["app"]]
            assert (settings.data_dir / "redis-backlog" / "carried.msgpack").exists()
            second = Daemon(settings)
            await nursery.start(serve_in, second, trio.CancelScope())
            await nursery.start(sink.serve, port)
            await eventually(lambda: len(sink.messages()) >= sent, 60)
            assert sink.messages() == [text("A", i).encode() for i in range(sent)]
            assert l10_total(bytes(sink.data)) == 0
            assert not (settings.data_dir / "redis-backlog" / "carried.msgpack").exists()
            nursery.cancel_scope.cancel()


async def test_a_drain_deleted_as_its_node_stops_leaves_no_lease_key(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain with a backlog is deleted (its lease key with it) while its node stops,
    just before the stop hands the lease to the keeper: the key stays deleted. The hand-over
    took a missing key before, leaving a lease key of a drain that no longer exists."""
    handed = ClusterDrains._keep_for_next
    deleted: list[int] = []

    async def deleted_first(self: ClusterDrains, carried: set[int]) -> None:
        for drain_id in carried:
            channel = self.wanted[drain_id].channel
            deleted.append(integer(redis_server.command("DEL", Keys().lease(channel, drain_id))))
        await handed(self, carried)

    monkeypatch.setattr(ClusterDrains, "_keep_for_next", deleted_first)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            _, _, _, _, _, ids, _ = await spilled_then_stopped(
                tmp_path, redis_server, nursery, 512, 4000
            )
            assert deleted == [1]  # the key was there, held, when it was deleted
            assert integer(redis_server.command("EXISTS", Keys().lease("app", ids["app"]))) == 0
            nursery.cancel_scope.cancel()


async def test_another_node_waits_for_a_carried_drain_while_the_stopped_one_comes_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Two nodes. A, whose drain spilled, stops cleanly: B takes A's other drain at its next
    tick, but leaves the one with a backlog to A's liveness key (4 s); A started again takes
    it at once and sends all 4,000 messages, in order, with no L10."""
    keep, sent = 512, 4000
    sink = Sink()
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            stopped = await spilled_then_stopped(
                tmp_path, redis_server, nursery, keep, sent, ttl=4.0, beside="B"
            )
            settings, port, ids, drains = (
                stopped.settings,
                stopped.port,
                stopped.ids,
                stopped.beside_drains(),
            )
            await eventually(lambda: ids["other"] in drains.owned(), 5)
            ticks = drains.ticks
            await eventually(lambda: drains.ticks >= ticks + 1, 5)
            assert ids["app"] not in drains.owned()
            await nursery.start(serve_in, Daemon(settings), trio.CancelScope())
            await nursery.start(sink.serve, port)
            await eventually(lambda: len(sink.messages()) >= sent, 60)
            assert sink.messages() == [text("A", i).encode() for i in range(sent)]
            assert l10_total(bytes(sink.data)) == 0
            assert ids["app"] not in drains.owned()
            nursery.cancel_scope.cancel()


async def test_a_carried_backlog_another_node_took_is_removed_at_the_next_start(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Two nodes. A, whose drain spilled, stops cleanly and stays away longer than its
    keeper's TTL (4 s): B takes the drain. A started again learns so at its first lease
    tick and removes the backlog it carried over then, not when the process ends (its
    files would fill the disk meanwhile); A runs on, B keeps the drain."""
    keep, sent = 512, 4000
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            stopped = await spilled_then_stopped(
                tmp_path, redis_server, nursery, keep, sent, ttl=4.0, beside="B"
            )
            settings, ids, taker = stopped.settings, stopped.ids, stopped.beside_drains()
            await eventually(lambda: ids["app"] in taker.owned(), 15)
            kept = settings.data_dir / "redis-backlog" / "drains" / str(ids["app"])
            assert any(kept.rglob("*.seg"))
            again = Daemon(settings)
            await nursery.start(serve_in, again, trio.CancelScope())
            drains = again.cluster_drains
            assert drains is not None
            await eventually(lambda: drains.ticks >= 1, 10)
            await eventually(lambda: not kept.exists(), 5)
            assert ids["app"] not in drains.carried
            assert ids["app"] not in drains.owned() and ids["app"] in taker.owned()
            nursery.cancel_scope.cancel()


async def test_a_carried_backlog_of_a_drain_deleted_meanwhile_is_removed_at_the_next_start(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A, whose drain spilled, stops cleanly (its backlog carried over); the drain is
    deleted on B while A is down. A started again removes that backlog once the store has
    loaded, not when the process ends (its files would fill the disk meanwhile); the other
    drain, which spilled nothing, runs on A as before."""
    keep, sent = 512, 4000
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            stopped = await spilled_then_stopped(
                tmp_path, redis_server, nursery, keep, sent, beside="B"
            )
            settings, ids, beside = stopped.settings, stopped.ids, stopped.beside
            assert beside is not None and beside.store is not None
            kept = settings.data_dir / "redis-backlog" / "drains" / str(ids["app"])
            assert any(kept.rglob("*.seg"))
            assert await beside.store.delete_drain("app", ids["app"]) is not None
            again = Daemon(settings)
            await nursery.start(serve_in, again, trio.CancelScope())
            drains = again.cluster_drains
            assert drains is not None
            await eventually(lambda: not kept.exists(), 10)
            assert drains.carried == {}
            assert ids["app"] not in drains.wanted and ids["other"] in drains.wanted
            nursery.cancel_scope.cancel()


async def test_a_carried_backlog_is_void_once_its_checkpoint_moved(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Between the stop and the next start the drain's checkpoint moved (another node ran
    it and delivered): the backlog carried over is removed and the drain resumes from the
    checkpoint, nothing of the backlog delivered again."""
    keep, sent = 512, 4000
    sink = Sink()
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            stopped = await spilled_then_stopped(tmp_path, redis_server, nursery, keep, sent)
            checkpoint = Keys().checkpoint("app", stopped.ids["app"])
            redis_server.command("SET", checkpoint, str(sent - 10))
            settings, port = stopped.settings, stopped.port
            second = Daemon(settings)
            await nursery.start(serve_in, second, trio.CancelScope())
            await nursery.start(sink.serve, port)
            await eventually(lambda: len(sink.messages()) >= 10, 30)
            # (The backlog read first would have put its oldest messages first.)
            assert sink.messages() == [text("A", i).encode() for i in range(sent - 10, sent)]
            assert l10_total(bytes(sink.data)) == 0
            drains = settings.data_dir / "redis-backlog" / "drains"
            assert not any(drains.rglob("*.seg"))
            nursery.cancel_scope.cancel()


async def test_a_node_that_no_longer_spills_removes_what_an_earlier_process_left(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    settings = node_settings(tmp_path, "A", redis_server, redis_drain_spill=False)
    left = settings.data_dir / "redis-backlog" / "drains" / "7"
    left.mkdir(parents=True)
    (left.parent.parent / "carried.msgpack").write_bytes(b"x")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_in, Daemon(settings), trio.CancelScope())
            assert not (settings.data_dir / "redis-backlog").exists()
            nursery.cancel_scope.cancel()


async def test_a_drain_behind_on_another_node_keeps_what_that_nodes_writer_would_trim(
    tmp_path: Path, redis_any: RedisServer | RedisCluster
) -> None:
    """Node A runs the drain, whose receiver stops reading; node B takes the input and
    writes the stream. B's writer trims at ``keep`` (512) but not past what A reported its
    drain has yet to deliver, up to READER_SLACK x keep: all 1,800 messages of 8 KB arrive,
    in order, on one connection, with no L10 (before, the stream kept 512 for it, and the
    rest of what A's ring lapped was lost)."""
    keep, sent = 512, 1800
    assert keep < sent <= READER_SLACK * keep
    stalled = StalledSink(first=4096)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            a, ports_a, token, drain = await stalled_drain(
                tmp_path, redis_any, nursery, stalled, keep
            )
            settings = dataclasses.replace(
                node_settings(tmp_path, "B", redis_any), **small_rings(keep)
            )
            b = Daemon(settings)
            ports_b = await nursery.start(serve_in, b, trio.CancelScope())
            await eventually(lambda: b.plane is not None and b.plane.failure is None, 5)
            await eventually(lambda: b.registry.channel_of_token(token) is not None, 5)
            with trio.fail_after(20):
                await send_syslog(ports_b.syslog, padded(token, "A", range(sent)))
            await eventually(lambda: drain.feed.lapped > 0, 10)
            stalled.resume.set()
            await eventually(lambda: len(stalled.messages()) >= sent, 30)
            assert stalled.messages() == [text("A", i).encode() for i in range(sent)]
            assert not L10_NOTICE.findall(bytes(stalled.data))
            assert stalled.connections == 1
            # B wrote every message; the drain ran on A, which wrote none.
            assert b.plane is not None and a.plane is not None
            assert b.plane.messages_written == sent and a.plane.messages_written == 0
            assert b.cluster_drains is not None and not b.cluster_drains.owned()
            nursery.cancel_scope.cancel()
