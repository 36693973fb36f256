"""The data plane against a real redis-server, without daemons: two nodes' planes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from logplexd.cluster import (
    FLUSH_INTERVAL,
    NEW_FOLLOW_WAIT,
    READ_BLOCK_MS,
    READER_STALE_MS,
    ClusterRegistry,
    DataPlane,
    OutboundBuffer,
    slot_of,
)
from logplexd.native import parse_body
from logplexd.router import Channel
from tests.helpers.redis import (
    RedisServer,
    ReplyLosingProxy,
    bulk_strings,
    eventually,
    needs_redis,
)

pytestmark = needs_redis


def framed(token: str, texts: list[str]) -> bytes:
    """``texts`` as octet-counted frames of ``token``."""
    raw = b""
    for text in texts:
        msg = f"<134>1 2024-01-01T00:00:00Z host {token} web.1 - - {text}".encode()
        raw += b"%d %s" % (len(msg), msg)
    return raw


def frames(token: str, texts: list[str]):
    return parse_body(framed(token, texts))


@asynccontextmanager
async def node(url: str, name: str, keep: int = 1000) -> AsyncIterator[ClusterRegistry]:
    plane = DataPlane(url, node_id=name, keep_messages=keep)
    registry = ClusterRegistry(plane, 100, 1 << 20, keep)
    registry.add_token("app", "t.app", "web")
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        await eventually(lambda: plane.failure is None, 5)
        yield registry
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def node_behind(proxy: ReplyLosingProxy, name: str) -> AsyncIterator[ClusterRegistry]:
    """``node`` whose plane reaches Redis through ``proxy`` (served meanwhile)."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        async with node(f"redis://127.0.0.1:{port}", name) as registry:
            yield registry
        nursery.cancel_scope.cancel()


def texts(batch) -> list[bytes]:
    return [batch.fields(i)["msg"] for i in range(len(batch))]


async def follow_app(registry: ClusterRegistry):
    """Follow channel "app" on ``registry``'s node from its stream's newest entry; the
    channel, the follow, and the losses its plane announces (channel, count)."""
    plane = registry.plane
    losses: list[tuple[str, int]] = []
    plane.on_loss = lambda channel, count, since: losses.append((channel, count))
    channel = registry.channel("app")
    assert channel is not None
    return channel, plane.hold(channel, await plane.top("app")), losses


class AppFlood:
    """Routes "one-0", "one-1", ... to channel "app" of ``registry``, one every 5 ms, until
    ``stop`` is set (``run``); ``routed`` counts them."""

    def __init__(self, registry: ClusterRegistry) -> None:
        self.registry = registry
        self.stop = trio.Event()
        self.routed = 0

    async def run(self) -> None:
        while not self.stop.is_set():
            self.registry.route(frames("t.app", [f"one-{self.routed}"]))
            self.routed += 1
            await trio.sleep(0.005)

    async def check_delivered_with(self, channel: Channel, other: bytes) -> None:
        """Once stopped: ``channel``'s ring ends with every message routed, in order, and
        ``other`` (another node's message) once, somewhere among them."""
        with trio.fail_after(10):
            await eventually(lambda: len(channel.ring) == self.routed + 1, 5)
        got = texts(channel.ring.last(self.routed + 1))
        assert got.count(other) == 1
        assert [t for t in got if t != other] == [f"one-{i}".encode() for i in range(self.routed)]


async def follow_channels(one: ClusterRegistry, two: ClusterRegistry, names: list[str]):
    """Channels ``names`` (token ``t.<name>``) on both nodes, each followed by node two
    from its stream's newest entry; the follows, in order."""
    for reg in (one, two):
        for name in names:
            reg.add_token(name, f"t.{name}", "web")
    follows = []
    for name in names:
        channel = two.channel(name)
        assert channel is not None
        follows.append(two.plane.hold(channel, await two.plane.top(name)))
    return follows


async def test_one_round_trip_per_flush_and_every_node_follows_every_message(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server.url, "one") as one, node(redis_server.url, "two") as two:
        with trio.fail_after(10):
            p1, p2 = one.plane, two.plane
            ch2 = two.channel("app")
            assert ch2 is not None
            follow = p2.hold(ch2, await p2.top("app"))
            # Ten routed batches before the writer runs: one round trip carries them all.
            writes = p1.trips["write"]
            for i in range(10):
                one.route(frames("t.app", [f"m{i}-{j}" for j in range(10)]))
            await eventually(lambda: p1.messages_written == 100, 5)
            assert p1.trips["write"] - writes == 1 and p1.entries_written == 1
            await eventually(lambda: len(ch2.ring) == 100, 5)
            got = texts(ch2.ring.last(100))
            assert got == [f"m{i}-{j}".encode() for i in range(10) for j in range(10)]
            # APP-NAME is the token's name, as on one node.
            assert ch2.ring.last(1).fields(0)["app"] == b"web"
            assert follow.last_seq == 100
            # History read back from the stream by a node that follows nothing.
            history, top = await p1.read_history("app", 15)
            assert texts(history) == [f"m{i}-{j}".encode() for i in (8, 9) for j in range(10)][5:]
            assert top == (100, 0)
            p2.release(follow)
            assert p2.follow_of("app") is None
            # A deleted channel's history goes with it (a new one of that name starts empty).
            key = p1.keys.stream("app")
            assert redis_server.command("EXISTS", key) == b":1\r\n"
            one.drop_channel("app")
            await eventually(lambda: redis_server.command("EXISTS", key) == b":0\r\n", 5)
            assert redis_server.command("EXISTS", p1.keys.sequence("app")) == b":0\r\n"


async def test_a_node_routing_a_trickle_takes_a_flush_at_most_every_flush_interval(
    redis_server: RedisServer,
) -> None:
    # One message every half millisecond: the writer took a flush as soon as the last one was
    # answered and a short wait was over (243-281 flushes for ~340 messages here, each
    # costing the node and Redis the same whatever it carries); now at most one per
    # FLUSH_INTERVAL, each message still written, in order.
    async with node(redis_server.url, "one") as one, node(redis_server.url, "two") as two:
        with trio.fail_after(10):
            p1 = one.plane
            ch2 = two.channel("app")
            assert ch2 is not None
            two.plane.hold(ch2, await two.plane.top("app"))
            writes = p1.trips["write"]
            started = trio.current_time()
            sent = 0
            while trio.current_time() - started < 0.3:
                one.route(frames("t.app", [f"m{sent}"]))
                sent += 1
                await trio.sleep(0.0005)
            await eventually(lambda: p1.messages_written == sent, 5)
            elapsed = trio.current_time() - started
            flushes = p1.trips["write"] - writes
            assert 1 < flushes <= elapsed / FLUSH_INTERVAL + 2, (flushes, elapsed, sent)
            await eventually(lambda: len(ch2.ring) == sent, 5)
            assert texts(ch2.ring.last(sent)) == [f"m{i}".encode() for i in range(sent)]


async def test_redis_back_without_its_data_is_followed_from_the_start(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, persistent=False)
    server.start()
    try:
        async with node(server.url, "one") as one, node(server.url, "two") as two:
            with trio.fail_after(20):
                ch2 = two.channel("app")
                assert ch2 is not None
                follow = two.plane.hold(ch2, await two.plane.top("app"))
                one.route(frames("t.app", [f"a{i}" for i in range(20)]))
                await eventually(lambda: len(ch2.ring) == 20, 5)
                server.kill()
                await eventually(lambda: two.plane.failure is not None, 5)
                server.start()  # empty: no persistence
                await eventually(lambda: one.plane.failure is None, 5)
                one.route(frames("t.app", ["after"]))
                await eventually(lambda: len(ch2.ring) == 21, 5)
                assert texts(ch2.ring.last(1)) == [b"after"] and follow.last_seq == 1
    finally:
        server.kill()


async def test_a_followed_channels_staging_ring_keeps_nothing_sent_while_redis_is_away(
    tmp_path: Path,
) -> None:
    """While Redis is away the writer cannot move, so what a followed channel sends is not
    kept in its staging ring for its follow (it would fill every channel's staging ring):
    once written it is read back from the stream, every message once and in order."""
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    try:
        async with node(server.url, "one") as one:
            with trio.fail_after(30):
                plane = one.plane
                channel, follow, losses = await follow_app(one)
                one.route(frames("t.app", ["first"]))
                await eventually(lambda: len(channel.ring) == 1, 5)
                server.command("SAVE")
                server.kill()
                await eventually(lambda: plane.failure is not None, 5)
                sent = [f"away{i}" for i in range(3000)]
                for start in range(0, len(sent), 100):
                    one.route(frames("t.app", sent[start : start + 100]))
                    await trio.lowlevel.checkpoint()
                staging = one.staging["app"]
                # In the buffer, or in the writer's hands (a write it tries meanwhile gives
                # them back when it fails).
                assert (len(plane.buffer) or plane.writer.in_flight) and len(staging) == 0
                read = plane.followers.entries_read - plane.followers.entries_own
                server.start()
                await eventually(lambda: follow.last_seq == 1 + len(sent), 15)
                # The ring (1,000 deep here) holds the newest, in order, each once.
                expected = [b"first"] + [t.encode() for t in sent]
                assert texts(channel.ring.last(1000)) == expected[-1000:] and losses == []
                assert plane.followers.entries_read - plane.followers.entries_own > read
                assert len(staging) == 0
                plane.release(follow)
    finally:
        server.kill()


async def test_scripts_forgotten_by_redis_are_loaded_again(redis_any) -> None:
    """Writes call their script by SHA1; a server that lost its script cache (restart,
    SCRIPT FLUSH, a new shard) answers NOSCRIPT and the plane loads it and writes anyway."""
    servers = getattr(redis_any, "servers", [redis_any])
    async with node(redis_any.url, "one") as one:
        with trio.fail_after(15):
            plane = one.plane
            for server in servers:
                assert server.command("SCRIPT", "FLUSH") == b"+OK\r\n"
            loads = plane.trips["other"]
            one.route(frames("t.app", [f"m{i}" for i in range(10)]))
            await eventually(lambda: plane.messages_written == 10, 5)
            assert plane.trips["other"] > loads
            history, _ = await plane.read_history("app", 10)
            assert texts(history) == [f"m{i}".encode() for i in range(10)]
            assert plane.failure is None


async def test_cluster_reader_polls_every_followed_stream_in_one_round_trip_per_shard(
    redis_cluster,
) -> None:
    """On a cluster, 30 idle followed channels cost one script call per shard and poll (the
    streams' newest ids), no read of any stream and no blocking read each; and every
    channel's messages still reach the follower."""
    from logplexd.cluster import POLL_IDLE

    names = [f"c{i}" for i in range(30)]
    async with node(redis_cluster.url, "one") as one, node(redis_cluster.url, "two") as two:
        with trio.fail_after(20):
            plane = two.plane
            follows = await follow_channels(one, two, names)
            await trio.sleep(0.2)  # the reader has started polling
            polls = plane.trips["follow"]
            calls = redis_cluster.command_calls()
            await trio.sleep(1.0)  # idle: real servers, a bounded wait
            idle = plane.trips["follow"] - polls
            after = redis_cluster.command_calls()
            # At most 3 shards per poll, one poll per POLL_IDLE (plus the one in flight).
            assert 0 < idle <= 3 * (1 / POLL_IDLE + 2)
            ran = {k: after[k] - calls.get(k, 0) for k in after if after[k] != calls.get(k, 0)}
            assert "xread" not in ran, ran
            assert 0 < ran.get("evalsha", 0) <= idle, ran
            for name in names:
                one.route(frames(f"t.{name}", [f"{name}-{i}" for i in range(5)]))
            for name, follow in zip(names, follows, strict=True):
                channel = follow.channel
                await eventually(lambda ch=channel: len(ch.ring) == 5, 5)
                assert texts(channel.ring.last(5)) == [f"{name}-{i}".encode() for i in range(5)]
            for follow in follows:
                plane.release(follow)


async def test_an_idle_cluster_poll_asks_each_shard_its_beacon_not_every_stream(
    redis_cluster,
) -> None:
    """200 idle followed channels on a 3-master cluster: a poll GETs one beacon per shard
    and the top keys of ``SWEEP_SLICE`` channels in turn, not all 200 top keys (2,000
    GETs a second at POLL_IDLE); a write still reaches the follower at the next poll."""
    from logplexd.cluster import POLL_IDLE, SWEEP_SLICE

    names = [f"b{i}" for i in range(200)]
    async with node(redis_cluster.url, "one") as one, node(redis_cluster.url, "two") as two:
        with trio.fail_after(30):
            plane = two.plane
            follows = await follow_channels(one, two, names)
            await trio.sleep(0.5)  # the reader has polled every follow to its top once
            calls = redis_cluster.command_calls()
            await trio.sleep(1.0)  # idle: real servers, a bounded wait
            after = redis_cluster.command_calls()
            ran = {k: after[k] - calls.get(k, 0) for k in after if after[k] != calls.get(k, 0)}
            polls = 1 / POLL_IDLE + 2  # at most, plus the one in flight
            assert 0 < ran.get("get", 0) <= polls * (3 + SWEEP_SLICE), ran
            assert "xread" not in ran, ran
            for name in names[::40]:
                one.route(frames(f"t.{name}", [f"{name}-late"]))
                follow = follows[names.index(name)]
                await eventually(lambda f=follow: len(f.channel.ring) == 1, 2)
                assert texts(follow.channel.ring.last(1)) == [f"{name}-late".encode()]
            for follow in follows:
                plane.release(follow)


async def test_a_write_no_beacon_told_of_is_found_by_the_sweep(redis_cluster, monkeypatch) -> None:
    """A writer whose slot map gives no beacon (as after a resharding it has not seen, or a
    node of an older version): its entries move no beacon, and the follower's sweep, a few
    follows a poll, still finds them."""
    names = [f"s{i}" for i in range(12)]
    async with node(redis_cluster.url, "one") as one, node(redis_cluster.url, "two") as two:
        with trio.fail_after(30):
            monkeypatch.setattr(one.plane.connection, "beacon", lambda node: None)
            plane = two.plane
            follows = await follow_channels(one, two, names)
            await trio.sleep(0.5)  # polled to their tops once; beacons seen
            for name in names:
                one.route(frames(f"t.{name}", [f"{name}-0", f"{name}-1"]))
            await eventually(lambda: one.plane.messages_written == 2 * len(names), 5)
            for name, follow in zip(names, follows, strict=True):
                await eventually(lambda f=follow: len(f.channel.ring) == 2, 10)
                assert texts(follow.channel.ring.last(2)) == [
                    f"{name}-{i}".encode() for i in (0, 1)
                ]
            for follow in follows:
                plane.release(follow)


async def test_read_range_gives_exact_messages_their_sequences_and_what_was_trimmed(
    redis_server: RedisServer,
) -> None:
    """The catch-up read of a drain taken over: messages after a checkpoint up to a
    sequence, each with its own sequence, and the exact count the stream no longer has."""
    async with node(redis_server.url, "one", keep=20) as one:
        with trio.fail_after(10):
            plane = one.plane
            for i in range(5):  # five entries of ten: sequences 10, 20, ..., 50
                one.route(frames("t.app", [f"m{i * 10 + j + 1}" for j in range(10)]))
                await eventually(lambda n=(i + 1) * 10: plane.messages_written == n, 5)
            # Kept: the entries ending at 40 and 50 (trimmed to the newest 20 messages by
            # whole entries: 31..50).
            got = await plane.read_range("app", 33, 45)
            assert texts(got.batch) == [f"m{s}".encode() for s in range(34, 46)]
            assert got.seqs == list(range(34, 46)) and got.lost == 0
            got = await plane.read_range("app", 5, 50)
            assert got.lost == 25  # 6..30 trimmed away
            assert got.seqs == list(range(31, 51))
            assert texts(got.batch) == [f"m{s}".encode() for s in range(31, 51)]
            got = await plane.read_range("app", 50, 60)  # not written yet: all missing
            assert (len(got.batch), got.lost) == (0, 10)


async def test_entries_no_logplexd_wrote_are_skipped_and_following_goes_on(
    redis_server: RedisServer,
) -> None:
    """The stream is shared: an entry someone else wrote (bad fields, frames that do not
    parse) must not stop a node's follower; it is skipped (counted, one warning) and bad
    frames of a well-formed entry are announced as lost."""
    async with node(redis_server.url, "one") as one, node(redis_server.url, "two") as two:
        with trio.fail_after(10):
            p1, p2 = one.plane, two.plane
            ch2, follow, losses = await follow_app(two)
            one.route(frames("t.app", [f"a{i}" for i in range(10)]))
            await eventually(lambda: len(ch2.ring) == 10, 5)
            key = p1.keys.stream("app")
            for entry_id, fields in (
                ("11-0", ("n", "abc", "f", "x")),  # n not a number
                ("12-0", ("n", "5")),  # no frames
                ("13-0", ("n", "3", "f", "garbage")),  # frames that do not parse: 3 lost
            ):
                reply = redis_server.command("XADD", key, entry_id, *fields)
                assert reply.startswith(b"$"), reply
            one.route(frames("t.app", [f"b{i}" for i in range(10)]))
            await eventually(lambda: len(ch2.ring) == 20, 5)
            assert texts(ch2.ring.last(20)) == [f"{c}{i}".encode() for c in "ab" for i in range(10)]
            assert p2.malformed_entries == 2
            assert losses == [("app", 3)]
            assert p2.failure is None
            # History read from the stream skips them too.
            history, _ = await p1.read_history("app", 20)
            assert texts(history) == [f"{c}{i}".encode() for c in "ab" for i in range(10)]
            p2.release(follow)


def test_decode_entry_accepts_what_logplexd_writes_and_nothing_else() -> None:
    from logplexd.cluster import decode_entry

    messages = (b"<134>1 - h a p - - x", b"<134>1 - h a p - - y")
    blob = b"".join(b"%d %s" % (len(m), m) for m in messages)
    body = decode_entry({b"n": b"2", b"f": blob, b"node": b"a"})
    assert body is not None and (body.n, len(body.batch), body.lost) == (2, 2, 0)
    marker = decode_entry({b"n": b"0", b"lost": b"7", b"since": b"12.5"})
    assert marker is not None and (marker.n, marker.lost, marker.since) == (0, 7, 12.5)
    odd_since = decode_entry({b"n": b"0", b"lost": b"7", b"since": b"soon"})
    assert odd_since is not None and (odd_since.lost, odd_since.since) == (7, None)
    partly = decode_entry({b"n": b"3", b"f": blob})  # one frame fewer than it says: lost
    assert partly is not None and (partly.n, len(partly.batch)) == (3, 2)
    for fields in (
        {b"n": b"x", b"f": blob},
        {b"n": b"-1", b"f": blob},
        {b"n": b"2"},
        {b"n": b"1", b"f": blob},  # more frames than it says
        {b"n": b"0", b"lost": b"many"},
    ):
        assert decode_entry(fields) is None, fields


def test_slot_of_follows_redis_cluster_keyslot() -> None:
    # Values CLUSTER KEYSLOT answers; a hash tag's content alone decides the slot.
    assert [slot_of(key) for key in ("foo", "bar", "hello")] == [12182, 5061, 866]
    assert slot_of("{user1000}.following") == slot_of("user1000")
    assert slot_of("P:{ch:app}:log") == slot_of("P:{ch:app}:drains") == slot_of("ch:app")
    # An empty tag, or none closed, is no tag: the whole key is hashed.
    assert slot_of("a{}b") != slot_of("")
    assert slot_of("{x") != slot_of("x")


def evalsha_calls(server) -> int:
    """EVALSHA calls Redis counted (``INFO commandstats``), summed over every master."""
    total = 0
    for one in getattr(server, "servers", [server]):
        for line in one.command("INFO", "commandstats").decode().splitlines():
            if line.startswith("cmdstat_evalsha:"):
                total += int(line.split("calls=")[1].split(",")[0])
    return total


async def test_one_script_call_per_shard_writes_every_channel_of_a_flush(redis_any) -> None:
    """Commands per flush do not grow with the channels: 40 channels' batches, routed
    before the writer runs, are one EVALSHA on one Redis and one per shard on a cluster."""
    names = [f"c{i}" for i in range(40)]
    shards = len(getattr(redis_any, "servers", [redis_any]))
    async with node(redis_any.url, "one") as one:
        with trio.fail_after(15):
            plane = one.plane
            for name in names:
                one.add_token(name, f"t.{name}", "web")
            calls, writes = evalsha_calls(redis_any), plane.trips["write"]
            for name in names:  # no checkpoint between: the writer is not run yet
                one.route(frames(f"t.{name}", [f"{name}-{i}" for i in range(5)]))
            await eventually(lambda: plane.messages_written == 5 * len(names), 5)
            assert plane.entries_written == len(names)
            assert evalsha_calls(redis_any) - calls == shards
            assert plane.trips["write"] - writes == shards
            for name in names:
                history, top = await plane.read_history(name, 10)
                assert texts(history) == [f"{name}-{i}".encode() for i in range(5)]
                assert top == (5, 0)


async def test_what_a_node_wrote_past_an_entry_is_found_on_every_shard(redis_any) -> None:
    """``UNANSWERED`` (what a killed process's last write had stored, ``Writer._look_past``)
    as the writer calls it, one call per shard: past each channel's first entry, this
    node's second write of 3 messages; nothing of another node's id."""
    from logplexd.cluster import UNANSWERED

    names = [f"c{i}" for i in range(12)]
    async with node(redis_any.url, "one") as one:
        with trio.fail_after(15):
            plane = one.plane
            for name in names:
                one.add_token(name, f"t.{name}", "web")
            for n, write in enumerate(("a", "b"), 1):
                for name in names:
                    one.route(frames(f"t.{name}", [f"{name}-{write}{i}" for i in range(3)]))
                await eventually(lambda n=n: plane.messages_written == 3 * n * len(names), 5)
            parts = {name: [plane.keys.stream(name), "3-0"] for name in names}
            connection = plane.connection
            for node_id, found in (("one", [3, b"6-0"]), ("two", [0, b""])):
                replies = await connection.call_per_shard(UNANSWERED, (node_id, 64), parts, "write")
                assert {name: list(reply) for name, reply in replies.items()} == dict.fromkeys(
                    names, found
                )


async def test_a_look_redis_answers_with_an_error_tells_the_whole_count(
    redis_server, monkeypatch
) -> None:
    """Should Redis answer ``UNANSWERED`` with an error (not a lost connection), the writer
    does not send it again and again, holding every write: the previous process's count is
    told whole, and writing goes on."""
    from logplexd.cluster import UNANSWERED
    from logplexd.native import RespError

    async with node(redis_server.url, "one") as one:
        with trio.fail_after(15):
            plane = one.plane
            call = plane.connection.call_per_shard

            async def refusing(script, *args, **kwargs):
                if script is UNANSWERED:
                    raise RespError("ERR refused for the test")
                return await call(script, *args, **kwargs)

            monkeypatch.setattr(plane.connection, "call_per_shard", refusing)
            plane.writer.lose("app", 5, 1.0, after=(1, 0))
            one.route(frames("t.app", ["after"]))
            await eventually(lambda: plane.messages_written == 1, 5)
            stream = redis_server.command("XRANGE", plane.keys.stream("app"), "-", "+")
            assert b"$4\r\nlost\r\n$1\r\n5\r\n" in stream and b"after" in stream


async def test_a_channel_redis_refuses_is_written_later_and_the_others_at_once(
    redis_any,
) -> None:
    """One channel of a flush whose keys Redis refuses (here its stream key holds a list:
    WRONGTYPE; on a cluster, a slot that moved) does not fail the flush: the others are
    written, its entries wait in the buffer (nothing dropped) and go once Redis takes them."""
    async with node(redis_any.url, "one") as one:
        with trio.fail_after(15):
            plane = one.plane
            for name in ("good", "bad"):
                one.add_token(name, f"t.{name}", "web")
            bad_stream = plane.keys.stream("bad")
            assert redis_any.command("RPUSH", bad_stream, "x") == b":1\r\n"
            one.route(frames("t.good", ["g0", "g1"]))
            one.route(frames("t.bad", ["b0", "b1", "b2"]))
            await eventually(lambda: plane.messages_written == 2, 5)
            history, _ = await plane.read_history("good", 10)
            assert texts(history) == [b"g0", b"g1"]
            await eventually(lambda: plane.buffer.queued.get("bad") == 3, 5)
            assert plane.buffer.dropped == 0 and plane.failure is None
            one.route(frames("t.good", ["g2"]))  # the refused channel holds nobody up
            await eventually(lambda: plane.messages_written == 3, 5)
            assert redis_any.command("DEL", bad_stream) == b":1\r\n"
            await eventually(lambda: plane.messages_written == 6, 10)
            history, top = await plane.read_history("bad", 10)
            assert texts(history) == [b"b0", b"b1", b"b2"] and top == (3, 0)


async def test_a_sequence_that_is_no_integer_refuses_its_channel_until_mended(
    redis_server: RedisServer,
) -> None:
    """``APPEND`` numbers entries from the channel's sequence key: one that holds no
    integer refuses that channel (its messages wait, none is numbered from a guess), and
    once it is mended the entries go on from it, ids counting messages."""
    async with node(redis_server.url, "one") as one:
        with trio.fail_after(15):
            plane = one.plane
            one.add_token("odd", "t.odd", "web")
            seq = plane.keys.sequence("odd")
            assert redis_server.command("SET", seq, "many") == b"+OK\r\n"
            one.route(frames("t.odd", ["o0", "o1"]))
            await eventually(lambda: plane.buffer.queued.get("odd") == 2, 5)
            assert plane.messages_written == 0 and plane.buffer.dropped == 0
            assert redis_server.command("SET", seq, "40") == b"+OK\r\n"
            await eventually(lambda: plane.messages_written == 2, 10)
            history, top = await plane.read_history("odd", 10)
            assert texts(history) == [b"o0", b"o1"] and top == (42, 0)
            assert redis_server.command("GET", seq) == b"$2\r\n42\r\n"


async def test_a_channel_this_node_wrote_last_is_written_with_its_frames_outside_lua(
    redis_any,
) -> None:
    """On one Redis, once two of the writer's writes followed each other in a channel's
    stream (nobody else writes it), it proposes the next ids and sends the frames in plain
    XADDs (``PROPOSE``): the stream is the same as ``APPEND`` makes it, ids counting
    messages, sequence and top in step, nothing left aside. A cluster keeps ``APPEND`` (a
    MULTI there is one slot)."""
    async with node(redis_any.url, "one") as one:
        with trio.fail_after(15):
            plane = one.plane
            one.route(frames("t.app", ["a0", "a1", "a2"]))
            await eventually(lambda: plane.messages_written == 3, 5)
            assert plane.writer.entries_proposed == 0  # nothing known of the stream yet
            for i in range(3):
                one.route(frames("t.app", [f"b{i}-{j}" for j in range(i + 1)]))
                total = 3 + (i + 1) * (i + 2) // 2
                await eventually(lambda n=total: plane.messages_written == n, 5)
            history, top = await plane.read_history("app", 100)
            later = [b"b0-0", b"b1-0", b"b1-1", b"b2-0", b"b2-1", b"b2-2"]
            assert texts(history) == [b"a0", b"a1", b"a2", *later]
            assert top == (9, 0)
            if isinstance(redis_any, RedisServer):
                assert plane.writer.entries_proposed == 2  # b1 and b2: b0 showed "solo"
                keys = plane.keys
                assert redis_any.command("GET", keys.sequence("app")) == b"$1\r\n9\r\n"
                assert redis_any.command("GET", keys.top("app")) == b"$3\r\n9-0\r\n"
                assert redis_any.command("EXISTS", keys.fence("app")) == b":0\r\n"
                assert redis_any.command("EXISTS", keys.fenced("one")) == b":0\r\n"
            else:
                assert plane.writer.entries_proposed == 0


async def test_a_proposal_after_another_node_wrote_is_fenced_and_written_by_append(
    redis_server: RedisServer,
) -> None:
    """Node one proposes ids from its last write, but node two wrote the channel since:
    ``PROPOSE`` refuses, the stream is moved aside for the rest of the MULTI so that the
    XADDs add nothing, and put back; the entries go again with ``APPEND``, after two's,
    each message once, and one keeps using ``APPEND`` on that channel for a while."""
    async with node(redis_server.url, "one") as one, node(redis_server.url, "two") as two:
        with trio.fail_after(15):
            p1, p2 = one.plane, two.plane
            one.route(frames("t.app", ["a0"]))
            await eventually(lambda: p1.messages_written == 1, 5)
            one.route(frames("t.app", ["a1"]))  # right after its own: one may propose
            await eventually(lambda: p1.messages_written == 2, 5)
            two.route(frames("t.app", ["b0"]))
            await eventually(lambda: p2.messages_written == 1, 5)
            # Proposed as 5-0, above two's 3-0: only the fence keeps the XADD from adding it.
            one.route(frames("t.app", ["a2", "a3", "a4"]))
            await eventually(lambda: p1.messages_written == 5, 5)
            assert p1.writer.proposals_moved == 1 and p1.writer.entries_proposed == 0
            one.route(frames("t.app", ["a5"]))
            await eventually(lambda: p1.messages_written == 6, 5)
            assert p1.writer.entries_proposed == 0  # shared lately: APPEND
            history, top = await p1.read_history("app", 100)
            assert texts(history) == [b"a0", b"a1", b"b0", b"a2", b"a3", b"a4", b"a5"]
            assert top == (7, 0)
            keys = p1.keys
            assert redis_server.command("GET", keys.sequence("app")) == b"$1\r\n7\r\n"
            assert redis_server.command("EXISTS", keys.fence("app")) == b":0\r\n"
            assert redis_server.command("EXISTS", keys.fenced("one")) == b":0\r\n"


def mixed(texts_by_token: dict[str, list[str]]):
    """One routed body holding, token after token, ``frames``' messages of each."""
    return parse_body(b"".join(framed(token, lines) for token, lines in texts_by_token.items()))


GROUPED = ["app", "b", "c", "d"]


async def proposed_channels(one: ClusterRegistry) -> dict[str, object]:
    """Channels ``GROUPED`` on ``one``, followed, each written twice in a row by it (so
    that its next write is proposed for, in a MULTI); their rings by name."""
    plane = one.plane
    rings = {}
    for name in GROUPED[1:]:
        one.add_token(name, f"t.{name}", "web")
    for name in GROUPED:
        channel = one.channel(name)
        assert channel is not None
        plane.hold(channel, await plane.top(name))
        rings[name] = channel.ring
    for k in range(2):
        one.route(mixed({f"t.{name}": [f"{name}{k}"] for name in GROUPED}))
        written = (k + 1) * len(GROUPED)
        await eventually(lambda n=written: plane.messages_written == n, 5)
    return rings


async def assert_grouped_once(one: ClusterRegistry, rings: dict[str, object]) -> None:
    """Each channel of ``GROUPED`` holds its five messages once, in order, in its stream
    and in its follow's ring."""
    plane = one.plane
    for name in GROUPED:
        sent = [f"{name}{k}".encode() for k in range(5)]
        history, top = await plane.read_history(name, 100)
        assert texts(history) == sent and top == (5, 0)
        await eventually(lambda ring=rings[name]: len(ring) == 5, 5)
        assert texts(rings[name].last(100)) == sent


async def test_a_flush_is_written_as_one_request_of_several_transactions(
    redis_server: RedisServer,
) -> None:
    """On one Redis a flush goes as one request of MULTIs, each of about the writer's
    ``group_bytes`` of frames and each channel whole in one: with a group per channel, one
    EXEC per channel, one round trip, and every message once in its stream and ring."""
    async with node(redis_server.url, "one") as one:
        with trio.fail_after(20):
            plane = one.plane
            rings = await proposed_channels(one)
            before = redis_server.command_calls().get("exec", 0)
            trips = plane.connection.trips["write"]
            plane.writer.group_bytes = 1
            one.route(mixed({f"t.{name}": [f"{name}{k}" for k in (2, 3, 4)] for name in GROUPED}))
            await eventually(lambda: plane.messages_written == 5 * len(GROUPED), 5)
            assert redis_server.command_calls()["exec"] - before == len(GROUPED)
            assert plane.connection.trips["write"] - trips == 1
            assert plane.writer.entries_proposed == len(GROUPED)
            await assert_grouped_once(one, rings)


async def test_a_flush_cut_after_its_first_transaction_sends_only_the_rest_again(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection is cut once the first MULTI of a flush was answered and the second
    ran: the first group's channel was settled from its answer and is not sent again; the
    rest is sent again and found written (``LANDED``) where it ran. Every message is in its
    stream and ring once."""
    proxy = ReplyLosingProxy(redis_server.port)
    async with node_behind(proxy, "one") as one:
        with trio.fail_after(20):
            plane = one.plane
            rings = await proposed_channels(one)
            plane.writer.group_bytes = 1
            proxy.lose_next(after=1)
            one.route(mixed({f"t.{name}": [f"{name}{k}" for k in (2, 3, 4)] for name in GROUPED}))
            await eventually(lambda: proxy.lost == 1, 5)
            await eventually(lambda: plane.messages_written == 5 * len(GROUPED), 15)
            landed = {
                record.args[1]
                for record in caplog.records
                if isinstance(record.args, tuple) and "reply was lost" in record.msg
            }
            # At least the second group ran before the cut; the first was not sent again.
            assert 1 <= len(landed) <= len(GROUPED) - 1
            assert plane.writer.entries_landed == len(landed)
            await assert_grouped_once(one, rings)


@pytest.mark.parametrize("script", ["PROPOSE", "APPEND"])
async def test_a_write_whose_reply_was_lost_is_not_written_twice(
    redis_server: RedisServer, script: str
) -> None:
    """The connection is cut after Redis ran a write and before its reply came back: the
    writer sends the flush again, grouped the same, and finds those entries already there,
    written by this node right after the sequence its last write ended at. ``PROPOSE``: a
    channel written twice in a row goes in a MULTI; ``APPEND``: its second write (and every
    write on a cluster). Each message is in the stream, and in the follow's ring, once."""
    from logplexd.cluster import APPEND

    before = ["a0", "a1"] if script == "PROPOSE" else ["a0"]  # two in a row: "solo"
    proxy = ReplyLosingProxy(
        redis_server.port, marker=b"EXEC\r\n" if script == "PROPOSE" else APPEND.sha.encode()
    )
    async with node_behind(proxy, "one") as one:
        with trio.fail_after(20):
            plane = one.plane
            channel, follow, losses = await follow_app(one)
            for n, text in enumerate(before, 1):
                one.route(frames("t.app", [text]))
                await eventually(lambda n=n: plane.messages_written == n, 5)
            proxy.lose_next()
            one.route(frames("t.app", ["b0", "b1", "b2"]))
            await eventually(lambda: proxy.lost == 1, 5)
            total = len(before) + 3
            await eventually(lambda: plane.messages_written == total, 15)
            # The flush was one entry: found in the stream, not written again.
            assert plane.writer.entries_landed == 1
            if script == "APPEND":
                assert plane.writer.entries_proposed == 0
            sent = [t.encode() for t in [*before, "b0", "b1", "b2"]]
            history, top = await plane.read_history("app", 100)
            assert texts(history) == sent and top == (total, 0)
            await eventually(lambda: len(channel.ring) == total, 5)
            assert texts(channel.ring.last(100)) == sent and losses == []
            keys = plane.keys
            assert redis_server.command("GET", keys.sequence("app")) == b"$1\r\n%d\r\n" % total
            assert redis_server.command("EXISTS", keys.fence("app")) == b":0\r\n"
            plane.release(follow)


async def test_a_channel_two_nodes_take_turns_on_is_never_proposed_for(
    redis_server: RedisServer,
) -> None:
    """Nodes that take turns writing a channel never propose for it (each would be refused
    and its entries sent twice): a node proposes only after two of its writes followed each
    other in the stream, and APPEND's replies tell it when they do not."""
    async with node(redis_server.url, "one") as one, node(redis_server.url, "two") as two:
        with trio.fail_after(15):
            p1, p2 = one.plane, two.plane
            for i in range(6):
                one.route(frames("t.app", [f"a{i}"]))
                await eventually(lambda n=i + 1: p1.messages_written == n, 5)
                two.route(frames("t.app", [f"b{i}"]))
                await eventually(lambda n=i + 1: p2.messages_written == n, 5)
            for plane in (p1, p2):
                assert plane.writer.entries_proposed == plane.writer.proposals_moved == 0
            history, top = await p1.read_history("app", 100)
            assert texts(history) == [t.encode() for i in range(6) for t in (f"a{i}", f"b{i}")]
            assert top == (12, 0)


async def test_a_proposal_for_a_stream_that_is_gone_goes_by_append(
    redis_server: RedisServer,
) -> None:
    """A stream deleted behind the writer's back (its sequence kept) is not recreated by
    the plain XADDs (NOMKSTREAM): ``PROPOSE`` answers 'missing' and ``APPEND`` writes the
    entries, numbered after the sequence."""
    async with node(redis_server.url, "one") as one:
        with trio.fail_after(15):
            plane = one.plane
            one.route(frames("t.app", ["a0"]))
            await eventually(lambda: plane.messages_written == 1, 5)
            one.route(frames("t.app", ["a1"]))
            await eventually(lambda: plane.messages_written == 2, 5)
            assert redis_server.command("DEL", plane.keys.stream("app")) == b":1\r\n"
            one.route(frames("t.app", ["a2"]))
            await eventually(lambda: plane.messages_written == 3, 5)
            assert plane.writer.proposals_moved == 1
            history, top = await plane.read_history("app", 100)
            assert texts(history) == [b"a2"] and top == (3, 0)


def test_a_writer_is_held_back_by_other_readers_not_by_its_own_old_report(
    redis_server: RedisServer,
) -> None:
    """``APPEND`` and ``PROPOSE`` answer 'behind' once an entry would put a reader more
    than READER_SLACK x keep behind: another node's fresh report counts, a stale one does
    not, and the calling node's own report gives way to the position it passes along (its
    report is up to a report interval older: taken instead, it held a node back on itself)."""
    from logplexd.cluster import APPEND, PROPOSE, READER_STALE_MS, SETTLE, Keys

    keys = Keys()
    stream, seq, top, readers = keys.appended("app")
    for args in (("XADD", stream, "100-0", "n", "100", "f", "x"), ("SET", seq, "100"),
                 ("SET", top, "100-0")):  # fmt: skip
        redis_server.command(*args)
    seconds, micros = (int(v) for v in bulk_strings(redis_server.command("TIME")))
    now = seconds * 1000 + micros // 1000

    def report(node: str, position: int, age_ms: int = 0) -> None:
        redis_server.command("HSET", readers, node, f"{position}:{now - age_ms}")

    def answers(n: int) -> tuple[bytes, bytes]:
        """What APPEND and PROPOSE say to an entry of ``n`` messages from node "one", whose
        follow has read through 100 (keep 10: a reader may be 40 behind)."""
        appended = redis_server.command(
            "EVAL", APPEND.text, "0", "10", "one", "", "1", stream, seq, top, readers, "100",
            "-1", "-1", "1", str(n), "x" * n, "0", "0.0",
        )  # fmt: skip
        if b"ok" in appended:  # written: undone, so that both see the same stream
            last = 100 + n
            redis_server.command("XDEL", stream, f"{last}-0")
            redis_server.command("SET", seq, "100")
            redis_server.command("SET", top, "100-0")
        proposed = redis_server.command(
            "EVAL", PROPOSE.text, "0", "10", "one", keys.fenced("one"), "1", stream, seq, top,
            readers, keys.fence("app"), "100", "-1", "100", "1", str(n),
        )  # fmt: skip
        # Outside a MULTI here: what SETTLE would do after the XADDs (none sent).
        redis_server.command("EVAL", SETTLE.text, "0", keys.fenced("one"))
        if b"ok" in proposed:
            redis_server.command("SET", seq, "100")
            redis_server.command("SET", top, "100-0")
        return (b"behind" if b"behind" in appended else b"ok"), (
            b"behind" if b"behind" in proposed else b"ok"
        )

    report("one", 0)  # its own report, older than what it passes along
    assert answers(40) == (b"ok", b"ok")
    report("two", 0, age_ms=READER_STALE_MS + 1000)  # stale: two stopped reporting
    assert answers(40) == (b"ok", b"ok")
    report("two", 70)  # fresh: two has read through 70
    assert answers(10) == (b"ok", b"ok")
    assert answers(11) == (b"behind", b"behind")


@pytest.mark.parametrize("script", ["APPEND", "PROPOSE"])
def test_a_drains_delivered_position_keeps_the_stream_up_to_reader_slack_keeps_behind(
    redis_server: RedisServer, script: str
) -> None:
    """Writers trim the stream at ``keep`` messages but not past what a drain has yet to
    deliver: the calling node's own drains (the position it passes along) and other nodes'
    (their ``<node>/drains`` reports of the last DRAIN_STALE_MS), by at most READER_SLACK x
    keep behind the newest message. A drain never makes a writer wait ('ok' however far
    behind it is), a stale report keeps nothing, and the calling node's own report gives
    way to what it passes along."""
    from logplexd.cluster import APPEND, DRAIN_STALE_MS, PROPOSE, READER_SLACK, SETTLE, Keys

    keys = Keys()
    stream, seq, top, readers = keys.appended("app")
    keep = 10
    assert READER_SLACK * keep == 40
    seconds, micros = (int(v) for v in bulk_strings(redis_server.command("TIME")))
    now = seconds * 1000 + micros // 1000

    def oldest_after_write(kept: int, reports: dict[str, tuple[int, int]]) -> tuple[bytes, int]:
        """A stream of messages 1 to 100 (one an entry), ``reports`` (node: delivered
        position, age in ms) in its readers key; node "one" writes an entry of 5 (the
        newest message is then 105) with its own drains at ``kept``: its answer, and the
        sequence of the oldest message left."""
        for key in (stream, seq, top, readers):
            redis_server.command("DEL", key)
        redis_server.command(
            "EVAL",
            "for s = 1, 100 do redis.call('XADD', KEYS[1], s .. '-0', 'n', 1, 'f', 'x') end",
            "1",
            stream,
        )
        redis_server.command("SET", seq, "100")
        redis_server.command("SET", top, "100-0")
        for node, (position, age) in reports.items():
            redis_server.command("HSET", readers, f"{node}/drains", f"d{position}:{now - age}")
        if script == "APPEND":
            reply = redis_server.command(
                "EVAL", APPEND.text, "0", str(keep), "one", "", "1", stream, seq, top, readers,
                "-1", str(kept), "100", "1", "5", "x" * 5, "0", "0.0",
            )  # fmt: skip
        else:
            # PROPOSE trims; the XADD it checks for would follow in the MULTI (not needed).
            reply = redis_server.command(
                "EVAL", PROPOSE.text, "0", str(keep), "one", keys.fenced("one"), "1", stream,
                seq, top, readers, keys.fence("app"), "-1", str(kept), "100", "1", "5",
            )  # fmt: skip
            redis_server.command("EVAL", SETTLE.text, "0", keys.fenced("one"))
        status = b"ok" if b"$2\r\nok" in reply else reply
        oldest = bulk_strings(redis_server.command("XRANGE", stream, "-", "+", "COUNT", "1"))[0]
        return status, int(oldest.split(b"-")[0])

    # A drain's report counts longer than a reader's (a caught-up drain is not reported
    # again on a quiet channel), but not for ever.
    assert DRAIN_STALE_MS > READER_STALE_MS
    assert oldest_after_write(-1, {"two": (70, READER_STALE_MS + 1000)}) == (b"ok", 71)
    stale = DRAIN_STALE_MS + 1000
    # keep alone: the newest 10 of 105 (96 on; 101-105 are the entry PROPOSE checked).
    assert oldest_after_write(-1, {}) == (b"ok", 96)
    # This node's drain delivered through 75: kept from 76 on; through 90: 91.
    assert oldest_after_write(75, {}) == (b"ok", 76)
    assert oldest_after_write(90, {}) == (b"ok", 91)
    # Through 20, 85 behind: kept only 40 behind the newest (66 on), and no wait.
    assert oldest_after_write(20, {}) == (b"ok", 66)
    # Another node's drain, reported fresh: through 70, kept from 71; with this node's at 90
    # too, the slowest counts.
    assert oldest_after_write(-1, {"two": (70, 0)}) == (b"ok", 71)
    assert oldest_after_write(90, {"two": (70, 0)}) == (b"ok", 71)
    # A stale report keeps nothing; nor does this node's own (it passed along -1: none).
    assert oldest_after_write(-1, {"two": (70, stale)}) == (b"ok", 96)
    assert oldest_after_write(-1, {"one": (70, 0)}) == (b"ok", 96)


async def test_a_node_reports_its_slowest_drains_delivered_position_and_lets_it_go_stale(
    redis_server: RedisServer,
) -> None:
    """A node reports, beside how far it has read a followed stream, how far its slowest
    drain of it has delivered (``<node>/drains``, in a form an older node's floor passes
    over), and passes it along with its writes. Once it runs no drain there, or stops
    following the channel, it reports the drains no more (the field goes stale,
    ``DRAIN_STALE_MS``: a drain that stopped there resumes elsewhere from its checkpoint);
    its reader's field is deleted with the follow."""
    from logplexd.cluster import Keys

    async with node(redis_server.url, "one", keep=80) as one:
        with trio.fail_after(10):
            plane = one.plane
            channel, follow, _ = await follow_app(one)
            readers = Keys().readers("app")

            def fields() -> dict[bytes, bytes]:
                values = bulk_strings(redis_server.command("HGETALL", readers))
                return dict(zip(values[::2], values[1::2], strict=True))

            one.route(frames("t.app", [f"m{i}" for i in range(30)]))
            await eventually(lambda: follow.last_seq == 30, 5)
            assert plane.writer.delivered_through("app") is None
            plane.note_delivered(follow, 12)  # a drain began here
            assert plane.writer.delivered_through("app") == 12
            await eventually(lambda: b"one/drains" in fields(), 5)
            assert fields()[b"one/drains"].startswith(b"d12:")
            assert fields()[b"one"].startswith(b"30:")
            # One that moves by report_step (keep / 8 = 10) or more goes at the next report.
            plane.note_delivered(follow, 25)
            await eventually(lambda: fields()[b"one/drains"].startswith(b"d25:"), 5)
            # Runs no drain there: not reported again, however far the stream moves.
            plane.note_delivered(follow, -1)
            assert plane.writer.delivered_through("app") is None
            one.route(frames("t.app", [f"n{i}" for i in range(30)]))
            await eventually(lambda: fields()[b"one"].startswith(b"60:"), 5)
            assert fields()[b"one/drains"].startswith(b"d25:")
            # Runs one again: reported at once.
            plane.note_delivered(follow, 50)
            await eventually(lambda: fields()[b"one/drains"].startswith(b"d50:"), 5)
            plane.release(follow)
            await eventually(lambda: b"one" not in fields(), 5)
            assert fields()[b"one/drains"].startswith(b"d50:")
            assert channel is not None


async def test_own_entries_reach_the_follow_from_the_writer_in_stream_order(
    redis_any,
) -> None:
    """A node following a channel it writes appends its own entries as the writer wrote
    them, not read back from Redis; entries of another node between them (a loss marker
    too) are read from the stream, so the ring is the stream, in order, exactly once."""
    async with node(redis_any.url, "one") as one, node(redis_any.url, "two") as two:
        with trio.fail_after(15):
            p1, p2 = one.plane, two.plane
            ch1, follow, losses = await follow_app(one)
            one.route(frames("t.app", ["first"]))  # the stream's first entry: after "0-0"
            await eventually(lambda: len(ch1.ring) == 1, 5)
            read_back = p1.followers.entries_read - p1.followers.entries_own
            assert read_back == 0
            for i in range(10):
                one.route(frames("t.app", [f"a{i}-{j}" for j in range(3)]))
                await eventually(lambda n=1 + 3 * (i + 1): len(ch1.ring) == n, 5)
            # Read back from Redis: at most the first two, by a read already out when the
            # writer's write landed (later ones are left out while the writer writes).
            assert p1.followers.entries_read - p1.followers.entries_own - read_back <= 2
            assert p1.followers.entries_own >= 8
            # Another node's entries, and its loss marker, come between two of ours.
            two.route(frames("t.app", ["two-0", "two-1"]))
            await eventually(lambda: p2.messages_written == 2, 5)
            p2.lose("app", 7)
            await eventually(lambda: not p2.buffer, 5)
            one.route(frames("t.app", ["b0", "b1"]))
            await eventually(lambda: len(ch1.ring) == 35, 5)
            await eventually(lambda: losses == [("app", 7)], 5)
            history, top = await p1.read_history("app", 100)
            assert texts(ch1.ring.last(100)) == texts(history)
            assert texts(history)[-4:] == [b"two-0", b"two-1", b"b0", b"b1"]
            assert follow.last == top and follow.last_seq == 35
            # Positions map to stream sequences as when read back (drain checkpoints).
            assert follow.seq_at(int(ch1.ring.head)) == 35
            assert follow.seq_at(int(ch1.ring.head) - 4) == 31
            p1.release(follow)


async def test_own_entries_a_read_finds_before_the_writers_reply_come_from_the_writer(
    redis_server: RedisServer,
) -> None:
    """Redis answers a follower's XREAD as soon as a write lands, and the writer reads its
    own reply later (here 0.3 s later): the follow leaves those entries to the writer's
    reply, which appends them from memory, instead of parsing them back from the stream;
    then it reads on. Stream order and sequence positions are as if read back. Once the
    channel is solo its polls leave it out while the writer writes it: they do not carry
    the entries at all."""
    proxy = ReplyLosingProxy(redis_server.port)
    proxy.slow_replies((b"EVALSHA", b"EXEC\r\n"), 0.3)
    async with node_behind(proxy, "one") as one:
        with trio.fail_after(20):
            plane = one.plane
            channel, follow, losses = await follow_app(one)
            sent: list[bytes] = []
            for i in range(6):
                sent += [f"m{i}-{j}".encode() for j in range(i + 1)]
                one.route(frames("t.app", [t.decode() for t in sent[-(i + 1) :]]))
                total = len(sent)
                await eventually(lambda n=total: len(channel.ring) == n, 5)
            assert proxy.slowed >= 6
            # The first entry: the blocking read found it first and left it to the
            # writer. The next five: each write is in flight through three polls of the
            # solo channel (every 0.1 s), which leave the channel out. (One may slip
            # through: a poll sent a moment before the writer's MULTI, which the proxy
            # forwards first; reading them all cost a node with 1,000 channels up to a
            # third of its messages read back.)
            assert plane.followers.entries_own == plane.followers.entries_read == 6
            assert b"m0-0" in proxy.read_replies and 1 <= plane.followers.entries_early <= 2
            entries = [sent[i * (i + 1) // 2 : (i + 1) * (i + 2) // 2] for i in range(6)]
            read_back = [e for e in entries[1:] if any(t in proxy.read_replies for t in e)]
            assert len(read_back) <= 1, read_back
            history, top = await plane.read_history("app", 100)
            assert texts(channel.ring.last(100)) == texts(history) == sent
            assert follow.last == top and follow.seq_at(int(channel.ring.head)) == 21
            assert losses == []
            plane.release(follow)


async def test_a_write_answered_wakes_its_follow_to_read_another_nodes_entry(
    redis_server: RedisServer,
) -> None:
    """While its writer writes a channel a follow is left out of the reads (for at most
    ``CALL_TIMEOUT``, 5 s); the reply ends that at once: an entry another node writes right
    after is read within a poll's time, not when the 5 s have run out."""
    proxy = ReplyLosingProxy(redis_server.port)
    proxy.slow_replies((b"EVALSHA", b"EXEC\r\n"), 0.3)
    async with node_behind(proxy, "one") as one, node(redis_server.url, "two") as two:
        channel, follow, losses = await follow_app(one)
        with trio.fail_after(10):
            for i in range(3):
                one.route(frames("t.app", [f"one-{i}"]))
                await eventually(lambda n=i + 1: len(channel.ring) == n, 5)
        assert proxy.slowed >= 3
        two.route(frames("t.app", ["two"]))
        # At most two polls' time: the poll right after this node's last write leaves the
        # channel out (``POLL_IDLE``, 0.1 s, plus the slowed reply, 0.3 s).
        with trio.fail_after(2.5):
            await eventually(lambda: len(channel.ring) == 4, 2.5)
        assert texts(channel.ring.last(4)) == [b"one-0", b"one-1", b"one-2", b"two"]
        assert losses == []
        one.plane.release(follow)


async def test_a_channel_written_flush_after_flush_still_reads_another_nodes_entries(
    redis_server: RedisServer,
) -> None:
    """A follow is left out of the reads while its writer writes the channel only when it
    has all of its own entries: one whose writer's reply showed another node's entry in
    between reads it at once, even while this node writes the channel without a pause."""
    proxy = ReplyLosingProxy(redis_server.port)
    proxy.slow_replies((b"EVALSHA", b"EXEC\r\n"), 0.05)
    async with node_behind(proxy, "one") as one, node(redis_server.url, "two") as two:
        channel, follow, losses = await follow_app(one)
        flood = AppFlood(one)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood.run)
            with trio.fail_after(10):
                await eventually(lambda: len(channel.ring) >= 20, 5)
                two.route(frames("t.app", ["two"]))
                await eventually(lambda: b"two" in texts(channel.ring.last(1000)), 3)
            assert flood.routed > len(channel.ring) - 1
            flood.stop.set()
        await flood.check_delivered_with(channel, b"two")
        assert losses == []
        one.plane.release(follow)


async def test_polls_leave_out_a_solo_channel_this_node_wrote_since_the_last_poll(
    redis_server: RedisServer,
) -> None:
    """A followed channel only this node writes is "solo": read without blocking every
    ``POLL_IDLE`` in case another node writes it too. While this node writes it flush after
    flush those polls leave its stream out (the next write's reply would show another
    node's entry in between) and read the other followed streams only; another node's
    entry still reaches the follow, in the stream's order, while the writes go on."""
    proxy = ReplyLosingProxy(redis_server.port)
    async with node_behind(proxy, "one") as one, node(redis_server.url, "two") as two:
        channel, follow, losses = await follow_app(one)
        one.add_token("quiet", "t.quiet", "web")
        quiet = one.channel("quiet")
        assert quiet is not None
        quiet_follow = one.plane.hold(quiet, await one.plane.top("quiet"))
        app_key = one.plane.keys.stream("app").encode()
        quiet_key = one.plane.keys.stream("quiet").encode()
        flood = AppFlood(one)

        def polls() -> list[bytes]:
            # The reads without BLOCK: the polls of the solo follows.
            return [r for r in proxy.read_requests if b"XREAD" in r and b"BLOCK" not in r]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood.run)
            with trio.fail_after(10):
                await eventually(lambda: len(channel.ring) >= 20, 5)
                before = len(polls())
                await eventually(lambda: len(polls()) >= before + 5, 5)
                recent = polls()[before:]
                assert all(quiet_key in r for r in recent)
                # A poll may still carry it right after a write's reply was late.
                assert sum(app_key in r for r in recent) <= 1, recent
                two.route(frames("t.app", ["two"]))
                await eventually(lambda: b"two" in texts(channel.ring.last(1000)), 3)
            flood.stop.set()
        await flood.check_delivered_with(channel, b"two")
        assert losses == []
        one.plane.release(follow)
        one.plane.release(quiet_follow)


async def test_a_followed_channels_first_write_is_appended_from_memory_whatever_its_size(
    redis_server: RedisServer,
) -> None:
    """Before the channel's own ring holds anything its staging ring is its local history
    (the newest ``history_messages``, 100 here), and it also keeps what the follow has yet
    to append: a first write of 300 messages is not read back from the stream."""
    async with node(redis_server.url, "one") as one:
        with trio.fail_after(15):
            plane = one.plane
            channel, follow, losses = await follow_app(one)
            sent = [f"m{i}" for i in range(300)]
            one.route(frames("t.app", sent))
            await eventually(lambda: len(channel.ring) == len(sent), 5)
            assert plane.followers.entries_read == plane.followers.entries_own >= 1
            assert texts(channel.ring.last(300)) == [t.encode() for t in sent] and losses == []
            assert len(one.staging["app"]) == 0
            plane.release(follow)


async def test_own_entries_whose_staging_ring_lapped_them_are_read_back_whole(
    redis_server: RedisServer,
) -> None:
    """Own entries are appended from where routing put them (the staging ring) once
    written; written while the channel is held for longer than that ring holds (4 MiB
    here, where the stream keeps 80,000 messages behind the follow), the oldest are no
    longer there: they are read back from the stream instead, with what waited behind
    them, every message once and in order, nothing lost, and the staging ring lets go of
    all."""
    async with node(redis_server.url, "one", keep=20_000) as one:
        with trio.fail_after(30):
            plane = one.plane
            channel, follow, losses = await follow_app(one)
            one.route(frames("t.app", ["first"]))
            await eventually(lambda: len(channel.ring) == 1, 5)
            consumer = object()
            channel.hold(consumer)
            # ~75 bytes a message: 70,000 fill more than the staging ring's 4 MiB.
            sent = [f"h{i}-{'x' * 30}" for i in range(70_000)]
            for start in range(0, len(sent), 1000):
                one.route(frames("t.app", sent[start : start + 1000]), until_held=False)
                await trio.lowlevel.checkpoint()
            await eventually(lambda: plane.messages_written == 1 + len(sent), 10)
            staging = one.staging["app"]
            assert len(channel.ring) == 1 and follow.waiting
            assert staging.tail > 1  # it lapped the oldest of what waits
            own, read = plane.followers.entries_own, plane.followers.entries_read
            channel.release(consumer)
            await eventually(lambda: follow.last_seq == 1 + len(sent), 10)
            # Read back, with what waited behind them (the follow reads on from there).
            assert plane.followers.entries_read > read and plane.followers.entries_own == own
            # The ring holds the newest (its 1 MB), in stream order, each once.
            held = len(channel.ring)
            history, top = await plane.read_history("app", held)
            expected = [t.encode() for t in sent[-held:]]
            assert held > 10_000 and texts(channel.ring.last(held)) == texts(history) == expected
            assert follow.last == top and losses == []
            assert not follow.waiting and plane.followers.waiting_bytes == 0
            assert len(staging) == 0
            plane.release(follow)


async def test_own_entries_written_while_held_wait_and_follow_once_released(
    redis_server: RedisServer,
) -> None:
    """Written while a consumer holds the channel, the node's own entries wait in memory
    and reach the ring in order once it is released, without being read back."""
    async with node(redis_server.url, "one") as one:
        with trio.fail_after(15):
            plane = one.plane
            ch = one.channel("app")
            assert ch is not None
            follow = plane.hold(ch, await plane.top("app"))
            one.route(frames("t.app", ["first"]))
            await eventually(lambda: len(ch.ring) == 1, 5)
            consumer = object()
            ch.hold(consumer)
            for i in range(5):
                one.route(frames("t.app", [f"h{i}"]), until_held=False)
                await eventually(lambda n=i + 2: plane.messages_written == n, 5)
            assert len(ch.ring) == 1 and len(follow.waiting) == 5
            assert plane.followers.waiting_bytes > 0
            own = plane.followers.entries_own
            ch.release(consumer)
            await eventually(lambda: len(ch.ring) == 6, 5)
            assert texts(ch.ring.last(6)) == [b"first"] + [f"h{i}".encode() for i in range(5)]
            assert plane.followers.entries_own - own == 5
            assert not follow.waiting and plane.followers.waiting_bytes == 0
            plane.release(follow)


@pytest.mark.parametrize("held_names", [["app"], ["app", "c"]])
async def test_a_channel_followed_while_the_others_are_held_is_read_at_once(
    redis_server: RedisServer, held_names: list[str]
) -> None:
    """A reader waiting for its followed channels' release (one: in its own task; more: a
    task each) takes a follow added meanwhile: another node's messages reach the new
    channel's ring while the others stay held."""
    async with node(redis_server.url, "one") as one, node(redis_server.url, "two") as two:
        for reg in (one, two):
            reg.add_token("b", "t.b", "web")
            reg.add_token("c", "t.c", "web")
        with trio.fail_after(15):
            plane = one.plane
            consumer = object()
            held = []
            for name in held_names:
                channel = one.channel(name)
                assert channel is not None
                held.append((channel, plane.hold(channel, await plane.top(name))))
                channel.hold(consumer)
            # The reader waits for them to be released (nothing else to read).
            await eventually(lambda: plane.followers.waiting_for_release == 1, 5)
            added = one.channel("b")
            assert added is not None
            added_follow = plane.hold(added, await plane.top("b"))
            two.route(frames("t.b", ["to b"]))
            await eventually(lambda: len(added.ring) == 1, 5)
            assert texts(added.ring.last(1)) == [b"to b"]
            two.route(frames("t.app", ["to app"]))
            await eventually(lambda: two.plane.messages_written == 2, 5)
            assert len(held[0][0].ring) == 0  # held: read once released
            for channel, _ in held:
                channel.release(consumer)
            await eventually(lambda: len(held[0][0].ring) == 1, 5)
            for _, follow in held:
                plane.release(follow)
            plane.release(added_follow)


async def test_channels_followed_while_the_reader_blocks_are_read_without_waiting_out_the_block(
    redis_server: RedisServer,
) -> None:
    """One Redis: idle, the blocking read names every followed stream and waits
    READ_BLOCK_MS; a follow it does not name ends it early (``CLIENT UNBLOCK``) once it has
    waited NEW_FOLLOW_WAIT, so another node's messages reach new channels long before the
    block would run out, and twenty follows added together end it once."""
    names = [f"b{i}" for i in range(20)]
    async with node(redis_server.url, "one") as one, node(redis_server.url, "two") as two:
        for reg in (one, two):
            for name in names:
                reg.add_token(name, f"t.{name}", "web")
        plane = one.plane
        with trio.fail_after(15):
            channel, _, _ = await follow_app(one)
            await eventually(lambda: plane.followers.blocking_read, 5)
            # A read that has just begun: it would wait READ_BLOCK_MS.
            before = plane.followers.reads
            await eventually(lambda: plane.followers.reads > before, READ_BLOCK_MS / 1000 + 5)
            await eventually(lambda: plane.followers.blocking_read, 5)
            unblocks = redis_server.command_calls().get("client|unblock", 0)
            tops = {name: await plane.top(name) for name in names}
        added = []
        for name in names:
            ch = one.channel(name)
            assert ch is not None
            added.append(ch)
            plane.hold(ch, tops[name])
        for name in names:
            two.route(frames(f"t.{name}", [f"to {name}"]))
        with trio.fail_after(NEW_FOLLOW_WAIT + (READ_BLOCK_MS / 1000 - NEW_FOLLOW_WAIT) / 2):
            await eventually(lambda: all(len(ch.ring) == 1 for ch in added), 5)
        assert [texts(ch.ring.last(1)) for ch in added] == [[f"to {n}".encode()] for n in names]
        assert redis_server.command_calls().get("client|unblock", 0) - unblocks == 1
        assert len(channel.ring) == 0


async def test_where_redis_refuses_client_unblock_the_reader_blocks_no_longer_than_a_follow_waits(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL user without ``CLIENT UNBLOCK`` (an @admin command): the first new follow
    waits out the block, which is NEW_FOLLOW_WAIT from then on, said once in the log."""
    redis_server.command(
        "ACL", "SETUSER", "plane", "on", ">secret", "~*", "&*", "+@all", "-client|unblock"
    )
    url = f"redis://plane:secret@127.0.0.1:{redis_server.port}"
    async with node(url, "one") as one, node(redis_server.url, "two") as two:
        for reg in (one, two):
            reg.add_token("b", "t.b", "web")
            reg.add_token("c", "t.c", "web")
        plane = one.plane
        with trio.fail_after(15):
            await follow_app(one)
            await eventually(lambda: plane.followers.blocking_read, 5)
            for name in ("b", "c"):
                added = one.channel(name)
                assert added is not None
                plane.hold(added, await plane.top(name))
                two.route(frames(f"t.{name}", [f"to {name}"]))
                await eventually(lambda added=added: len(added.ring) == 1, READ_BLOCK_MS / 1000 + 5)
                assert plane.followers.read_block_ms == NEW_FOLLOW_WAIT * 1000
    refusals = [r for r in caplog.records if "refused CLIENT UNBLOCK" in r.getMessage()]
    assert len(refusals) == 1


async def test_a_full_outbound_buffer_holds_the_inputs_and_loses_nothing(
    redis_server: RedisServer,
) -> None:
    """Many channels each well under their own bound can fill the outbound buffer
    together: past half of it a routed channel is held (its input waits), past three
    quarters routed messages wait in their staging rings; nothing is dropped."""
    plane = DataPlane(
        redis_server.url,
        node_id="one",
        keep_messages=1000,
        buffer=OutboundBuffer(max_messages=100),
    )
    registry = ClusterRegistry(plane, 100, 1 << 20, 1000)
    names = [f"c{i}" for i in range(12)]
    for name in names:
        registry.add_token(name, f"t.{name}", "web")
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        with trio.fail_after(15):
            await eventually(lambda: plane.failure is None, 5)
            for name in names:  # 12 x 10 > 100: more than the buffer holds, at once
                registry.route(frames(f"t.{name}", [f"{name}-{i}" for i in range(10)]))
            # The writer collects what fits; the rest waits, its channels' inputs held.
            await eventually(lambda: plane.pushback.holds > 0, 5)
            await eventually(lambda: plane.messages_written == 120, 10)
            await eventually(lambda: not plane.pushback.held, 5)
            assert plane.buffer.dropped == 0
            for name in names:
                history, _ = await plane.read_history(name, 10)
                assert texts(history) == [f"{name}-{i}".encode() for i in range(10)]
        nursery.cancel_scope.cancel()


async def test_the_inputs_go_on_while_a_flush_is_in_flight(redis_server: RedisServer) -> None:
    """The outbound gate, closed once the buffer is over half full, opens as soon as the
    writer has taken the buffer's content, not when Redis answers the flush: meanwhile the
    inputs route the next one (here Redis holds every write, ``CLIENT PAUSE ... WRITE``,
    so the flush stays in flight). Before, every input waited for that reply."""
    plane = DataPlane(
        redis_server.url,
        node_id="one",
        keep_messages=40,  # a stream entry of 10 messages: routed batches go at once
        buffer=OutboundBuffer(max_messages=100),
    )
    registry = ClusterRegistry(plane, 10, 1 << 20, 40)
    registry.add_token("app", "t.app", "web")
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        with trio.fail_after(15):
            await eventually(lambda: plane.failure is None, 5)
            redis_server.command("CLIENT", "PAUSE", "5000", "WRITE")
            try:
                counts = registry.route(frames("t.app", [f"a-{i}" for i in range(60)]))
                assert counts.routed == 60 and plane.pushback.gate.closed
                await eventually(lambda: plane.writer.in_flight.get("app") == 60, 5)
                assert not plane.pushback.gate.closed and plane.messages_written == 0
                counts = registry.route(frames("t.app", [f"b-{i}" for i in range(20)]))
                assert counts.routed == 20 and not counts.held
            finally:
                redis_server.command("CLIENT", "UNPAUSE")
            await eventually(lambda: plane.messages_written == 80, 10)
            history, _ = await plane.read_history("app", 10)
            assert texts(history) == [f"b-{i}".encode() for i in range(10, 20)]
        nursery.cancel_scope.cancel()


async def test_read_positions_are_reported_as_they_move_far_and_again_while_held(
    redis_server: RedisServer,
) -> None:
    """A follow that read ``report_step`` (an eighth of keep: 125 here) or more says so
    soon, and one whose channel a consumer holds says again where it stands (every
    REPORT_HEARTBEAT) while the writers still count it (READER_STALE_MS, 2 s), though it
    reads nothing: they keep the stream for it instead of trimming what it has not read."""
    async with node(redis_server.url, "one") as one:
        channel, follow, losses = await follow_app(one)
        key = one.plane.keys.readers("app")

        def reported() -> tuple[int, int]:
            raw = redis_server.command("HGET", key, "one")
            if not raw.startswith(b"$") or raw.startswith(b"$-1"):
                return -1, 0
            seq, _, ms = raw.split(b"\r\n")[1].partition(b":")
            return int(seq), int(ms)

        with trio.fail_after(10):
            one.route(frames("t.app", [f"m{i}" for i in range(200)]))
            await eventually(lambda: reported()[0] == 200, 2)
            _, at = reported()
            channel.hold("consumer")
            started = trio.current_time()
            await eventually(lambda: reported()[1] > at, 2)
            assert trio.current_time() - started < READER_STALE_MS / 1000
            assert reported()[0] == 200 and losses == []
            channel.release("consumer")
        one.plane.release(follow)


async def test_a_followed_channels_staging_ring_keeps_only_what_is_unsent(
    redis_server: RedisServer,
) -> None:
    """Once the channel's own ring holds its history (a local reader follows it), the
    staging ring lets go of all it sent, and history read while Redis is away comes from
    the followed ring, newest last."""
    async with node(redis_server.url, "one") as one:
        channel, follow, losses = await follow_app(one)
        sent = [f"m{i}" for i in range(600)]  # the ring holds 1,000
        for start in range(0, len(sent), 50):
            one.route(frames("t.app", sent[start : start + 50]))
            await trio.lowlevel.checkpoint()
            if start == 300:
                # The followed ring has the first half: from here the staging ring lets
                # go of everything it sends.
                with trio.fail_after(10):
                    await eventually(lambda: len(channel.ring) == 350, 10)
        with trio.fail_after(10):
            await eventually(lambda: len(channel.ring) == len(sent), 10)
        staging = one.staging["app"]
        assert staging.head == len(sent) and len(staging) == 0
        assert texts(one.local_history(channel)) == [m.encode() for m in sent[-100:]]
        assert texts(channel.ring.last(1000)) == [m.encode() for m in sent]
        assert losses == []
        one.plane.release(follow)


async def test_a_staging_ring_keeps_only_what_is_unsent_and_the_local_history(
    redis_server: RedisServer,
) -> None:
    """What a node has written to the stream is let go from its staging ring but for the
    newest ``history_messages`` (read while Redis is away): the ring stays that deep, not
    a second channel buffer (1,000 here) beside the channel's own ring."""
    async with node(redis_server.url, "one") as one:
        sent = [f"m{i}" for i in range(1500)]
        for start in range(0, len(sent), 50):
            one.route(frames("t.app", sent[start : start + 50]))
            await trio.lowlevel.checkpoint()
        with trio.fail_after(10):
            await eventually(lambda: one.plane.messages_written == len(sent), 10)
        staging = one.staging["app"]
        assert staging.head == len(sent) and len(staging) == 100  # history_messages
        channel = one.channel("app")
        assert channel is not None and len(channel.ring) == 0  # not followed here
        assert texts(one.local_history(channel)) == [m.encode() for m in sent[-100:]]
        history, _ = await one.plane.read_history("app", 1000)
        assert texts(history) == [m.encode() for m in sent[-1000:]]
