"""DrainPump: one task writes for every parked plain-TCP syslog drain (drains/pump.py).

The pump is driven here over socketpairs with trio's MockClock, so lingering is checked
against virtual time; the tests through SyslogDrain and real TCP sinks are in
test_drain_syslog.py and below.
"""

from __future__ import annotations

import errno
import random
import socket
import subprocess
import sys
import time

import pytest
import trio
import trio.testing

from logplexd.drains import DrainFeed, DrainManager, DrainSettings
from logplexd.drains.pump import (
    MAX_LINGER,
    THREAD_MIN_WRITES,
    AttachedWriter,
    DrainPump,
    check_hold,
    write_payloads,
)
from logplexd.drains.state import DrainEvent
from logplexd.ingest import LogsIngest
from logplexd.native import l10_syslog, parse_frames, syslog_frames, syslog_frames_from_ring
from logplexd.router import (
    PumpRounds,
    adaptive_linger,
    flood_ended,
    high_water,
    linger_limit,
    look_interval,
)
from logplexd.router.registry import Channel, Registry
from tests.helpers.drains import (
    TOKEN,
    HeldWrites,
    SyslogSink,
    append,
    delivered,
    manager_with_sinks,
    message,
    shut_down_during_a_held_write,
    stats_of,
)
from tests.helpers.http import basic_auth
from tests.helpers.syslog import octet_counted
from tests.helpers.wait import wait_until

LINGER = 0.05
LINGER_MESSAGES = 8


class Pair:
    """One parked writer on a socketpair: the test reads what the pump wrote from ``peer``."""

    def __init__(self, registry: Registry, channel_name: str, *, sndbuf: int | None = None):
        self.ours, self.peer = socket.socketpair()
        if sndbuf is not None:
            self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
        self.ours.setblocking(False)
        self.peer.setblocking(False)
        self.feed = DrainFeed(registry, channel_name)
        self.events: list[DrainEvent] = []
        token = TOKEN.encode()
        self.writer = AttachedWriter(
            self.feed,
            self.ours.fileno(),
            lambda batch, start, max_bytes: syslog_frames(batch, token, start, max_bytes),
            lambda n, since, now: l10_syslog(token, n, since, now),
            self.events.append,
            max_messages=16384,
            max_bytes=1 << 20,
            # As SyslogDrain does: what the pump writes whole is encoded in the ring.
            encode_ring=lambda ring, cursor, n, max_bytes: syslog_frames_from_ring(
                ring, cursor, n, token, max_bytes
            ),
        )
        self.returned = trio.Event()

    async def park(self, pump: DrainPump) -> None:
        channel = self.feed.current_channel()
        assert channel is not None
        try:
            await pump.park(self.writer, channel)
        finally:
            self.returned.set()

    def received(self) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk

    def close(self) -> None:
        self.ours.close()
        self.peer.close()


async def settle() -> None:
    """Until the pump's worker thread (a round of many drains) is done and settled."""
    await trio.testing.wait_all_tasks_blocked()
    await trio.testing.wait_all_threads_completed()
    await trio.testing.wait_all_tasks_blocked()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock()


async def start_pump(nursery: trio.Nursery) -> DrainPump:
    pump = DrainPump(linger=LINGER, linger_messages=LINGER_MESSAGES)
    nursery.start_soon(pump.run)
    return pump


async def parked(
    nursery: trio.Nursery, registry: Registry | None = None, **pair_options
) -> tuple[Registry, Channel, DrainPump, Pair]:
    """A pump and one writer parked on channel "app", everything settled."""
    registry = registry or Registry()
    channel = registry.ensure_channel("app")
    pump = await start_pump(nursery)
    pair = Pair(registry, "app", **pair_options)
    nursery.start_soon(pair.park, pump)
    await trio.testing.wait_all_tasks_blocked()
    return registry, channel, pump, pair


async def test_a_quiet_channel_lingers_then_gets_one_write(nursery, clock):
    registry, channel, pump, pair = await parked(nursery)
    append(channel, [message(i) for i in range(3)])
    clock.jump(LINGER / 2)
    await trio.testing.wait_all_tasks_blocked()
    assert pair.received() == b""
    clock.jump(LINGER / 2)
    await trio.testing.wait_all_tasks_blocked()
    assert pair.received() == b"".join(delivered(i) for i in range(3))
    assert pump.writes == 1 and pump.handed_back == 0
    assert pair.events == [DrainEvent.SEND, DrainEvent.SENT]
    assert pair.feed.counters.delivered == 3
    assert not pair.returned.is_set()  # still parked: the pump keeps writing for it
    pair.close()


async def test_a_burst_is_written_without_waiting_for_the_linger(nursery, clock):
    registry, channel, pump, pair = await parked(nursery)
    append(channel, [message(i) for i in range(LINGER_MESSAGES)])
    await trio.testing.wait_all_tasks_blocked()
    assert pair.received() == b"".join(delivered(i) for i in range(LINGER_MESSAGES))
    assert trio.current_time() == 0  # no virtual time passed
    pair.close()


async def test_one_round_serves_many_drains_in_order(nursery, clock):
    registry = Registry()
    pump = await start_pump(nursery)
    pairs = []
    for n in range(50):
        registry.ensure_channel(f"app{n}")
        pair = Pair(registry, f"app{n}")
        pairs.append(pair)
        nursery.start_soon(pair.park, pump)
    await trio.testing.wait_all_tasks_blocked()
    for round_ in range(3):
        for n, _pair in enumerate(pairs):
            append(registry.channels[f"app{n}"], [message(round_ * 100 + n)])
        # The linger in force, not LINGER: it grows after a round that took over a fifth of
        # LINGER of real time (adaptive_linger; a loaded machine, a slow worker thread).
        clock.jump(pump.current_linger)
        await settle()
    for n, pair in enumerate(pairs):
        assert pair.received() == b"".join(delivered(r * 100 + n) for r in range(3))
        pair.close()
    # One write per drain per linger interval, from the worker thread (50 drains a round),
    # and not one task of theirs woke.
    assert pump.writes == 150 and pump.handed_back == 0
    assert pump.threaded_rounds == 3
    assert not any(p.returned.is_set() for p in pairs)


async def test_a_full_socket_hands_the_rest_of_the_write_back(nursery, clock):
    registry, channel, pump, pair = await parked(nursery, sndbuf=4096)
    append(channel, [message(i, "x" * 500) for i in range(400)])  # ~220 KB
    await trio.testing.wait_all_tasks_blocked()
    assert pair.returned.is_set()
    assert pair.writer.partial is not None
    payload, written = pair.writer.partial
    assert 0 <= written < len(payload.data)
    assert pair.received() == payload.data[:written]
    assert pump.handed_back == 1
    # Not settled: the drain's task writes the rest, then reports it.
    assert pair.feed.counters.delivered == 0 and pair.feed.cached is payload
    assert pair.events == [DrainEvent.SEND]
    # Encoded in the ring, its messages are now the feed's pending batch: a ring that
    # moves on meanwhile (here: laps them all) takes nothing from the drain.
    assert pair.feed.pending_messages == 400
    channel.ring.append_batch(parse_frames([message(1000 + i) for i in range(2000)]))
    assert channel.ring.tail > 400
    pair.feed.delivered(payload)
    assert pair.feed.counters.delivered == 400 and pair.feed.counters.lost == 0
    assert pair.feed.pending_messages == 0
    pair.close()


async def test_a_write_error_is_handed_back_and_nothing_is_settled(nursery, clock):
    registry, channel, pump, pair = await parked(nursery)
    pair.peer.close()
    append(channel, [message(i) for i in range(LINGER_MESSAGES)])
    await trio.testing.wait_all_tasks_blocked()
    assert pair.returned.is_set()
    assert isinstance(pair.writer.error, OSError)
    assert pair.feed.counters.delivered == 0
    # The unsettled messages are still the feed's: the next connection writes them again,
    # the same bytes, even once the ring has lapped them.
    assert pair.feed.pending_messages == LINGER_MESSAGES
    assert pump.writers(channel) == [] and not channel.watched_by(pump)
    channel.ring.append_batch(parse_frames([message(100 + i) for i in range(2000)]))
    again = pair.feed.build_payload(
        pair.writer.encode,
        pair.writer.loss_notice,
        max_messages=16384,
        max_bytes=1 << 20,
        encode_ring=pair.writer.encode_ring,
    )
    assert again is not None
    assert again.data == b"".join(delivered(i) for i in range(LINGER_MESSAGES))
    assert again.batch is not None and pair.feed.counters.lost == 0
    pair.ours.close()


async def test_a_drain_whose_write_raises_is_handed_back_and_the_pump_serves_the_others(
    nursery, clock, caplog
):
    """A bug in one drain's feed (here: building its payload raises) must not stop the
    pump, which writes for every drain (the daemon went down with it): that drain is
    handed back to its own task, logged, and the others are written as before."""
    registry, channel, pump, broken = await parked(nursery)
    healthy = Pair(registry, "app")
    nursery.start_soon(healthy.park, pump)
    await trio.testing.wait_all_tasks_blocked()

    def fail(*args, **kwargs):
        raise RuntimeError("a bug")

    broken.feed.build_payload = fail  # type: ignore[method-assign]
    append(channel, [message(i) for i in range(LINGER_MESSAGES)])
    await settle()
    assert broken.returned.is_set() and pump.errors == 1
    assert "drain pump: a write for channel app failed" in caplog.text
    assert pump.writers(channel) == [healthy.writer]
    assert healthy.received() == b"".join(delivered(i) for i in range(LINGER_MESSAGES))
    append(channel, [message(i) for i in range(LINGER_MESSAGES, 2 * LINGER_MESSAGES)])
    await settle()
    assert healthy.received() == b"".join(
        delivered(i) for i in range(LINGER_MESSAGES, 2 * LINGER_MESSAGES)
    )
    broken.close()
    healthy.close()


async def test_a_removed_channel_hands_its_drains_back(nursery, clock):
    registry, channel, pump, pair = await parked(nursery)
    registry.drop_channel("app")
    clock.jump(LINGER)
    await trio.testing.wait_all_tasks_blocked()
    assert pair.returned.is_set()
    assert pair.writer.partial is None and pair.writer.error is None
    pair.close()


async def test_a_kick_unparks_and_detaches(nursery, clock):
    registry, channel, pump, pair = await parked(nursery)
    assert pump.writers(channel) == [pair.writer] and channel.watched_by(pump)
    pair.feed.begin_flush()
    await trio.testing.wait_all_tasks_blocked()
    assert pair.returned.is_set()
    assert pump.writers(channel) == [] and not channel.watched_by(pump)
    pair.close()


async def test_a_lapped_drain_gets_the_exact_l10_count(nursery, clock):
    small = Registry(history_messages=10, buffer_messages=10)
    registry, channel, pump, pair = await parked(nursery, small)
    # Appended in one go without the pump running in between: 25 into a ring of 10.
    channel.ring.append_batch(parse_frames([message(i) for i in range(25)]))
    channel.notify()
    await trio.testing.wait_all_tasks_blocked()
    data = pair.received()
    assert b"Error L10 (output buffer overflow): 15 messages dropped since" in data
    assert data.endswith(b"".join(delivered(i) for i in range(15, 25)))
    assert pair.feed.counters.lost == 15 and pair.feed.counters.delivered == 10
    pair.close()


async def test_many_tcp_drains_through_the_manager_are_written_by_the_pump(nursery):
    """End to end: SyslogDrain parks on connect; every byte reaches every sink, in order."""
    registry = Registry()
    manager = DrainManager(registry, rng=random.Random(3), settings=DrainSettings(linger=0.01))
    await nursery.start(manager.run)
    sinks = []
    for n in range(20):
        registry.ensure_channel(f"app{n}")
        sink = SyslogSink()
        port = await nursery.start(sink.serve)
        sinks.append(sink)
        manager.add_drain(f"app{n}", n + 1, TOKEN, f"syslog://127.0.0.1:{port}")
    with trio.fail_after(10):
        for batch in range(5):
            for n in range(20):
                append(registry.channels[f"app{n}"], [message(batch * 10 + k) for k in range(10)])
            await trio.sleep(0.02)
        for n, sink in enumerate(sinks):
            await sink.wait_for(lambda s=sink: s.messages() == 50)
            assert bytes(sink.data) == b"".join(delivered(i) for i in range(50))
            await wait_until(lambda n=n: stats_of(manager, n + 1).delivered == 50)
    assert manager.pump.writes > 0
    assert manager.pump.threaded_rounds > 0  # 20 drains a round: from the worker thread


# -- a channel's own overflow mode (issue 18) -----------------------------------------------------


async def _parked_with(
    nursery: trio.Nursery, registry: Registry, *, mode: str | None, default: bool, **pair_options
) -> tuple[Channel, Pair]:
    """A writer parked on channel "app" whose overflow mode is ``mode``, on a pump whose
    daemon-wide setting is ``default`` (True: pushback)."""
    channel = registry.ensure_channel("app")
    channel.overflow = mode  # what router.sync carries from the stored channel
    pump = DrainPump(linger=LINGER, linger_messages=LINGER_MESSAGES, pushback=default)
    nursery.start_soon(pump.run)
    pair = Pair(registry, "app", **pair_options)
    nursery.start_soon(pair.park, pump)
    await trio.testing.wait_all_tasks_blocked()
    return channel, pair


# -- rounds written from the worker thread ----------------------------------------------------
def test_write_payloads_reports_what_each_socket_took():
    full_ours, full_peer = socket.socketpair()
    ours, peer = socket.socketpair()
    for sock in (full_ours, ours):
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    while True:  # fill one socket up: its next write takes nothing
        try:
            full_ours.send(b"x" * 65536)
        except BlockingIOError:
            break
    closed, _ = socket.socketpair()
    closed_fd = closed.fileno()
    closed.close()
    big = b"y" * (4 << 20)
    results = write_payloads(
        [
            (ours.fileno(), b"hello"),
            (full_ours.fileno(), b"z"),
            (closed_fd, b"w"),
            (ours.fileno(), big),
        ]
    )
    assert results[0] == 5 and results[1] == 0
    assert isinstance(results[2], OSError) and results[2].errno == errno.EBADF
    assert isinstance(results[3], int) and 0 < results[3] < len(big)  # a partial write
    assert peer.recv(5) == b"hello"
    for sock in (full_ours, full_peer, ours, peer):
        sock.close()


async def threaded_round(
    nursery: trio.Nursery, clock, registry: Registry, held: HeldWrites, *, drop: bool = False
) -> tuple[DrainPump, list[Pair], list[trio.CancelScope]]:
    """THREAD_MIN_WRITES drains (channels app0...), one message each, their round in the
    worker thread, held there; app0 drops (``drop``) instead of pushing back."""
    pump = DrainPump(linger=LINGER, linger_messages=LINGER_MESSAGES, write_all=held)
    nursery.start_soon(pump.run)
    pairs, scopes = [], []
    for n in range(THREAD_MIN_WRITES):
        registry.ensure_channel(f"app{n}").overflow = "drop" if drop and n == 0 else None
        pair, scope = Pair(registry, f"app{n}"), trio.CancelScope()
        pairs.append(pair)
        scopes.append(scope)

        async def park(pair: Pair = pair, scope: trio.CancelScope = scope) -> None:
            with scope:
                await pair.park(pump)

        nursery.start_soon(park)
    await trio.testing.wait_all_tasks_blocked()
    for n in range(THREAD_MIN_WRITES):
        append(registry.channels[f"app{n}"], [message(i) for i in range(10)])
    clock.jump(LINGER)
    await trio.to_thread.run_sync(held.started.wait, 10)
    assert all(pair.writer.in_flight is not None for pair in pairs)
    return pump, pairs, scopes


async def test_a_drain_kicked_while_the_worker_writes_for_it_waits_for_that_write(nursery, clock):
    held = HeldWrites()
    pump, pairs, _ = await threaded_round(nursery, clock, Registry(), held)
    first = pairs[0]
    first.feed.begin_flush()  # a kick: its task would take its feed (and socket) back
    await trio.testing.wait_all_tasks_blocked()
    assert not first.returned.is_set()
    held.go.set()
    await settle()
    assert first.returned.is_set() and first.writer.in_flight is None
    everything = b"".join(delivered(i) for i in range(10))
    assert [pair.received() for pair in pairs] == [everything] * THREAD_MIN_WRITES
    assert first.feed.counters.delivered == 10 and first.feed.cached is None
    assert first.events == [DrainEvent.SEND, DrainEvent.SENT]
    assert pump.threaded_rounds == 1 and pump.writes == THREAD_MIN_WRITES
    # The worker's duplicate of a socket lives while its drain is parked, no longer.
    assert first.writer.worker_fd == -1
    assert all(pair.writer.worker_fd >= 0 for pair in pairs[1:])
    for pair in pairs:
        pair.close()


async def test_a_drain_cancelled_while_the_worker_writes_never_has_its_fd_reused(nursery, clock):
    held = HeldWrites()
    pump, pairs, scopes = await threaded_round(nursery, clock, Registry(), held)
    first = pairs[0]
    scopes[0].cancel()  # the drain removed: its task leaves and closes its socket
    await trio.testing.wait_all_tasks_blocked()
    assert first.returned.is_set()
    fd = first.ours.fileno()
    first.ours.close()
    other = socket.socketpair()  # takes the lowest free numbers: the one just closed
    assert fd in (other[0].fileno(), other[1].fileno())
    held.go.set()
    await settle()
    # The worker wrote to its own duplicate: the message reached the drain's connection,
    # nothing reached the new one.
    assert first.received() == b"".join(delivered(i) for i in range(10))
    for end in other:
        end.setblocking(False)
        with pytest.raises(BlockingIOError):
            end.recv(1)
    for end in other:
        end.close()
    assert first.feed.counters.delivered == 10 and pump.writes == THREAD_MIN_WRITES
    assert first.writer.worker_fd == -1  # closed once its write was settled
    first.peer.close()
    for pair in pairs[1:]:
        pair.close()


@pytest.mark.parametrize("lapped", [False, True])
async def test_a_partial_threaded_write_the_ring_lapped_meanwhile_is_counted_lost(
    nursery, clock, lapped
):
    registry = Registry(history_messages=64, buffer_messages=64)
    held = HeldWrites(partial_at=10)
    pump, pairs, _ = await threaded_round(nursery, clock, registry, held, drop=True)
    first = pairs[0]
    if lapped:  # a dropping channel's ring moves on over the messages in flight
        append(registry.channels["app0"], [message(100 + i) for i in range(200)])
    held.go.set()
    await settle()
    assert first.returned.is_set()
    feed = first.feed
    if lapped:
        # Given up whole, the connection with it (its receiver has 10 bytes of a frame):
        # the next one starts with an L10 for exactly these 10.
        assert isinstance(first.writer.error, OSError) and first.writer.partial is None
        assert "lapped" in str(first.writer.error)
        assert feed.counters.lost == 10 and feed.pending_messages == 0
    else:
        # As a partial write of the loop's own: the drain's task finishes it.
        assert first.writer.error is None and first.writer.partial is not None
        assert first.writer.partial[1] == 10
        assert feed.counters.lost == 0 and feed.pending_messages == 10
    assert feed.counters.delivered == 0
    assert first.received() == b"".join(delivered(i) for i in range(10))[:10]
    for pair in pairs:
        pair.close()


@pytest.mark.parametrize(
    ("default", "mode", "held"),
    [(True, None, True), (True, "drop", False), (False, None, False), (False, "pushback", True)],
)
async def test_a_drain_holds_its_channel_unless_the_channel_drops(
    nursery, clock, default, mode, held
):
    # A quarter of this ring (16 messages) behind, a drain that takes everything holds.
    registry = Registry(history_messages=64, buffer_messages=64)
    channel, pair = await _parked_with(nursery, registry, mode=mode, default=default)
    append(channel, [message(i) for i in range(40)])
    assert channel.held is held  # the pump looked before it wrote
    await trio.testing.wait_all_tasks_blocked()
    assert pair.received() == b"".join(delivered(i) for i in range(40))
    assert not channel.held  # taken whole: caught up, released
    pair.close()


async def test_past_half_its_mark_a_drain_is_not_reported_on_every_message(nursery, clock):
    # A ring of 64 messages: its drain holds at 16 behind and is looked at again half way,
    # at 8 (where it also becomes urgent). Until the pump has written, nothing changes
    # between the two marks: the router reports the channel again at the hold mark, not on
    # every message routed meanwhile (1,000 channels of 1,024 messages, a busy pump: a
    # report every 3 messages routed, 2.8 CPU s per million).
    registry = Registry(history_messages=64, buffer_messages=64)
    _, channel, _, pair = await parked(nursery, registry)
    ring = channel.ring
    for i in range(8):
        append(channel, [message(i)])  # no checkpoint: the pump cannot write meanwhile
    for i in range(8, 15):
        append(channel, [message(i)])
        assert ring.wake_at == 16 > ring.head  # routing i + 1 would not report it
    assert not channel.held
    append(channel, [message(15)])  # the hold mark: 16 behind the drain's cursor
    assert channel.held
    await trio.testing.wait_all_tasks_blocked()
    assert pair.received() == b"".join(delivered(i) for i in range(16))
    # Written: the drain's cursor and its marks moved up, the channel is released.
    assert not channel.held and ring.wake_at > ring.head
    pair.close()


async def test_a_channel_switched_to_drop_is_released_at_once(nursery, clock):
    registry = Registry(history_messages=64, buffer_messages=64)
    channel, pair = await _parked_with(nursery, registry, mode=None, default=True)
    append(channel, [message(i) for i in range(40)])
    assert channel.held
    channel.overflow = "drop"  # the operator's PUT, carried by router.sync
    append(channel, [message(40)])  # still 41 behind: only the mode changed
    assert not channel.held
    pair.close()


@pytest.mark.parametrize(("mode", "held"), [("pushback", True), ("drop", False)])
async def test_a_partial_write_holds_only_a_pushback_channel(nursery, clock, mode, held):
    channel, pair = await _parked_with(
        nursery, Registry(), mode=mode, default=mode == "drop", sndbuf=4096
    )
    # Under a quarter of the ring (375 of 1500), but more than the socket takes at once.
    append(channel, [message(i, "x" * 500) for i in range(300)])
    await trio.testing.wait_all_tasks_blocked()
    assert pair.returned.is_set() and pair.writer.partial is not None
    assert channel.held is held
    pair.close()


def test_a_linger_waits_for_at_most_half_the_hold_mark():
    small = Registry(history_messages=64, buffer_messages=64).ensure_channel("app").ring
    assert high_water(small) == 16
    assert linger_limit(small, 256) == 8  # half the mark, not the 256 asked
    assert linger_limit(small, 4) == 4
    history = Registry().ensure_channel("app").ring  # 1,500 messages: the mark is 375
    assert linger_limit(history, 256) == 187
    # The daemon's default channel buffer (16,384 messages): the mark is 4,096.
    buffer = Registry(buffer_messages=16384).ensure_channel("app").ring
    assert linger_limit(buffer, 256) == 256


async def test_a_small_ring_is_written_before_its_mark_not_after_the_linger(nursery, clock):
    # Gathering 256 messages in a ring whose mark is 16 behind: the inputs would be held at
    # 16 and the pump would wait out its linger every time. It writes at half the mark.
    registry = Registry(history_messages=64, buffer_messages=64)
    channel = registry.ensure_channel("app")
    pump = DrainPump(linger=LINGER, linger_messages=256)
    nursery.start_soon(pump.run)
    pair = Pair(registry, "app")
    nursery.start_soon(pair.park, pump)
    await trio.testing.wait_all_tasks_blocked()
    for i in range(7):
        append(channel, [message(i)])
    await trio.testing.wait_all_tasks_blocked()
    assert pair.received() == b""  # under the limit: it lingers
    append(channel, [message(7)])
    await trio.testing.wait_all_tasks_blocked()
    assert pair.received() == b"".join(delivered(i) for i in range(8))
    assert trio.current_time() == 0 and not channel.held
    pair.close()


async def test_a_drain_on_its_own_task_stops_lingering_at_half_the_mark(clock):
    # The same bound for a drain its own task writes (TLS, HTTP: ``wait_for_data``).
    clock.autojump_threshold = 0
    registry = Registry(history_messages=64, buffer_messages=64)
    channel = registry.ensure_channel("app")
    quiet = DrainFeed(registry, "app")  # starts at the head, as a new drain does
    append(channel, [message(0)])
    with trio.fail_after(1):
        assert await quiet.wait_for_data(LINGER, 256)
    assert trio.current_time() == LINGER  # one message: it gathered for the whole linger
    busy = DrainFeed(registry, "app")
    start = trio.current_time()
    append(channel, [message(i) for i in range(1, 9)])
    with trio.fail_after(1):
        assert await busy.wait_for_data(LINGER, 256)
    assert trio.current_time() == start  # 8 waiting, half the mark of 16: at once


async def test_a_token_authenticated_body_larger_than_the_ring_reaches_a_drain_whole(
    nursery, clock
):
    # 200 messages in one POST /logs body, a ring of 64: the body stops at the drain's mark
    # and goes on as the pump writes, instead of lapping a drain that takes everything.
    clock.autojump_threshold = 0
    registry = Registry(history_messages=64, buffer_messages=64)
    channel_token = "t.5d1c9a52-3a4f-4f0e-9a61-2f4b3c1d0e9f"
    registry.add_token("app", channel_token, "app")
    pump = await start_pump(nursery)
    pair = Pair(registry, "app")
    nursery.start_soon(pair.park, pump)
    await trio.testing.wait_all_tasks_blocked()
    ingest = LogsIngest(registry, hold_timeout=5.0)
    headers = {
        "content-type": "application/logplex-1",
        "authorization": basic_auth("token", channel_token),
    }
    body = b"".join(octet_counted(message(i)) for i in range(200))
    response = await ingest.handle("POST", headers, body)
    assert response.status == 204
    await trio.testing.wait_all_tasks_blocked()
    assert pair.received() == b"".join(delivered(i) for i in range(200))  # no L10
    assert ingest.stats.waits > 0 and pair.feed.counters.delivered == 200
    pair.close()


def test_check_hold_asks_the_channel_mode_before_the_default():
    registry = Registry()
    channel = registry.ensure_channel("app")
    pair = Pair(registry, "app")
    append(channel, [message(i) for i in range(4)])  # 4 behind, the high water is 2
    for default, mode, held in [
        (True, None, True),
        (True, "drop", False),
        (False, "pushback", True),
        (False, None, False),
    ]:
        channel.overflow = mode
        check_hold(pair.writer, channel, 2, default)
        assert channel.held is held, (default, mode)
    pair.close()


async def test_a_slow_drain_holds_nothing_until_it_has_caught_up(nursery, clock):
    registry = Registry(history_messages=64, buffer_messages=64)
    channel, pair = await _parked_with(nursery, registry, mode=None, default=True)
    # Its receiver left a write unfinished: the drain's task judged it slow and let go
    # (drains/syslog.py).
    pair.writer.slow = True
    channel.release(pair.writer)
    append(channel, [message(i) for i in range(40)])
    assert not channel.held  # 40 behind, but a slow consumer never holds its inputs
    await trio.testing.wait_all_tasks_blocked()
    assert pair.received() == b"".join(delivered(i) for i in range(40))
    assert not pair.writer.slow  # the pump wrote it all: caught up
    append(channel, [message(i) for i in range(40, 80)])
    assert channel.held  # behind again, and no longer slow: it holds
    await trio.testing.wait_all_tasks_blocked()
    assert not channel.held
    pair.close()


def test_adaptive_linger_keeps_a_round_under_a_fifth_of_the_time_and_is_bounded():
    # Cheap rounds (few channels) keep the configured linger.
    assert adaptive_linger(0.02, 0.0001, MAX_LINGER) == 0.02
    # A round of 11 ms (1,000 busy channels) lingers five times that.
    assert adaptive_linger(0.02, 0.011, MAX_LINGER) == pytest.approx(0.055)
    # However costly, never past MAX_LINGER; a configured linger above it still wins.
    assert adaptive_linger(0.02, 5.0, MAX_LINGER) == MAX_LINGER
    assert adaptive_linger(0.5, 5.0, MAX_LINGER) == 0.5
    # Monotone in the round's cost.
    costs = [i / 1000 for i in range(200)]
    lingers = [adaptive_linger(0.02, c, MAX_LINGER) for c in costs]
    assert lingers == sorted(lingers)


# Real time from here: a pump looks at the real time and CPU time that pass meanwhile.
IDLE_LINGER = 0.5


class CpuMeter:
    """The loop thread's CPU clock as the tests run it: it advances only while
    ``busy_for`` spins, whatever else the machine runs (a loaded CI machine preempts the
    spinning thread; its own CPU time would then make it look less busy than it is)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds

    async def busy_for(self, seconds: float, *, on_cpu: bool = True) -> None:
        """Keep a task runnable (the loop never waits) for ``seconds`` of real time; with
        ``on_cpu`` False the loop is runnable but (by this clock) not running."""
        started = last = time.perf_counter()
        while last - started < seconds:
            await trio.lowlevel.checkpoint()
            now = time.perf_counter()
            if on_cpu:
                self.seconds += now - last
            last = now


async def rounds_writing(
    nursery: trio.Nursery,
) -> tuple[PumpRounds, CpuMeter, list[str], trio.Event]:
    meter = CpuMeter()
    rounds = PumpRounds(IDLE_LINGER, IDLE_LINGER, cpu_clock=meter)
    written: list[str] = []
    done = trio.Event()

    def write(channel: str) -> None:
        written.append(channel)
        done.set()

    nursery.start_soon(rounds.run, write)
    await trio.testing.wait_all_tasks_blocked()
    return rounds, meter, written, done


async def test_a_flood_that_ends_is_written_without_waiting_out_the_linger(nursery):
    rounds, meter, written, done = await rounds_writing(nursery)
    rounds.dirty("a")
    rounds.dirty("b")
    await meter.busy_for(IDLE_LINGER * 0.4)
    with trio.fail_after(IDLE_LINGER * 0.4):  # before the linger is out
        await done.wait()
    assert written == ["a", "b"]  # one round, oldest first
    assert rounds.idle_rounds == 1


async def test_a_loop_that_was_not_on_the_cpu_lingers(nursery):
    # Runnable as much as above, but hardly ever running: idle moments of a light load,
    # not the end of a flood.
    rounds, meter, written, done = await rounds_writing(nursery)
    rounds.dirty("a")
    await meter.busy_for(IDLE_LINGER * 0.4, on_cpu=False)
    with trio.fail_after(IDLE_LINGER * 2):
        await done.wait()
    assert rounds.idle_rounds == 0  # written when the linger was out


async def test_a_daemon_idle_all_along_lingers(nursery):
    # A steady trickle leaves the loop idle between messages: writing at every idle
    # moment would cost a write per message or two.
    rounds, meter, written, done = await rounds_writing(nursery)
    rounds.dirty("a")
    with trio.fail_after(IDLE_LINGER * 2):
        await done.wait()
    assert written == ["a"] and rounds.idle_rounds == 0


async def test_a_busy_daemon_still_lingers(nursery):
    rounds, meter, written, done = await rounds_writing(nursery)
    rounds.dirty("a")
    # Some task always runnable and on the CPU for most of the linger: nothing is written.
    await meter.busy_for(IDLE_LINGER * 0.8)
    assert written == []
    with trio.fail_after(IDLE_LINGER):
        await done.wait()
    assert written == ["a"]


async def test_an_urgent_channel_ends_the_linger_at_once(nursery, clock):
    rounds, meter, written, done = await rounds_writing(nursery)
    rounds.dirty("a")
    rounds.urgent("b")
    await done.wait()
    assert written == ["b"] and trio.current_time() == 0
    await trio.testing.wait_all_tasks_blocked()
    assert written == ["b"]  # "a" still lingers
    clock.jump(IDLE_LINGER)
    await trio.testing.wait_all_tasks_blocked()
    assert written == ["b", "a"]


def test_a_flood_ended_only_after_a_busy_while():
    look = look_interval(0.1)  # 5 ms
    assert flood_ended(0.1, 0.09, look)  # busy 90 % of 100 ms
    assert not flood_ended(0.1, 0.05, look)  # half the time: a steady load's pause
    assert not flood_ended(0.01, 0.01, look)  # 10 ms of work: a burst, not a flood
    assert flood_ended(5 * look, 0.75 * 5 * look, look)  # both bounds included


def test_idle_detection_brings_no_test_framework_into_the_daemon():
    # trio.testing imports pytest whenever it is installed (as it is here).
    code = "import sys, logplexd.daemon; print(sorted(m for m in sys.modules if 'pytest' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_shutdown_counts_the_write_in_flight_as_delivered(nursery):
    # Without disk backlogs too: the worker's last write is settled before the shutdown
    # returns (in Redis mode, so that the last checkpoints hold it: the next owner would
    # otherwise send it again).
    held = HeldWrites()
    registry = Registry()
    manager, sinks = await manager_with_sinks(
        nursery, registry, THREAD_MIN_WRITES, DrainSettings(shutdown_grace=0.2), pump_writes=held
    )
    await shut_down_during_a_held_write(nursery, registry, manager, sinks, held)
    assert [stats_of(manager, n + 1).delivered for n in range(THREAD_MIN_WRITES)] == [11] * 8
    for sink in sinks:
        await sink.wait_for(lambda sink=sink: sink.messages() == 11)
        assert bytes(sink.data) == b"".join(delivered(i) for i in range(11))
