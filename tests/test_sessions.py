"""Sessions: history selection and filters, live tail, lapped readers and L11."""

import pytest
import trio

from logplexd.native import parse_frames
from logplexd.router.registry import Registry
from logplexd.tails.sessions import (
    SessionParamError,
    SessionParams,
    channel_logs,
    parse_session_params,
    stream_session,
)
from tests.helpers.syslog import message

TOKEN = "t.aaaa"


def frame(i: int, ps: str = "web.1", app: str = TOKEN) -> bytes:
    """Message ``i`` ("line i"), stamped ``i`` seconds into the minute (unframed, as routed)."""
    return message(app, f"line {i}", ts=f"2012-12-10T03:00:{i:02d}Z", host="host", ps=ps)


def line(i: int, ps: str = "web.1", app: str = "app") -> bytes:
    return f"2012-12-10T03:00:{i:02d}Z {app}[{ps}]: line {i}\n".encode()


def make(history_messages: int = 1500, buffer_messages: int | None = None) -> Registry:
    registry = Registry(history_messages=history_messages, buffer_messages=buffer_messages)
    registry.add_token("ch", TOKEN, "app")
    return registry


def test_params_decoding():
    assert parse_session_params({"channel_id": "ch"}) == SessionParams("ch")
    p = parse_session_params({"channel_id": 12, "num": "20", "tail": False, "ps": "web"})
    assert (p.channel, p.num, p.tail, p.ps) == ("12", 20, False, b"web")
    assert parse_session_params({"channel_id": "c", "num": 99999}).num == 1500
    assert parse_session_params({"channel_id": "c", "num": "x"}).num == 100
    assert parse_session_params({"channel_id": "c", "tail": True}).tail
    assert parse_session_params({"channel_id": "c", "tail": "false"}).tail
    assert not parse_session_params({"channel_id": "c", "tail": None}).tail
    with pytest.raises(SessionParamError):
        parse_session_params({"num": 1})
    # A tail's time limit (Platform log-sessions); anything but a positive number: none.
    assert parse_session_params({"channel_id": "c", "max_duration": 3600}).max_duration == 3600.0
    for bad in (0, -1, True, "60", None):
        assert parse_session_params({"channel_id": "c", "max_duration": bad}).max_duration is None


async def collect(agen, n_chunks: int) -> list[bytes]:
    out = []
    async for chunk in agen:
        out.append(chunk)
        if len(out) == n_chunks:
            break
    return out


async def test_history_newest_num_with_filters():
    registry = make()
    frames = [frame(i, ps=("web.%d" if i % 2 else "worker.%d") % (i % 3)) for i in range(30)]
    registry.route(parse_frames(frames))
    ch = registry.channel("ch")
    params = SessionParams("ch", num=4, ps=b"web")
    chunks = await collect(stream_session(registry, ch, params), 10)
    assert chunks == [b"".join(line(i, ps=f"web.{i % 3}") for i in (23, 25, 27, 29))]
    params = SessionParams("ch", num=2, ps=b"web.1", source=b"app")
    chunks = await collect(stream_session(registry, ch, params), 10)
    assert chunks == [line(19, "web.1") + line(25, "web.1")]
    assert await collect(stream_session(registry, ch, SessionParams("ch", source=b"x")), 9) == []


async def test_tail_streams_new_lines_and_ends_when_channel_is_deleted():
    registry = make()
    registry.route(parse_frames([frame(1)]))
    ch = registry.channel("ch")
    got: list[bytes] = []

    async def reader():
        async for chunk in stream_session(registry, ch, SessionParams("ch", tail=True)):
            got.append(chunk)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            registry.route(parse_frames([frame(2), frame(3)]))
            await trio.testing.wait_all_tasks_blocked()
            registry.route(parse_frames([frame(4)]))
            await trio.testing.wait_all_tasks_blocked()
            registry.drop_channel("ch")
    # Chunk boundaries depend on the tail's short linger; the bytes and their order do not.
    assert b"".join(got) == line(1) + line(2) + line(3) + line(4)
    assert got[0] == line(1)


async def test_lapped_tail_gets_l11_with_exact_count_then_continues():
    registry = make(history_messages=10, buffer_messages=10)
    ch = registry.channel("ch")
    agen = stream_session(registry, ch, SessionParams("ch", tail=True), wall_clock=lambda: 0.0)
    registry.route(parse_frames([frame(0)]))
    assert await agen.__anext__() == line(0)
    # The reader stops reading while 25 lines arrive into a ring of 10: 15 are lost.
    registry.route(parse_frames([frame(i) for i in range(1, 26)]))
    assert await agen.__anext__() == (
        b"1970-01-01T00:00:00+00:00 logplex[1]: Error L11 (Tail buffer overflow) -> "
        b"This tail session dropped 15 messages since 1970-01-01T00:00:00+00:00.\n"
    )
    assert await agen.__anext__() == b"".join(line(i) for i in range(16, 26))
    await agen.aclose()


def test_channel_logs_counts_only_frames_in_the_body():
    registry = make()
    registry.route(
        parse_frames([frame(1), b"<1>1 aaaa bbbb " + TOKEN.encode() + b" dddd", frame(2)])
    )
    body, count = channel_logs(registry, registry.channel("ch"), 100)
    assert count == 2
    assert body == (
        b"52 <134>1 2012-12-10T03:00:01Z host app web.1 - line 1\n"
        b"52 <134>1 2012-12-10T03:00:02Z host app web.1 - line 2\n"
    )


async def test_history_is_the_newest_history_messages_of_a_deeper_buffer():
    registry = make(history_messages=5, buffer_messages=50)
    registry.route(parse_frames([frame(i) for i in range(30)]))
    ch = registry.channel("ch")
    assert len(ch.ring) == 30  # drains and tails can still catch up on all 30
    chunks = await collect(stream_session(registry, ch, SessionParams("ch", num=100)), 9)
    assert chunks == [b"".join(line(i) for i in range(25, 30))]
    body, count = channel_logs(registry, ch, 100)
    assert count == 5 and body.count(b"\n") == 5


async def test_tail_with_max_duration_ends_then(mock_clock):
    registry = make()
    ch = registry.channel("ch")
    got: list[bytes] = []
    done = trio.Event()

    async def reader():
        params = SessionParams("ch", num=0, tail=True, max_duration=10.0)
        async for chunk in stream_session(registry, ch, params):
            got.append(chunk)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(9.9)
        registry.route(parse_frames([frame(1)]))
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(0.01)  # the tail's linger
        await trio.testing.wait_all_tasks_blocked()
        assert got == [line(1)] and not done.is_set()
        mock_clock.jump(0.1)
        await trio.testing.wait_all_tasks_blocked()
        assert done.is_set()
