"""Tails hold their channel instead of being lapped while their reader keeps up (issue 18).

``stream_session`` with ``TailHolds``: a tail ``high_water`` (a quarter of its ring) behind
holds the channel (routing reports it held, so the inputs wait); back under half of that it
releases.
A chunk its reader has not taken ``slow_after`` after it was handed over makes the tail
slow: ``TailHolds.run`` releases the hold, and the tail is lapped with its exact L11 as
before. Through a whole daemon: a syslog flood many rings deep reaches a fast tail reader
whole and in order, with the input held, not dropped.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import trio
import trio.testing

from logplexd.daemon import Daemon
from logplexd.native import Batch, parse_frames
from logplexd.router import Channel, Registry, high_water
from logplexd.tails import SessionParams, TailHolds, stream_session
from tests.helpers.daemon import serve_in, settings_for
from tests.helpers.http import Exchange, create_channel, request
from tests.helpers.metrics import scrape, value
from tests.helpers.syslog import frame, message, send_syslog

TOKEN = "t.aaaa"
RING = 64
HIGH = 16  # high_water of an empty ring of 64: held 16 behind, released at 8


def routed(i: int) -> bytes:
    return message(TOKEN, f"line {i}", ts="2012-12-10T03:00:00Z", host="host", ps="web.1")


def registry_with_ring() -> tuple[Registry, Channel]:
    registry = Registry(history_messages=RING, buffer_messages=RING)
    registry.add_token("ch", TOKEN, "app")
    channel = registry.channel("ch")
    assert channel is not None
    assert high_water(channel.ring) == HIGH
    return registry, channel


def route(registry: Registry, start: int, n: int) -> tuple[Channel, ...]:
    return registry.route(parse_frames([routed(i) for i in range(start, start + n)])).held


async def test_a_tail_sending_holds_its_channel_once_the_inputs_pass_its_mark():
    registry, channel = registry_with_ring()
    holds = TailHolds()
    # From ring position 0, no history: the first chunk is the tail's own read.
    tail = stream_session(
        registry, channel, SessionParams("ch", tail=True), holds=holds, start=(Batch(), 0)
    )
    route(registry, 0, 3)
    with trio.fail_after(5):
        chunk = await tail.__anext__()  # 3 lines; now "being sent" (the generator waits)
    assert chunk.count(b"\n") == 3
    # While it is sent, the inputs add HIGH - 1 (under the mark): nothing held.
    assert route(registry, 3, HIGH - 1) == ()
    # The next crosses the mark: the batch that crosses it learns it at once.
    assert route(registry, 2 + HIGH, 1) == (channel,)
    assert channel.held
    # The chunk went out; the tail reads the HIGH waiting (over half the mark: still
    # behind, still held), and its next chunk goes out.
    with trio.fail_after(5):
        chunk = await tail.__anext__()
    assert chunk.count(b"\n") == HIGH and channel.held
    # Caught up at its next read (nothing waiting): released.
    with trio.move_on_after(0.05):
        await tail.__anext__()  # reads nothing, releases, then waits for lines
    assert not channel.held
    await tail.aclose()
    assert not channel.held and holds.holds == 1


async def test_hold_marks_and_overflow_modes():
    registry, channel = registry_with_ring()
    holds = TailHolds()
    hold = holds.open(channel)
    holds.sending(hold, channel.ring.head)
    assert route(registry, 0, HIGH - 1) == ()
    assert route(registry, HIGH - 1, 1) == (channel,)
    holds.sent(hold)
    holds.reading(hold, HIGH // 2 + 1)
    assert channel.held  # over half of the mark: still behind
    holds.reading(hold, HIGH // 2)
    assert not channel.held
    n = HIGH
    assert route(registry, n, 1) == ()
    n += 1
    # A channel whose overflow mode is "drop" is never held.
    channel.overflow = "drop"
    holds.sending(hold, channel.ring.head)
    assert route(registry, n, HIGH + 4) == ()
    n += HIGH + 4
    holds.sent(hold)
    channel.overflow = None
    holds.sending(hold, channel.ring.head)
    assert route(registry, n, HIGH + 4) == (channel,)
    n += HIGH + 4
    holds.close(hold)
    assert not channel.held
    # With pushback off for the daemon, only a channel set to "pushback" holds.
    off = TailHolds(pushback=False)
    hold = off.open(channel)
    off.sending(hold, channel.ring.head)
    assert route(registry, n, HIGH + 4) == ()
    n += HIGH + 4
    channel.overflow = "pushback"
    off.sending(hold, channel.ring.head)
    assert route(registry, n, HIGH + 4) == (channel,)
    off.close(hold)


async def test_a_reader_that_does_not_take_a_chunk_is_judged_slow_and_holds_nothing(
    autojump_clock: trio.testing.MockClock,
):
    registry, channel = registry_with_ring()
    holds = TailHolds(slow_after=0.1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(holds.run)
        hold = holds.open(channel)
        holds.sending(hold, channel.ring.head)  # its reader takes nothing
        assert route(registry, 0, HIGH + 2) == (channel,)
        await trio.sleep(0.05)
        assert channel.held  # not yet slow
        await trio.sleep(0.06)
        assert not channel.held and hold.slow and holds.slow_verdicts == 1
        n = HIGH + 2
        assert route(registry, n, 1) == ()  # the producer goes on: the ring laps the tail
        n += 1
        holds.sent(hold)
        holds.sending(hold, channel.ring.head)  # still behind and slow: no hold
        assert route(registry, n, 2 * HIGH) == ()
        n += 2 * HIGH
        holds.sent(hold)
        holds.reading(hold, 0)  # caught up: it may hold again
        holds.sending(hold, channel.ring.head)
        assert route(registry, n, HIGH + 2) == (channel,)
        holds.sent(hold)  # this chunk went out at once: never judged
        await trio.sleep(1)
        assert channel.held and holds.slow_verdicts == 1
        holds.close(hold)
        assert not channel.held
        nursery.cancel_scope.cancel()


# -- a whole daemon ------------------------------------------------------------------------


LINE = re.compile(rb"flood (\d+)\n")


async def test_a_syslog_flood_many_rings_deep_reaches_a_fast_tail_whole(tmp_path: Path):
    settings = dataclasses.replace(
        settings_for(tmp_path), history_messages=2048, channel_buffer_messages=2048
    )
    daemon = Daemon(settings)
    total = 40_000  # 20 rings (one read of the input, ~1,000 messages, fits in one)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            ports = await nursery.start(serve_in, daemon, trio.CancelScope())
            token = await create_channel(ports)
            status, _, body = await request(
                ports.api, "POST", "/v2/sessions", body={"channel_id": "app", "tail": True}
            )
            assert status == 201, body
            path = "/" + json.loads(body)["url"].split("/", 3)[3]
            tail = await Exchange.open(ports.api, "GET", path)
            assert tail.status == 200
            data = b"".join(frame(token, f"flood {i}") for i in range(total))
            nursery.start_soon(send_syslog, ports.syslog, data)
            got = bytearray()
            while len(LINE.findall(got)) < total:
                piece = await tail.chunk()
                assert piece is not None
                got += piece
                assert b"L11" not in got
            numbers = [int(n) for n in LINE.findall(got)]
            assert numbers == list(range(total))
            assert daemon.syslog.stats.pushbacks > 0
            # The pump wrote the tail (a plain TCP HTTP/1.1 reader), and its holds held.
            found = await scrape(ports.api)
            assert value(found, "logplexd_tail_holds_total") == daemon.tail_holds.holds > 0
            assert value(found, "logplexd_tail_pumped") == 1
            assert value(found, "logplexd_tail_pump_writes_total") > 0
            assert 0.01 <= value(found, "logplexd_tail_pump_linger_seconds") <= 0.015
            nursery.cancel_scope.cancel()
