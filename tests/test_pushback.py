"""Delivery under load (issue 18): a consumer that would take more holds its channel's
inputs instead of being lapped; one that refuses data is lapped and told (L10).

Router level (``Channel.hold``, ``Registry.route``), the ``POST /logs`` core under a held
channel (MockClock), and real sockets end to end: producers -> ``SyslogInput`` ->
``DrainManager`` -> TCP receivers.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest
import trio
import trio.testing

from logplexd.drains import DrainSettings
from logplexd.ingest import LogsIngest, LogsListener, SyslogInput
from logplexd.native import parse_body
from logplexd.router import Channel, Registry
from logplexd.web import serve_http
from tests.helpers.drains import SyslogSink, append, message, start_manager, stats_of
from tests.helpers.http import basic_auth, credentials, request
from tests.helpers.syslog import frame

# The daemon's default ring (channel_buffer_messages / channel_buffer_bytes).
RING = {"buffer_messages": 16384, "buffer_bytes": 16 * 1024 * 1024}
FLOOD = "t.0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
QUIET = "t.1a2b3c4d-5e6f-4071-8293-a4b5c6d7e8f9"
L10 = re.compile(rb"Error L10 \(output buffer overflow\): (\d+) messages dropped")
TEXT = re.compile(rb"p(\d+)-(\d+)\n$")


# -- the router ------------------------------------------------------------------------------


def _two_channels() -> tuple[Registry, Channel, Channel]:
    """Channels "a" (token FLOOD) and "b" (token QUIET), with the default ring."""
    registry = Registry()
    registry.add_token("a", FLOOD, "app")
    registry.add_token("b", QUIET, "app")
    a, b = registry.channel("a"), registry.channel("b")
    assert a is not None and b is not None
    return registry, a, b


def test_route_stops_at_the_frame_that_reaches_a_mark_and_goes_on_from_there() -> None:
    registry, a, b = _two_channels()
    holder = object()
    a.hold_from(holder, a.ring.head + 3)  # a consumer 3 messages from its mark
    texts = [("a", 0), ("b", 0), ("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2), ("a", 4)]
    batch = parse_body(
        b"".join(frame(FLOOD if ch == "a" else QUIET, f"{ch}{i}") for ch, i in texts), 10240
    )
    counts = registry.route(batch)
    # Up to the mark, then nothing more: not a's 4th message, nor b's after it.
    assert (counts.held, counts.rest, counts.routed) == ((a,), 5, 5)
    assert [f.rsplit(b" ", 1)[1] for f in a.ring.last(10).frames()] == [b"a0", b"a1", b"a2"]
    assert [f.rsplit(b" ", 1)[1] for f in b.ring.last(10).frames()] == [b"b0", b"b1"]
    # Still held: routing on from there routes nothing.
    assert registry.route(batch, counts.rest).rest == 5
    a.release(holder)
    counts = registry.route(batch, 5)
    assert (counts.held, counts.rest, counts.routed) == ((), None, 3)
    assert [f.rsplit(b" ", 1)[1] for f in a.ring.last(10).frames()] == [
        b"a0",
        b"a1",
        b"a2",
        b"a3",
        b"a4",
    ]
    assert [f.rsplit(b" ", 1)[1] for f in b.ring.last(10).frames()] == [b"b0", b"b1", b"b2"]
    # ``until_held=False`` routes everything, held or not.
    a.hold(holder)
    counts = registry.route(batch, until_held=False)
    assert (counts.held, counts.rest, counts.routed) == ((a,), None, 8)


def test_hold_is_reported_by_route_until_every_holder_releases() -> None:
    registry, a, b = _two_channels()
    batch = [frame(FLOOD, "one"), frame(QUIET, "two")]
    assert registry.route(parse_body(b"".join(batch), 10240)).held == ()
    first, second = object(), object()
    a.hold(first)
    a.hold(second)
    # Every append to a held channel is reported, whatever its readers' wake_at.
    assert registry.route(parse_body(b"".join(batch), 10240)).held == (a,)
    assert registry.route(parse_body(frame(QUIET, "b only"), 10240)).held == ()
    a.release(first)
    assert a.held
    a.release(object())  # not a holder: nothing changes
    assert a.held
    a.release(second)
    assert not a.held
    assert registry.route(parse_body(b"".join(batch), 10240)).held == ()


async def test_wait_released_returns_when_the_last_holder_releases() -> None:
    registry = Registry()
    channel = registry.ensure_channel("a")
    await channel.wait_released()  # not held: at once
    holder = object()
    channel.hold(holder)
    done = trio.Event()

    async def waiter() -> None:
        await channel.wait_released()
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        channel.release(holder)
    assert done.is_set()


# -- POST /logs ------------------------------------------------------------------------------


@pytest.fixture
def autojump() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def _post(ingest: LogsIngest, body: bytes):
    headers = {"content-type": "application/logplex-1", "authorization": basic_auth("token", FLOOD)}
    return await ingest.handle("POST", headers, body)


async def test_logs_for_a_held_channel_get_503_with_retry_after_and_nothing_routed(
    autojump: trio.testing.MockClock,
) -> None:
    registry = Registry()
    registry.add_token("a", FLOOD, "app")
    channel = registry.channel("a")
    assert channel is not None
    ingest = LogsIngest(registry, hold_timeout=2.0)
    channel.hold(object())
    started = trio.current_time()
    response = await _post(ingest, frame(FLOOD, "later"))
    assert response.status == 503
    assert ("retry-after", "2") in response.headers
    assert trio.current_time() - started == pytest.approx(2.0)
    assert channel.ring.head == 0  # nothing routed: the client sends it again
    assert ingest.stats.pushed_back == 1


async def test_logs_for_a_held_channel_wait_and_get_204_once_released(
    autojump: trio.testing.MockClock,
) -> None:
    registry = Registry()
    registry.add_token("a", FLOOD, "app")
    channel = registry.channel("a")
    assert channel is not None
    ingest = LogsIngest(registry, hold_timeout=5.0)
    holder = object()
    channel.hold(holder)

    async def release_later() -> None:
        await trio.sleep(1.0)
        channel.release(holder)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_later)
        response = await _post(ingest, frame(FLOOD, "waited"))
    assert response.status == 204
    assert trio.current_time() == pytest.approx(1.0)
    assert channel.ring.head == 1


@pytest.mark.parametrize("released", [True, False])
async def test_logs_routed_by_app_name_stop_at_a_mark_and_go_on_after_the_wait(
    autojump: trio.testing.MockClock, released: bool
) -> None:
    # A credential that may write any channel: frames are routed by their APP-NAME, so
    # which channel is held is known only while routing.
    registry, a, b = _two_channels()

    async def any_channel(user: str, password: str) -> frozenset[str] | None:
        return frozenset({"any_channel"}) if (user, password) == ("router", "pw") else None

    ingest = LogsIngest(registry, any_channel, hold_timeout=2.0)
    holder = object()
    a.hold_from(holder, 2)
    body = b"".join(frame(FLOOD if i % 2 else QUIET, f"m{i}") for i in range(8))
    headers = {"content-type": "application/logplex-1", "authorization": basic_auth("router", "pw")}

    midway: list[tuple[int, int]] = []

    async def release_later() -> None:
        await trio.sleep(1.0)
        midway.append((a.ring.head, b.ring.head))
        if released:
            a.release(holder)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_later)
        response = await ingest.handle("POST", headers, body)
    # It stopped at a's third frame: a had 2, b the 3 before it.
    assert midway == [(2, 3)]
    # Once released (1 s) or after the bounded wait (2 s) in any case, the rest went in:
    # it was accepted, and none of it may be asked for again.
    assert response.status == 204
    assert trio.current_time() == pytest.approx(1.0 if released else 2.0)
    assert (a.ring.head, b.ring.head) == (4, 4)
    a.release(holder)


@pytest.mark.parametrize("released", [True, False])
async def test_a_token_authenticated_body_stops_at_a_mark_and_goes_on_after_the_wait(
    autojump: trio.testing.MockClock, released: bool
) -> None:
    # Routed whole, a body larger than the ring's slack lapped a drain that took it all.
    registry, a, _ = _two_channels()
    ingest = LogsIngest(registry, hold_timeout=2.0)
    holder = object()
    a.hold_from(holder, 3)
    body = b"".join(frame(FLOOD, f"m{i}") for i in range(8))
    midway: list[int] = []

    async def release_later() -> None:
        await trio.sleep(1.0)
        midway.append(a.ring.head)
        if released:
            a.release(holder)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_later)
        response = await _post(ingest, body)
    assert midway == [3]  # it stopped at the mark
    # Once released (1 s) or after the bounded wait (2 s) in any case, the rest went in:
    # it was accepted, and none of it may be asked for again.
    assert response.status == 204
    assert trio.current_time() == pytest.approx(1.0 if released else 2.0)
    assert a.ring.head == 8
    assert ingest.stats.routed == 8 and ingest.stats.waits == 1
    a.release(holder)


async def test_a_token_authenticated_body_whose_channel_goes_while_it_waits(
    autojump: trio.testing.MockClock,
) -> None:
    registry, a, _ = _two_channels()
    ingest = LogsIngest(registry, hold_timeout=2.0)
    a.hold_from(object(), 3)

    async def delete_later() -> None:
        await trio.sleep(1.0)
        registry.remove_token(FLOOD)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(delete_later)
        response = await _post(ingest, b"".join(frame(FLOOD, f"m{i}") for i in range(8)))
    assert response.status == 204
    assert a.ring.head == 3
    assert (ingest.stats.routed, ingest.stats.unknown_token) == (3, 5)


@pytest.mark.parametrize(
    ("hold_timeout", "retry_after"), [(0.0, "1"), (0.4, "1"), (2.2, "3"), (2.5, "3")]
)
async def test_retry_after_is_the_hold_timeout_rounded_up(
    autojump: trio.testing.MockClock, hold_timeout: float, retry_after: str
) -> None:
    # A client told to come back sooner than the wait it was refused after only comes
    # back to the same hold.
    registry = Registry()
    registry.add_token("a", FLOOD, "app")
    channel = registry.channel("a")
    assert channel is not None
    channel.hold(object())
    response = await _post(LogsIngest(registry, hold_timeout=hold_timeout), frame(FLOOD, "x"))
    assert response.status == 503
    assert ("retry-after", retry_after) in response.headers


# -- real sockets ----------------------------------------------------------------------------


def _producer_data(conn: int, count: int, token: str = FLOOD) -> bytes:
    return b"".join(frame(token, f"p{conn}-{i}\n") for i in range(count))


async def _produce(port: int, data: bytes) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    await stream.aclose()


class _Count:
    """Counts the producers' messages a sink received, without rescanning what it counted."""

    PATTERN = b"- - p"  # where a producer's text starts (no L10 has it)

    def __init__(self, sink: SyslogSink) -> None:
        self.sink, self.seen, self.offset = sink, 0, 0

    def __call__(self) -> int:
        data = self.sink.data
        # A match that started before the last end was not counted: it ended after it.
        self.seen += data.count(self.PATTERN, max(0, self.offset - len(self.PATTERN) + 1))
        self.offset = len(data)
        return self.seen


def _announced(sink: SyslogSink) -> int:
    return sum(int(m.group(1)) for m in L10.finditer(bytes(sink.data)))


# A ring smaller than the 8 connections' reads together (8 x 128 KB of ~90-byte messages):
# an input must stop at the message that reaches its channel's mark, not a read later.
SMALL_RING = {"history_messages": 2048, "buffer_messages": 2048}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("overflow", "ring"),
    [("pushback", RING), ("pushback", SMALL_RING), ("drop", RING)],
    ids=["pushback", "pushback-small-ring", "drop"],
)
async def test_a_flood_of_8_connections_to_a_fast_receiver(overflow: str, ring: dict) -> None:
    # Small drain writes make logplexd itself the bottleneck: the receiver reads at once.
    conns, per_conn = 8, 20_000
    registry = Registry(**ring)
    registry.add_token("flood", FLOOD, "app")
    sink = SyslogSink()
    settings = DrainSettings(syslog_batch_bytes=16 * 1024, overflow=overflow)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.serve)
        syslog = SyslogInput(registry)
        port = await nursery.start(syslog.serve, "127.0.0.1", 0)
        manager = await start_manager(nursery, registry, settings)
        manager.add_drain("flood", 1, "d.flood", f"syslog://127.0.0.1:{sink.port}")
        with trio.fail_after(60):
            async with trio.open_nursery() as producers:
                for conn in range(conns):
                    producers.start_soon(_produce, port, _producer_data(conn, per_conn))
            count = _Count(sink)
            total = conns * per_conn
            await sink.wait_for(
                lambda: (
                    count() + stats_of(manager, 1).lost >= total
                    and stats_of(manager, 1).pending_loss == 0
                    and _announced(sink) == stats_of(manager, 1).lost
                ),
                timeout=60,
            )
        nursery.cancel_scope.cancel()
    stats = stats_of(manager, 1)
    frames = sink.frames()
    if overflow == "drop":
        # The control: the same flood without pushback is lapped (and told so).
        assert stats.lost > 0
        assert len(frames) - _announced_frames(frames) + stats.lost == total
        assert syslog.stats.pushbacks == 0
        return
    assert syslog.stats.pushbacks > 0  # the router was behind, and the inputs waited
    assert syslog.stats.frames == syslog.stats.routed == total
    assert stats.lost == 0 and stats.dropped == 0
    assert not any(L10.search(f) for f in frames)
    seen: dict[int, list[int]] = {conn: [] for conn in range(conns)}
    for f in frames:
        m = TEXT.search(f)
        assert m is not None, f
        seen[int(m.group(1))].append(int(m.group(2)))
    # Every message once, each connection's in the order it was sent.
    assert seen == {conn: list(range(per_conn)) for conn in range(conns)}


@pytest.mark.integration
async def test_a_flood_of_8_connections_over_16_channels_reaches_every_drain_whole() -> None:
    # Each connection takes the channels in turn, message by message: the drain pump's
    # rounds write for 8 drains or more, from its worker thread, while the loop routes on.
    conns, per_conn, channels = 8, 4_000, 16
    registry = Registry(**SMALL_RING)
    tokens = [f"t.0f1e2d3c-4b5a-4978-8695-{n:012d}" for n in range(channels)]
    sinks = [SyslogSink() for _ in range(channels)]
    async with trio.open_nursery() as nursery:
        syslog = SyslogInput(registry)
        port = await nursery.start(syslog.serve, "127.0.0.1", 0)
        manager = await start_manager(nursery, registry, DrainSettings(overflow="pushback"))
        for n, (token, sink) in enumerate(zip(tokens, sinks, strict=True)):
            await nursery.start(sink.serve)
            registry.add_token(f"app{n}", token, f"app{n}")
            manager.add_drain(f"app{n}", n + 1, f"d.app{n}", f"syslog://127.0.0.1:{sink.port}")
        with trio.fail_after(60):
            async with trio.open_nursery() as producers:
                for conn in range(conns):
                    data = b"".join(
                        frame(tokens[i % channels], f"p{conn}-{i}\n") for i in range(per_conn)
                    )
                    producers.start_soon(_produce, port, data)
            counts = [_Count(sink) for sink in sinks]
            for count, sink in zip(counts, sinks, strict=True):
                await sink.wait_for(lambda c=count: c() >= conns * per_conn // channels)
        nursery.cancel_scope.cancel()
    assert manager.pump.threaded_rounds > 0
    for n, sink in enumerate(sinks):
        assert stats_of(manager, n + 1).lost == 0
        seen: dict[int, list[int]] = {conn: [] for conn in range(conns)}
        for f in sink.frames():
            assert not L10.search(f)
            m = TEXT.search(f)
            assert m is not None, f
            seen[int(m.group(1))].append(int(m.group(2)))
        # This channel's messages, each once, each connection's in the order it sent them.
        mine = list(range(n, per_conn, channels))
        assert seen == {conn: mine for conn in range(conns)}


@pytest.mark.integration
async def test_a_receiver_that_stops_reading_is_lapped_and_holds_no_producer() -> None:
    stalled_count, quiet_count = 150_000, 2_000
    registry = Registry(**RING)
    registry.add_token("stalled", FLOOD, "app")
    registry.add_token("quiet", QUIET, "app")
    stalled, healthy = SyslogSink(read=False), SyslogSink()
    settings = DrainSettings(slow_write_after=0.2, syslog_send_timeout=60.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(stalled.serve)
        await nursery.start(healthy.serve)
        syslog = SyslogInput(registry)
        port = await nursery.start(syslog.serve, "127.0.0.1", 0)
        manager = await start_manager(nursery, registry, settings)
        manager.add_drain("stalled", 1, "d.stalled", f"syslog://127.0.0.1:{stalled.port}")
        manager.add_drain("quiet", 2, "d.quiet", f"syslog://127.0.0.1:{healthy.port}")
        # Its own channel's producer and another channel's producer both get through.
        with trio.fail_after(30):
            async with trio.open_nursery() as producers:
                producers.start_soon(_produce, port, _producer_data(0, stalled_count))
                producers.start_soon(_produce, port, _producer_data(1, quiet_count, QUIET))
            count = _Count(healthy)
            await healthy.wait_for(lambda: count() >= quiet_count)
        assert stats_of(manager, 1).lost > 0  # lapped while its receiver did not read
        stalled.resume()
        arrived = _Count(stalled)
        await stalled.wait_for(lambda: arrived() + _announced(stalled) >= stalled_count, timeout=30)
        nursery.cancel_scope.cancel()
    frames = stalled.frames()
    announced = sum(int(m.group(1)) for f in frames if (m := L10.search(f)))
    got = [int(m.group(2)) for f in frames if (m := TEXT.search(f))]
    # Exact: what arrived plus what the L10s announced is everything sent, each once.
    assert len(got) + announced == stalled_count
    assert got == sorted(set(got))
    assert stats_of(manager, 1).lost == announced
    assert len(healthy.frames()) == quiet_count
    # Counted (logplexd_drain_judged_slow_total): the stalled receiver, not the healthy one.
    assert stats_of(manager, 1).judged_slow >= 1
    assert stats_of(manager, 2).judged_slow == 0


def _announced_frames(frames: list[bytes]) -> int:
    return sum(1 for f in frames if L10.search(f))


def test_append_helper_still_wakes_readers() -> None:
    # The router's hold must not stop what routing always did for readers.
    registry = Registry()
    channel = registry.ensure_channel("a")
    channel.hold(object())
    append(channel, [message(1)])
    assert channel.ring.head == 1


# -- POST /logs over real sockets ------------------------------------------------------------

# A ring of 4,096 messages: a drain holds its channel 1,024 behind, so one more request of
# 2,000 (the most that passes before the hold) still fits, while 8 clients' requests in
# flight (16,000 messages) would lap it four times.
SMALL_RING = {"history_messages": 1024, "buffer_messages": 4096, "buffer_bytes": 4 * 1024 * 1024}
POSTED = re.compile(rb"- - p(\d+)\.(\d+)\.(\d+)-(\d+)\n$")


def _logs_body(client: int, request_no: int, attempt: int, count: int) -> bytes:
    """``count`` frames for FLOOD, each naming its client, request, attempt and index."""
    return b"".join(frame(FLOOD, f"p{client}.{request_no}.{attempt}-{i}\n") for i in range(count))


@pytest.mark.integration
@pytest.mark.parametrize(
    ("overflow", "hold_timeout"),
    [("pushback", 5.0), ("pushback", 0.0), ("drop", 5.0)],
    ids=["pushback-wait", "pushback-503", "drop-control"],
)
async def test_post_logs_under_router_bound_overload_is_answered_204_or_503_never_lost(
    overflow: str, hold_timeout: float
) -> None:
    # Issue 18: POST /logs gets a later 204 or a 503 with Retry-After, never a 204 for data
    # that is then dropped without an L10. Small drain writes to a receiver that reads at
    # once make logplexd itself the bottleneck; 8 clients post 2,000-message requests over
    # real HTTP (token auth) and send a 503'd request again at once, as a new attempt.
    # With hold_timeout 0 a request that finds its channel held is refused at once.
    clients, requests_each, per_request = 8, 6, 2000
    registry = Registry(**SMALL_RING)
    registry.add_token("flood", FLOOD, "app")
    sink = SyslogSink()
    ingest = LogsIngest(registry, hold_timeout=hold_timeout)
    settings = DrainSettings(syslog_batch_bytes=16 * 1024, overflow=overflow)
    auth = credentials("token", FLOOD)
    accepted: list[tuple[int, int, int]] = []  # (client, request, attempt) answered 204
    refused: list[tuple[int, int, int]] = []  # answered 503
    answers: list[tuple[int, str | None]] = []  # every (status, Retry-After)

    async def client(port: int, c: int) -> None:
        for r in range(requests_each):
            for attempt in range(10_000):
                status, headers, _ = await request(
                    port,
                    "POST",
                    "/logs",
                    body=_logs_body(c, r, attempt, per_request),
                    headers=[
                        ("Content-Type", "application/logplex-1"),
                        ("Logplex-Msg-Count", str(per_request)),
                    ],
                    auth=auth,
                )
                answers.append((status, headers.get("retry-after")))
                if status != 503:
                    if status == 204:
                        accepted.append((c, r, attempt))
                    break
                refused.append((c, r, attempt))

    async with trio.open_nursery() as nursery:
        await nursery.start(sink.serve)
        manager = await start_manager(nursery, registry, settings)
        manager.add_drain("flood", 1, "d.flood", f"syslog://127.0.0.1:{sink.port}")
        port = await nursery.start(serve_http, LogsListener(ingest).handle, "127.0.0.1", 0)
        with trio.fail_after(30):
            async with trio.open_nursery() as posters:
                for c in range(clients):
                    posters.start_soon(client, port, c)
            count = _Count(sink)
            total = len(accepted) * per_request
            await sink.wait_for(
                lambda: (
                    count() + stats_of(manager, 1).lost >= total
                    and stats_of(manager, 1).pending_loss == 0
                    and _announced(sink) == stats_of(manager, 1).lost
                ),
                timeout=30,
            )
        nursery.cancel_scope.cancel()

    retry_after = str(max(1, math.ceil(hold_timeout)))
    assert set(answers) <= {(204, None), (503, retry_after)}
    assert len(accepted) == clients * requests_each  # every request got its 204 in the end
    stats = stats_of(manager, 1)
    frames = sink.frames()
    got = Counter(tuple(int(g) for g in m.groups()) for f in frames if (m := POSTED.search(f)))
    if overflow == "drop":
        # The control: the same load without pushback laps the drain (told by L10s), so
        # the exactly-once assertions below would fail.
        assert ingest.stats.waits == 0 and not refused
        assert stats.lost > 0 and _announced(sink) == stats.lost
        assert sum(got.values()) + stats.lost == total
        assert sum(got.values()) < total
        return
    # The router was behind, and POST /logs was held back: it waited, or it was refused.
    assert ingest.stats.waits > 0
    if hold_timeout == 0:
        assert refused
    assert ingest.stats.pushed_back == len(refused)
    assert stats.lost == 0 and stats.dropped == 0
    assert not any(L10.search(f) for f in frames)
    assert len(frames) == sum(got.values())  # nothing but the posted messages
    # Every message of every 204'd attempt exactly once; nothing of a 503'd attempt.
    assert got == Counter((c, r, a, i) for c, r, a in accepted for i in range(per_request))
