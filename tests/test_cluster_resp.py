"""The data plane's own Redis connections: RESP without I/O (``_native/resp.pyx``, against
the pure-Python oracle in helpers/reference.py), and ``ServerLink`` against a real
redis-server (pipelines, login, a cancelled call, a closed or absent server)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from logplexd.cluster._direct import (
    SEND_BUFFERS,
    THREAD_SEND_BYTES,
    CongestionControl,
    DirectLinks,
    RespConnectionError,
    RespUnreachable,
    ServerLink,
    paced,
    parse_address,
    send_gathered,
)
from logplexd.native import (
    NEED_DATA,
    RespError,
    RespProtocolError,
    RespReader,
    pack_command,
    pack_commands,
    pack_pipeline,
)
from logplexd.store import parse_redis_url

from .helpers.redis import RedisServer, eventually, require_redis
from .helpers.reference import reference_resp_command, reference_resp_replies

MAX_ARRAY_ITEMS = 1 << 24


# -- sans-IO ------------------------------------------------------------------------------------
def test_a_command_is_an_array_of_bulk_strings() -> None:
    assert pack_command(["SET", b"k\r\n", 42, "\u00e9", -7, 0, bytearray(b"ba")]) == (
        b"*7\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n42\r\n$2\r\n\xc3\xa9\r\n"
        b"$2\r\n-7\r\n$1\r\n0\r\n$2\r\nba\r\n"
    )
    assert pack_command([memoryview(b"xyz")[1:], b"", -(2**63), 2**63 - 1]) == (
        b"*4\r\n$2\r\nyz\r\n$0\r\n\r\n$20\r\n-9223372036854775808\r\n$19\r\n9223372036854775807\r\n"
    )
    assert pack_commands([["PING"], ["GET", "k"]]) == (
        b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    )
    with pytest.raises(TypeError):
        pack_command(["SET", "k", 1.5])  # a float's spelling is the caller's to choose
    with pytest.raises(TypeError):
        pack_command(["SET", "k", True])
    with pytest.raises(OverflowError):
        pack_command(["SET", "k", 2**64])


def test_a_large_argument_is_sent_from_where_it_is() -> None:
    frames = b"f" * 70_000
    view = memoryview(b"v" * 100_000)
    commands = [["EVALSHA", "abc", 1, "k", frames], ["XADD", "s", "*", "f", view, "n", 1]]
    pieces = pack_pipeline(commands)
    assert pieces[1] is frames and pieces[3] is view  # by reference, not copied
    assert len(pieces) == 5
    assert b"".join(pieces) == pack_commands(commands)
    assert pieces[0].endswith(b"$70000\r\n") and pieces[2].startswith(b"\r\n")

    # A str (a str subclass too) or an int is never by reference, whatever its size;
    # below ``large`` nothing is.
    class Name(str):
        pass

    named = Name("n" * 70_000)
    assert pack_pipeline([["SET", "k", named]]) == [pack_command(["SET", "k", "n" * 70_000])]
    assert pack_pipeline([["SET", "k", "s" * 70_000]]) == [pack_command(["SET", "k", "s" * 70_000])]
    assert len(pack_pipeline(commands, large=200_000)) == 1


# Replies as the server sends them, and what the reader makes of them.
REPLIES: list[tuple[bytes, Any]] = [
    (b"+OK\r\n", b"OK"),
    (b":-12\r\n", -12),
    (b":-9223372036854775808\r\n", -(2**63)),
    (b"$5\r\nab\r\nc\r\n", b"ab\r\nc"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (
        # An XREAD reply: streams, entries, fields; an error inside a script's table.
        b"*2\r\n*2\r\n$1\r\nk\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nn\r\n$1\r\n1\r\n"
        b"*3\r\n:1\r\n$-1\r\n*1\r\n+x\r\n",
        [[b"k", [[b"1-0", [b"n", b"1"]]]], [1, None, [b"x"]]],
    ),
]


def _read_all(chunks: list[bytes]) -> list[Any]:
    reader = RespReader()
    out: list[Any] = []
    for chunk in chunks:
        reader.feed(chunk)
        while (reply := reader.next_reply()) is not NEED_DATA:
            out.append(reply)
    assert reader.buffered == 0
    return out


def _splits(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 6))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_replies_whole_byte_by_byte_and_in_random_splits() -> None:
    wire = b"".join(raw for raw, _ in REPLIES)
    expected = [value for _, value in REPLIES]
    assert _read_all([wire]) == expected
    assert _read_all([wire[i : i + 1] for i in range(len(wire))]) == expected
    rng = random.Random(7)
    for _ in range(200):
        assert _read_all(_splits(wire, rng)) == expected


def test_an_error_reply_is_a_value_in_its_place() -> None:
    (first, second, third) = _read_all([b"+OK\r\n-NOSCRIPT No matching script\r\n:3\r\n"])
    assert (first, third) == (b"OK", 3)
    assert isinstance(second, RespError)
    assert second.kind == "NOSCRIPT" and second.message == "NOSCRIPT No matching script"


@pytest.mark.parametrize(
    "garbage",
    [
        b"?what\r\n",
        b"$3\r\nabcd\r\n",  # longer than it said
        b"$x\r\n",
        b":1.5\r\n",
        b":9223372036854775808\r\n",
        b"+no CR\n",
        b"$-2\r\n",
        b"*%d\r\n" % (MAX_ARRAY_ITEMS + 1),
        b"$%d\r\n" % (1 << 40),
        b"+" + b"a" * (70 * 1024),  # a line without an end
    ],
)
def test_what_is_not_resp_is_a_protocol_error(garbage: bytes) -> None:
    reader = RespReader()
    reader.feed(garbage)
    with pytest.raises(RespProtocolError):
        reader.next_reply()


def test_a_large_reply_in_pieces_is_parsed_as_it_comes() -> None:
    # 2,000 items arriving 1 KB at a time: what is parsed is consumed, so no more than the
    # item cut by the piece's end waits unparsed (a parser restarting at the reply's start
    # with every piece would hold the whole reply and read it ~100 times).
    items = [b"x%d" % i for i in range(2000)]
    wire = pack_command(items)
    reader = RespReader()
    for start in range(0, len(wire), 1024):
        reader.feed(wire[start : start + 1024])
        reply = reader.next_reply()
        if start + 1024 < len(wire):
            assert reply is NEED_DATA
            assert reader.buffered < 16
    assert reply == items


def test_a_buffer_grown_by_one_large_reply_is_not_kept() -> None:
    reader = RespReader()
    big = b"b" * (6 * 1024 * 1024)
    reader.feed(pack_command([big]))
    assert reader.next_reply() == [big]
    assert reader.capacity > 6 * 1024 * 1024
    reader.feed(b"+OK\r\n")
    assert reader.next_reply() == b"OK"
    assert reader.capacity <= 4 * 1024 * 1024


@given(st.lists(st.binary(max_size=40), max_size=8), st.randoms(use_true_random=False))
def test_any_command_packs_as_the_oracle_and_reads_back(
    items: list[bytes], rng: random.Random
) -> None:
    # A command is itself a RESP array of bulk strings: the reader reads back what
    # pack_command wrote, however the bytes are cut.
    wire = pack_command(items)
    assert wire == reference_resp_command(items)
    assert b"".join(pack_pipeline([items, items], large=8)) == wire + wire
    assert _read_all(_splits(wire, rng) if len(wire) > 1 else [wire]) == [items]


# Reply trees as Redis sends them: the wire bytes, and the value the oracle must agree on.
_scalars = st.one_of(
    st.binary(max_size=30).map(lambda b: b"$%d\r\n%s\r\n" % (len(b), b)),
    st.integers(-(2**63) + 1, 2**63 - 1).map(lambda n: b":%d\r\n" % n),
    st.binary(max_size=20)
    .filter(lambda b: b"\r" not in b and b"\n" not in b)
    .map(lambda b: b"+%s\r\n" % b),
    st.text(max_size=20)
    .filter(lambda t: "\r" not in t and "\n" not in t)
    .map(lambda t: b"-ERR %s\r\n" % t.encode()),
    st.just(b"$-1\r\n"),
    st.just(b"*-1\r\n"),
)
_replies = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5).map(
        lambda items: b"*%d\r\n%s" % (len(items), b"".join(items))
    ),
    max_leaves=30,
)


def _plain(value: Any) -> Any:
    """A native reply in the oracle's terms (an error as ("error", message))."""
    if isinstance(value, RespError):
        return ("error", value.message)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


@given(st.lists(_replies, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_replies_read_as_the_oracle_reads_them_however_cut(
    replies: list[bytes], rng: random.Random
) -> None:
    wire = b"".join(replies)
    expected = reference_resp_replies(wire)
    assert len(expected) == len(replies)
    chunks = _splits(wire, rng) if len(wire) > 1 else [wire]
    assert [_plain(value) for value in _read_all(chunks)] == expected


def test_a_cluster_node_name_is_an_address() -> None:
    assert parse_address("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert parse_address("[::1]:7001") == ("::1", 7001)


# -- against redis-server -------------------------------------------------------------------------
@pytest.fixture
def plain_redis(tmp_path: Path) -> Any:
    require_redis()
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _link(server: RedisServer, url: str | None = None) -> ServerLink:
    target = parse_redis_url(url or server.url)
    return ServerLink(target.nodes[0], target, "logplexd-data:test")


async def test_a_pipeline_gets_every_reply_in_order_and_errors_in_place(
    plain_redis: RedisServer,
) -> None:
    link = _link(plain_redis)
    with trio.fail_after(5):
        replies = await link.call(
            [["SET", "k", b"v\x00"], ["GET", "k"], ["INCR", "k"], ["CLIENT", "GETNAME"]]
        )
    assert replies[:2] == [b"OK", b"v\x00"]
    assert isinstance(replies[2], RespError) and replies[2].kind == "ERR"
    assert replies[3] == b"logplexd-data:test"
    assert link.opened == 1
    link.close()


def _system_congestion_control() -> str:
    return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()


@pytest.mark.parametrize("name", ["reno", "cubic", ""])
async def test_the_links_to_redis_use_the_configured_tcp_congestion_control(
    plain_redis: RedisServer, name: str
) -> None:
    """``redis_tcp_congestion``: every link of the data plane gets it (reno and cubic are
    always allowed to unprivileged sockets); "" keeps the system's."""
    target = parse_redis_url(plain_redis.url)
    links = DirectLinks(target, "logplexd-data:test", congestion=CongestionControl(name))
    with trio.fail_after(5):
        for purpose in ("write", "follow"):
            link = links.link(target.nodes[0], purpose)
            assert link.congestion_control is None  # nothing open yet
            assert await link.call([["PING"]]) == [b"PONG"]
            assert link.congestion_control == (name or _system_congestion_control())
    links.close()


def test_only_bbr_paces_a_links_sends() -> None:
    assert paced("bbr") and paced("bbr2")
    assert not paced("cubic") and not paced("reno") and not paced("") and not paced(None)


@pytest.mark.parametrize("name", ["reno", "cubic", "bbr"])
async def test_a_large_request_goes_through_a_worker_thread_only_on_a_paced_link(
    plain_redis: RedisServer, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush-sized request is written from a worker thread on a link the kernel paces
    (BBR: its timers leave the loop), and by the event loop itself on any other: there the
    thread's hand-offs cost more than the copy (bench/RESULTS.md). Redis gets it whole
    either way. (bbr where the kernel has it; refused, the link keeps the system's and
    goes by that.)"""
    threaded: list[int] = []
    run_sync = trio.to_thread.run_sync

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        threaded.append(1)
        return await run_sync(fn, *args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", counted)
    target = parse_redis_url(plain_redis.url)
    links = DirectLinks(target, "logplexd-data:test", congestion=CongestionControl(name))
    value = bytes(range(256)) * (4 * THREAD_SEND_BYTES // 256)
    with trio.fail_after(10):
        link = links.link(target.nodes[0], "write")
        assert await link.call([["PING"]]) == [b"PONG"]
        threaded.clear()
        assert await link.call([["SET", "big", value], ["STRLEN", "big"]]) == [b"OK", len(value)]
        assert await link.call([["GET", "big"]]) == [value]
    effective = link.congestion_control
    if name != "bbr":
        assert effective == name
    assert threaded == ([1] if paced(effective) else [])
    links.close()


async def test_a_congestion_control_the_kernel_refuses_leaves_the_systems_said_once(
    plain_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Said once for all the links of a data plane, those of its next connection too (a
    Redis restarted: new links)."""
    target = parse_redis_url(plain_redis.url)
    congestion = CongestionControl("nosuchcc")
    with trio.fail_after(5):
        for _ in range(2):
            links = DirectLinks(target, "logplexd-data:test", congestion=congestion)
            for purpose in ("write", "follow", "report"):
                link = links.link(target.nodes[0], purpose)
                assert await link.call([["PING"]]) == [b"PONG"]
                assert link.congestion_control == _system_congestion_control()
            links.close()
    refused = [r for r in caplog.records if "nosuchcc" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in caplog.records]
    assert "keep the system's" in refused[0].getMessage()


async def test_a_link_logs_in_and_selects_its_database(tmp_path: Path) -> None:
    require_redis()
    server = RedisServer(tmp_path, extra=("--requirepass", "s3cret"))
    server.start()
    try:
        link = _link(server, f"redis://:s3cret@127.0.0.1:{server.port}/3")
        with trio.fail_after(5):
            assert await link.call([["SET", "k", "in-3"]]) == [b"OK"]
            zero = _link(server, f"redis://:s3cret@127.0.0.1:{server.port}/0")
            assert await zero.call([["GET", "k"]]) == [None]
            assert await link.call([["GET", "k"]]) == [b"in-3"]
        link.close()
        zero.close()
        wrong = _link(server, f"redis://:nope@127.0.0.1:{server.port}/0")
        with trio.fail_after(5), pytest.raises(RespError):
            await wrong.call([["PING"]])
        assert wrong.opened == 1
    finally:
        server.kill()


async def test_a_pipeline_larger_than_the_socket_takes_arrives_whole(
    plain_redis: RedisServer,
) -> None:
    # 3,000 values, 1 KB ones packed into the request and 2 KB ones sent from where they
    # are (several ``sendmsg`` of 512 buffers, each cut where the socket stopped taking),
    # and one of 8 MB (more than the socket takes at once): every byte arrives, in order.
    link = _link(plain_redis)
    values = [bytes([65 + i % 26]) * (1024 << (i % 2)) + b"%d" % i for i in range(3000)]
    big = bytes(range(256)) * (32 * 1024)
    commands: list[list[object]] = [["SET", f"k{i}", v] for i, v in enumerate(values)]
    commands.append(["SET", "big", memoryview(big)])
    with trio.fail_after(30):
        assert await link.call(commands) == [b"OK"] * 3001
        got = await link.call([["GET", f"k{i}"] for i in range(0, 3000, 7)] + [["GET", "big"]])
    assert got[:-1] == values[::7]
    assert got[-1] == big
    link.close()


@pytest.mark.parametrize("thread_bytes", [0, 1, THREAD_SEND_BYTES])
async def test_gathered_pieces_arrive_whole_and_in_order_however_the_socket_takes_them(
    thread_bytes: int,
) -> None:
    """``send_gathered``: more pieces than one ``sendmsg`` takes (SEND_BUFFERS), of every
    size, some empty, over a socket that takes a few KB at a time: the peer gets exactly
    their bytes, in order, whether the event loop writes them all (``thread_bytes`` 0) or
    a worker thread writes what the socket takes first and the loop the rest."""
    rng = random.Random(7)
    pieces: list[Any] = []
    for i in range(3 * SEND_BUFFERS + 17):
        size = rng.choice((0, 1, 5, 300, 2048, 70_000))
        pieces.append(bytes([i % 251]) * size if i % 3 else bytearray(rng.randbytes(size)))
    expected = b"".join(bytes(p) for p in pieces)
    a, b = trio.socket.socketpair()
    a.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 4096)
    got = bytearray()

    async def read() -> None:
        while len(got) < len(expected):
            got.extend(await b.recv(rng.choice((1, 100, 5000))))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await send_gathered(a, pieces, thread_bytes)
    assert bytes(got) == expected
    a.close()
    b.close()


class _LoopSendRefused:
    """A socket whose event-loop ``sendmsg`` must not be used."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()

    async def sendmsg(self, *_: Any) -> int:
        raise AssertionError("the event loop sent what the worker thread could")


async def test_a_large_request_the_socket_takes_at_once_is_written_by_the_worker_thread() -> None:
    """A request of THREAD_SEND_BYTES or more that fits in the socket's buffer is written
    whole from the worker thread (the loop's ``sendmsg`` is never called), in order; the
    socket the caller holds stays open and usable after it."""
    pieces = [b"*3\r\n", bytes(range(256)) * 400, b"", b"tail" * 1000]
    expected = b"".join(pieces)
    assert len(expected) >= THREAD_SEND_BYTES
    a, b = trio.socket.socketpair()
    a.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 4 * len(expected))
    with trio.fail_after(10):
        await send_gathered(_LoopSendRefused(a), pieces)  # type: ignore[arg-type]
        got = bytearray()
        while len(got) < len(expected):
            got.extend(await b.recv(65536))
        assert bytes(got) == expected
        await send_gathered(a, [b"after"])  # the thread closed only its own descriptor
        assert await b.recv(100) == b"after"
    a.close()
    b.close()


async def test_a_cancelled_call_leaves_no_reply_behind_for_the_next(
    plain_redis: RedisServer,
) -> None:
    link = _link(plain_redis)
    with trio.move_on_after(0.2):
        # A read blocking for 2 s is cancelled after 0.2 s; its reply would come later.
        await link.call([["XREAD", "BLOCK", 2000, "STREAMS", "s", "$"]])
    with trio.fail_after(5):
        assert await link.call([["ECHO", "after"]]) == [b"after"]
    assert link.opened == 2  # the cancelled call's connection was dropped, not reused
    link.close()


async def test_a_connection_the_server_closed_between_calls_is_opened_again(
    tmp_path: Path,
) -> None:
    require_redis()
    server = RedisServer(tmp_path)
    server.start()
    link = _link(server)
    try:
        with trio.fail_after(5):
            assert await link.call([["PING"]]) == [b"PONG"]
            server.command("CLIENT", "KILL", "TYPE", "normal")
            # Not an error: the link sees the closed connection before it sends.
            assert await link.call([["PING"]]) == [b"PONG"]
        assert link.opened == 2
        server.kill()
        with trio.fail_after(5), pytest.raises(RespUnreachable):
            await link.call([["PING"]])  # nothing listens: nothing was sent
        server.start()  # restarted on its port: the next call reaches it
        with trio.fail_after(5):
            assert await link.call([["PING"]]) == [b"PONG"]
    finally:
        link.close()
        server.kill()


async def test_a_connection_closed_during_a_call_is_an_error(plain_redis: RedisServer) -> None:
    link = _link(plain_redis)

    async def kill_when_blocked() -> None:
        await eventually(lambda: b"cmd=xread" in plain_redis.command("CLIENT", "LIST"), 5)
        plain_redis.command("CLIENT", "KILL", "TYPE", "normal")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_when_blocked)
        with trio.fail_after(5), pytest.raises(RespConnectionError):
            await link.call([["XREAD", "BLOCK", 4000, "STREAMS", "s", "$"]])
    with trio.fail_after(5):
        assert await link.call([["PING"]]) == [b"PONG"]
    link.close()


async def test_links_are_one_per_server_and_purpose(plain_redis: RedisServer) -> None:
    target = parse_redis_url(plain_redis.url)
    links = DirectLinks(target, "n")
    address = target.nodes[0]
    assert links.link(address, "write") is links.link(address, "write")
    reader = links.link(address, "read")
    assert reader is not links.link(address, "write")
    async with trio.open_nursery() as nursery:
        # A blocking read on one purpose does not hold up a call on another.
        nursery.start_soon(reader.call, [["XREAD", "BLOCK", 1000, "STREAMS", "s", "$"]])
        with trio.fail_after(0.5):
            assert await links.link(address, "write").call([["PING"]]) == [b"PONG"]
        nursery.cancel_scope.cancel()
    assert len(links) == 2
    links.forget(("127.0.0.1", 1))  # no such server: nothing changes
    assert len(links) == 2
    links.forget(address)
    assert len(links) == 0
    links.close()
