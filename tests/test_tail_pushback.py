"""Tails hold their channel instead of being lapped while their reader keeps up (issue 18).

``stream_session`` with ``TailHolds``: a tail an eighth of its ring behind holds the
channel (routing reports it held, so the inputs wait); back under a sixteenth it releases.
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
from logplexd.router import Channel, Registry
from logplexd.tails import SessionParams, TailHolds, stream_session
from tests.helpers.daemon import serve_in, settings_for
from tests.helpers.http import Exchange, create_channel, request
from tests.helpers.metrics import scrape, value
from tests.helpers.syslog import frame, message, send_syslog

TOKEN = "t.aaaa"
RING = 64  # high water 8, released at 4


def routed(i: int) -> bytes:
    return message(TOKEN, f"line {i}", ts="2012-12-10T03:00:00Z", host="host", ps="web.1")


def registry_with_ring() -> tuple[Registry, Channel]:
    registry = Registry(history_messages=RING, buffer_messages=RING)
    registry.add_token("ch", TOKEN, "app")
    channel = registry.channel("ch")
    assert channel is not None
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
    # While it is sent, the inputs add 7 (under the mark of 8): nothing held.
    assert route(registry, 3, 7) == ()
    # The 8th crosses the mark: the batch that crosses it learns it at once.
    assert route(registry, 10, 1) == (channel,)
    assert channel.held
    # The chunk went out; the tail reads the 8 waiting (8 > 4: still behind, still held),
    # and its next chunk goes out.
    with trio.fail_after(5):
        chunk = await tail.__anext__()
    assert chunk.count(b"\n") == 8 and channel.held
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
    assert route(registry, 0, 7) == ()
    assert route(registry, 7, 1) == (channel,)
    holds.sent(hold)
    holds.reading(hold, 5)
    assert channel.held  # over half of the mark: still behind
    holds.reading(hold, 4)
    assert not channel.held
    assert route(registry, 8, 1) == ()
    # A channel whose overflow mode is "drop" is never held.
    channel.overflow = "drop"
    holds.sending(hold, channel.ring.head)
    assert route(registry, 9, 20) == ()
    holds.sent(hold)
    channel.overflow = None
    holds.sending(hold, channel.ring.head)
    assert route(registry, 29, 20) == (channel,)
    holds.close(hold)
    assert not channel.held
    # With pushback off for the daemon, only a channel set to "pushback" holds.
    off = TailHolds(pushback=False)
    hold = off.open(channel)
    off.sending(hold, channel.ring.head)
    assert route(registry, 49, 20) == ()
    channel.overflow = "pushback"
    off.sending(hold, channel.ring.head)
    assert route(registry, 69, 20) == (channel,)
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
        assert route(registry, 0, 10) == (channel,)
        await trio.sleep(0.05)
        assert channel.held  # not yet slow
        await trio.sleep(0.06)
        assert not channel.held and hold.slow and holds.slow_verdicts == 1
        assert route(registry, 10, 1) == ()  # the producer goes on: the ring laps the tail
        holds.sent(hold)
        holds.sending(hold, channel.ring.head)  # still behind and slow: no hold
        assert route(registry, 11, 20) == ()
        holds.sent(hold)
        holds.reading(hold, 0)  # caught up: it may hold again
        holds.sending(hold, channel.ring.head)
        assert route(registry, 31, 10) == (channel,)
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
