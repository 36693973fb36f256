"""The tail pump (issue 18): one task writes the live lines of every tail on a plain TCP
connection, straight to its socket; a tail's own task only finishes what the socket did
not take, and ends the tail.

Each test runs ``stream_session`` with a ``TailPump`` and a ``PairSink`` (a socket pair
standing in for the HTTP server's ``DirectSink``) and checks what the peer end received:
the lines, in order, framed chunk by chunk; the exact L11 of a lapped tail; the end of a
tail. ``test_sessions.py`` and ``test_tail_pushback.py`` run the same through a daemon.
"""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing

from logplexd.native import Batch, parse_frames
from logplexd.router import Channel, Registry
from logplexd.tails import KEEPALIVE, SessionParams, TailHolds, TailPump, stream_session
from tests.helpers.sessions import PairSink
from tests.helpers.syslog import message

TOKEN = "t.aaaa"
L11 = re.compile(rb"Error L11 \(Tail buffer overflow\) -> This tail session dropped (\d+) ")


def line(i: int, ps: str = "web.1") -> bytes:
    return message(TOKEN, f"line {i:06d}", ts="2012-12-10T03:00:00Z", host="host", ps=ps)


def setup(ring: int = 4096) -> tuple[Registry, Channel]:
    registry = Registry(history_messages=ring, buffer_messages=ring)
    registry.add_token("ch", TOKEN, "app")
    channel = registry.channel("ch")
    assert channel is not None
    return registry, channel


def route(registry: Registry, start: int, n: int, ps: str = "web.1") -> None:
    registry.route(parse_frames([line(i, ps) for i in range(start, start + n)]))


def numbers(data: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"line (\d{6})", data)]


async def follow(
    nursery: trio.Nursery,
    registry: Registry,
    channel: Channel,
    pump: TailPump,
    sink: PairSink,
    params: SessionParams | None = None,
    **kwargs,
) -> tuple[list[bytes], trio.Event]:
    """Run a tail from the ring's head; returns what its generator yielded and its end."""
    params = params or SessionParams("ch", tail=True, num=0)
    yielded: list[bytes] = []
    done = trio.Event()
    body = stream_session(
        registry, channel, params, start=(Batch(), channel.ring.head), pump=pump, sink=sink,
        **kwargs,
    )  # fmt: skip

    async def run() -> None:
        try:
            async for chunk in body:
                yielded.append(chunk)
        finally:
            done.set()

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    return yielded, done


async def test_the_pump_writes_every_tails_lines_and_filters_each():
    registry, channel = setup()
    pump = TailPump()
    sinks = [PairSink() for _ in range(3)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump.run)
        a, _ = await follow(nursery, registry, channel, pump, sinks[0])
        b, _ = await follow(nursery, registry, channel, pump, sinks[1])
        web, _ = await follow(
            nursery, registry, channel, pump, sinks[2], SessionParams("ch", tail=True, ps=b"web")
        )
        assert pump.attached == 3
        route(registry, 0, 5)
        route(registry, 5, 5, ps="worker.1")
        route(registry, 10, 5)
        with trio.fail_after(5):
            for sink in sinks[:2]:
                await sink.read_until(b"line 000014", lines=15)
            await sinks[2].read_until(b"line 000014", lines=10)
        for sink in sinks[:2]:
            assert numbers(sink.received) == list(range(15))
            # Framed whole: one chunk per write, each a run of whole lines.
            assert all(chunk.endswith(b"\n") for chunk in sink.chunks())
        assert numbers(sinks[2].received) == [*range(5), *range(10, 15)]
        # Nothing went through the generators: the pump wrote it all.
        assert a == b == web == []
        assert pump.writes == len(sinks[0].chunks()) * 2 + len(sinks[2].chunks())
        nursery.cancel_scope.cancel()
    for sink in sinks:
        await sink.aclose()


async def test_a_write_the_socket_takes_in_part_is_finished_by_the_tails_task_in_order():
    registry, channel = setup(ring=16384)
    pump = TailPump()
    sink = PairSink(sndbuf=4096)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump.run)
        await follow(nursery, registry, channel, pump, sink)
        total = 0
        for _ in range(20):  # ~700 KB: far more than the socket pair buffers
            route(registry, total, 500)
            total += 500
            await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(10):
            await sink.read_until(b"line %06d" % (total - 1), lines=total)
        assert numbers(sink.received) == list(range(total))
        assert not L11.search(sink.received)
        assert pump.handed_back >= 1  # the socket refused a write: the task sent the rest
        sink.chunks()  # the rest of a chunk went out before the next chunk
        nursery.cancel_scope.cancel()
    await sink.aclose()


async def test_a_lapped_tail_gets_the_exact_l11_count():
    registry, channel = setup(ring=64)
    channel.overflow = "drop"  # lapped, not held
    pump = TailPump(holds=TailHolds())
    sink = PairSink(sndbuf=4096)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump.run)
        await follow(nursery, registry, channel, pump, sink)
        total = 0
        for _ in range(40):  # the reader reads nothing meanwhile
            route(registry, total, 50)
            total += 50
            await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(10):
            await sink.read_until(b"line %06d" % (total - 1))
        got = numbers(sink.received)
        lost = sum(int(n) for n in L11.findall(sink.received))
        assert lost > 0
        assert len(got) + lost == total
        assert got == sorted(got) and len(set(got)) == len(got)
        nursery.cancel_scope.cancel()
    await sink.aclose()


async def test_a_removed_channel_ends_the_tail_after_its_last_lines():
    registry, channel = setup()
    pump = TailPump()
    sink = PairSink()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump.run)
        _, done = await follow(nursery, registry, channel, pump, sink)
        route(registry, 0, 3)
        registry.drop_channel("ch")
        with trio.fail_after(5):
            await done.wait()
            await sink.read_until(b"line 000002")
        assert numbers(sink.received) == [0, 1, 2]
        assert pump.attached == 0 and not channel.watched_by(pump)
        nursery.cancel_scope.cancel()
    await sink.aclose()


async def test_a_client_gone_ends_the_tail_with_a_broken_stream():
    registry, channel = setup()
    pump = TailPump()
    sink = PairSink()
    params = SessionParams("ch", tail=True, num=0)
    body = stream_session(registry, channel, params, start=(Batch(), 0), pump=pump, sink=sink)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump.run)
        await sink.peer.aclose()
        route(registry, 0, 3)
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await body.__anext__()
        assert pump.attached == 0
        nursery.cancel_scope.cancel()
    await sink.aclose()


async def test_an_idle_event_stream_gets_its_keepalive_and_a_timed_tail_ends(
    autojump_clock: trio.testing.MockClock,
):
    registry, channel = setup()
    pump = TailPump()
    sink = PairSink()
    params = SessionParams("ch", tail=True, num=0, max_duration=10.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump.run)
        start = trio.current_time()
        yielded, done = await follow(
            nursery, registry, channel, pump, sink, params, events=True, keepalive=3.0
        )
        with trio.fail_after(60):
            await done.wait()
        # Idle for 10 s with a keep-alive every 3 s: three, then the end at 10 s.
        assert yielded == [KEEPALIVE] * 3
        assert 10.0 <= trio.current_time() - start < 10.1
        nursery.cancel_scope.cancel()
    await sink.aclose()
