"""Session streams as server-sent events (issue 20: ``heroku logs`` opens ``logplex_url`` as
an ``EventSource``).

The format is sans-IO (``tails.sse_events``, and the native ``session_lines(sse=True)`` held
to it); the read route picks it by ``Accept`` and keeps plain text otherwise; one test goes
over a real socket.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from logplexd.api import ControlApi, ReadRoutes, Rods, RodState, mount_platform, run_api
from logplexd.native import parse_frames, session_lines
from logplexd.router import Registry
from logplexd.store import EmbeddedStore, open_store
from logplexd.tails import KEEPALIVE, RECONNECT_AT_ONCE, TailSessions, sse_event, sse_events
from logplexd.web import Request, Response
from tests.helpers.http import basic_auth
from tests.helpers.reference import reference_session_line, reference_session_match
from tests.helpers.sessions import settle, start_reading
from tests.helpers.syslog import TS, message

KEY = "k"
V3 = "application/vnd.heroku+json; version=3"
TOKEN = "t.sse"
APP = "streamed"
SSE = ("accept", "text/event-stream")
KEEPALIVE_SECONDS = 15.0
PLATFORM_AUTH = basic_auth("", KEY)


# -- the format, without sockets -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"TS app[web.1]: hello", b"data: TS app[web.1]: hello\n\n"),
        (b"TS app[web.1]: hello\n", b"data: TS app[web.1]: hello\n\n"),
        (b"TS app[web.1]: hello\r\n", b"data: TS app[web.1]: hello\n\n"),
        (b"TS app[web.1]: a\r\n\n\r", b"data: TS app[web.1]: a\n\n"),
        (b"TS app[web.1]: a\nb", b"data: TS app[web.1]: a\ndata: b\n\n"),
        (b"TS app[web.1]: a\r\nb\rc", b"data: TS app[web.1]: a\ndata: b\ndata: c\n\n"),
        (b"TS app[web.1]: a\n\nb", b"data: TS app[web.1]: a\ndata: \ndata: b\n\n"),
        (b"TS app[web.1]: a\n b", b"data: TS app[web.1]: a\ndata:  b\n\n"),
        (b": not a comment", b"data: : not a comment\n\n"),
    ],
)
def test_one_event_per_line(line: bytes, event: bytes) -> None:
    assert sse_event(line) == event


def parse_events(data: bytes) -> tuple[list[str], int]:
    """What an EventSource dispatches (WHATWG parsing: data, and retry which dispatches
    nothing) and how many comments it ignored."""
    events: list[str] = []
    comments = 0
    buffer: list[str] | None = None
    for line in data.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if buffer is not None:
                events.append("\n".join(buffer))
            buffer = None
        elif line.startswith(":"):
            comments += 1
        elif line.startswith("retry:"):
            assert line == "retry: 0", line
        else:
            name, _, value = line.partition(":")
            assert name == "data", line
            buffer = [*(buffer or []), value.removeprefix(" ")]
    assert buffer is None, "an event was left unfinished"
    return events, comments


def test_events_parse_back_to_the_lines() -> None:
    lines = [b"one", b"two\r\nhalves", b"three\n"]
    assert parse_events(sse_events(lines)) == (["one", "two\nhalves", "three"], 0)
    assert parse_events(sse_events([]) + KEEPALIVE + RECONNECT_AT_ONCE) == ([], 1)


TEXT = st.binary(max_size=40).map(lambda b: b.replace(b" ", b"\r").replace(b"x", b"\n"))


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(TEXT, max_size=12),
    procs=st.lists(st.sampled_from(["web.1", "web.2", "worker.1"]), min_size=12, max_size=12),
    ps=st.sampled_from([None, b"web", b"worker.1"]),
    last=st.integers(-1, 13),
)
def test_native_events_agree_with_the_format(
    texts: list[bytes], procs: list[str], ps: bytes | None, last: int
) -> None:
    payloads = [message("app", t, ps=p) for t, p in zip(texts, procs, strict=False)]
    payloads.append(b"not syslog\r\n")  # skipped, as by every encoder
    lines = [
        line[:-1]
        for p in payloads
        if (line := reference_session_line(p)) is not None and reference_session_match(p, ps, None)
    ]
    if last >= 0:
        lines = lines[len(lines) - last :] if last < len(lines) else lines
    batch = parse_frames(payloads)
    assert session_lines(batch, ps, None, last, sse=True) == (sse_events(lines), len(lines))
    # The plain form is untouched by the flag.
    assert session_lines(batch, ps, None, last) == session_lines(batch, ps, None, last, False)


def test_a_multiline_message_is_one_event() -> None:
    batch = parse_frames([message("app", "first\r\nsecond\nthird\n", ps="web.1")])
    data, count = session_lines(batch, sse=True)
    assert count == 1
    assert parse_events(data) == ([f"{TS} app[web.1]: first\nsecond\nthird"], 0)


# -- the route, without sockets ------------------------------------------------------------------


@dataclass
class Env:
    api: ControlApi
    store: EmbeddedStore
    registry: Registry
    rods: Rods

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: str | None = PLATFORM_AUTH,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Response:
        head = [("content-type", "application/json"), ("accept", V3), *headers]
        if auth is not None:
            head.append(("authorization", auth))
        raw = b"" if body is None else json.dumps(body).encode()
        return await self.api.handle(Request(method, path, tuple(head), raw, request_id="r"))

    async def log_session(self, body: dict[str, Any]) -> str:
        """A Platform log-session (what ``heroku logs`` asks for); its session id."""
        response = await self.call("POST", f"/apps/{APP}/log-sessions", body)
        assert response.status == 201, response.body
        assert isinstance(response.body, bytes)
        return str(json.loads(response.body)["logplex_url"].rsplit("/", 1)[1])

    async def fetch(self, session_id: str, *headers: tuple[str, str]) -> Response:
        """``GET /sessions/{id}``; headers replace the default Accept."""
        request = Request("GET", f"/sessions/{session_id}", headers, b"", request_id="r")
        return await self.api.handle(request)

    def send(self, text: str) -> None:
        self.registry.route(parse_frames([message(TOKEN, text, ps="web.1")]))


async def make_env(tmp_path: Path, registry: Registry | None = None, **options: Any) -> Env:
    store = open_store(str(tmp_path), clock=trio.current_time)
    registry = Registry() if registry is None else registry
    api = ControlApi(store, registry, auth_key=KEY, public_url="http://logplex.test", **options)
    rods = Rods(RodState(), tails=TailSessions())
    ReadRoutes(store, registry, rods, keepalive=KEEPALIVE_SECONDS).mount(api.add_route)
    mount_platform(api, store, registry)
    env = Env(api, store, registry, rods)
    assert (await env.call("POST", "/apps", {"name": APP})).status == 201
    registry.add_token(APP, TOKEN, "app")
    return env


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    env = await make_env(tmp_path)
    try:
        yield env
    finally:
        env.api.close()
        env.store.close()


async def body_of(response: Response) -> bytes:
    assert not isinstance(response.body, bytes | bytearray)
    return b"".join([chunk async for chunk in response.body])


def line(text: str) -> str:
    return f"{TS} app[web.1]: {text}"  # the token's name replaces APP-NAME


async def test_event_stream_when_accept_asks_for_it(env: Env) -> None:
    env.send("one")
    env.send("two\r\nlines")
    session_id = await env.log_session({"lines": 10})
    response = await env.fetch(session_id, SSE)
    assert response.status == 200
    assert response.header("content-type") == "text/event-stream"
    assert response.header("cache-control") == "no-cache"
    body = await body_of(response)
    assert parse_events(body) == ([line("one"), line("two\nlines")], 0)
    # Ended by itself: the client is asked to reconnect at once (and is then told 204).
    assert body.endswith(b"lines\n\n" + RECONNECT_AT_ONCE)


@pytest.mark.parametrize(
    "accept",
    [
        "text/event-stream",
        "TEXT/Event-Stream; charset=utf-8",
        "application/json, text/event-stream;q=0.5",
        "*/*;q=0.1, text/event-stream",
    ],
)
async def test_accept_values_that_ask_for_events(env: Env, accept: str) -> None:
    session_id = await env.log_session({})
    response = await env.fetch(session_id, ("accept", accept))
    assert response.header("content-type") == "text/event-stream"


@pytest.mark.parametrize("accept", [None, "*/*", "text/plain", "text/event-stream;q=0", "text/*"])
async def test_plain_text_otherwise_as_before(env: Env, accept: str | None) -> None:
    env.send("one")
    env.send("two\r\nlines")
    session_id = await env.log_session({"lines": 10})
    headers = () if accept is None else (("accept", accept),)
    response = await env.fetch(session_id, *headers)
    assert response.status == 200
    assert response.header("content-type") == "text/plain; charset=utf-8"
    assert response.header("cache-control") is None
    assert await body_of(response) == f"{line('one')}\n{line('two')}\r\nlines\n".encode()
    # Fetched again, plain text is served again (as Logplex), while the URL lives.
    assert await body_of(await env.fetch(session_id, *headers)) == await body_of(
        await env.fetch(session_id)
    )


async def test_a_reconnect_after_a_one_shot_stream_ended_gets_204(env: Env) -> None:
    env.send("only")
    session_id = await env.log_session({"lines": 1})
    assert parse_events(await body_of(await env.fetch(session_id, SSE))) == ([line("only")], 0)
    # EventSource reconnects by itself (maybe with Last-Event-ID): 204 stops it for good.
    for headers in ((SSE,), (SSE, ("last-event-id", "1"))):
        again = await env.fetch(session_id, *headers)
        assert (again.status, again.body) == (204, b"")
        assert again.header("content-type") is None
    # curl and heroku3 still get the history.
    assert await body_of(await env.fetch(session_id)) == f"{line('only')}\n".encode()


async def test_a_stream_whose_reader_left_is_not_ended(env: Env) -> None:
    env.send("history")
    session_id = await env.log_session({"lines": 1, "tail": True})
    response = await env.fetch(session_id, SSE)
    assert not isinstance(response.body, bytes | bytearray)
    body = response.body.__aiter__()
    assert parse_events(await body.__anext__()) == ([line("history")], 0)
    assert env.rods.tails.active == 1
    await body.aclose()  # type: ignore[attr-defined]  # what the server does when it leaves
    assert env.rods.tails.active == 0  # closed through to the tracked tail
    assert (await env.fetch(session_id, SSE)).status == 200


async def test_a_killed_tail_is_not_restarted(env: Env, mock_clock: trio.testing.MockClock) -> None:
    session_id = await env.log_session({"lines": 0, "tail": True})
    async with trio.open_nursery() as nursery:
        reader = start_reading(nursery, await env.fetch(session_id, SSE))
        await trio.testing.wait_all_tasks_blocked()
        assert env.rods.kill_tail_sessions() == 1
        await trio.testing.wait_all_tasks_blocked()
        assert reader.done.is_set() and reader.chunks == [RECONNECT_AT_ONCE]
    assert (await env.fetch(session_id, SSE)).status == 204


async def test_unknown_or_expired_session_is_404(
    env: Env, mock_clock: trio.testing.MockClock
) -> None:
    assert (await env.fetch("no-such-session", SSE)).status == 404
    session_id = await env.log_session({})
    mock_clock.jump(300)
    response = await env.fetch(session_id, SSE)
    assert (response.status, response.body) == (404, b'{"error":"Not found"}')


async def test_idle_tail_sends_keepalive_comments(
    env: Env, mock_clock: trio.testing.MockClock
) -> None:
    session_id = await env.log_session({"lines": 0, "tail": True})
    async with trio.open_nursery() as nursery:
        reader = start_reading(nursery, await env.fetch(session_id, SSE))

        def seen() -> tuple[list[str], int]:
            return parse_events(b"".join(reader.chunks))

        await settle(mock_clock, KEEPALIVE_SECONDS - 0.1)
        assert seen() == ([], 0)  # nothing before the interval
        await settle(mock_clock, 0.1)
        assert seen() == ([], 1)
        await settle(mock_clock, KEEPALIVE_SECONDS)
        assert seen() == ([], 2)
        # A line resets the interval: the next comment comes that long after it.
        await settle(mock_clock, KEEPALIVE_SECONDS / 2)
        env.send("live")
        await settle(mock_clock)
        assert seen() == ([line("live")], 2)
        await settle(mock_clock, KEEPALIVE_SECONDS - 0.1)
        assert seen() == ([line("live")], 2)
        await settle(mock_clock, 0.1)
        assert seen() == ([line("live")], 3)
        assert not reader.done.is_set()
        nursery.cancel_scope.cancel()


async def test_a_tail_keeps_plain_text_silent_while_idle(
    env: Env, mock_clock: trio.testing.MockClock
) -> None:
    session_id = await env.log_session({"lines": 0, "tail": True})
    async with trio.open_nursery() as nursery:
        reader = start_reading(nursery, await env.fetch(session_id))
        await settle(mock_clock, 10 * KEEPALIVE_SECONDS)
        assert reader.chunks == []
        nursery.cancel_scope.cancel()


async def test_a_tail_that_ran_its_time_is_not_restarted(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    # A tail shorter than the URL's life: its reconnect finds the session still there.
    env = await make_env(tmp_path, log_session_ttl=600, log_session_tail_max=60)
    try:
        env.send("history")
        session_id = await env.log_session({"lines": 1, "tail": True})
        async with trio.open_nursery() as nursery:
            reader = start_reading(nursery, await env.fetch(session_id, SSE))
            await settle(mock_clock)
            env.send("live")
            await settle(mock_clock)
            for _ in range(4):  # a comment every 15 s, until the 60 s are up
                await settle(mock_clock, 15)
            assert reader.done.is_set()  # ended cleanly at tail_max_duration
        events, comments = parse_events(b"".join(reader.chunks))
        assert (events, comments) == ([line("history"), line("live")], 3)
        assert reader.chunks[-1] == RECONNECT_AT_ONCE
        assert (await env.fetch(session_id, SSE)).status == 204
        mock_clock.jump(600)  # and once the URL expired: 404, which stops EventSource too
        assert (await env.fetch(session_id, SSE)).status == 404
    finally:
        env.api.close()
        env.store.close()


async def test_a_lapped_tail_gets_l11_as_an_event(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    env = await make_env(tmp_path, Registry(history_messages=4, history_bytes=4096))
    try:
        session_id = await env.log_session({"lines": 0, "tail": True})
        async with trio.open_nursery() as nursery:
            reader = start_reading(nursery, await env.fetch(session_id, SSE))
            await trio.testing.wait_all_tasks_blocked()
            for i in range(10):  # more than the ring holds, before the tail reads again
                env.send(f"line {i}")
            await settle(mock_clock)
            notice, lines = reader.chunks
            (l11,), _ = parse_events(notice)
            assert "Error L11 (Tail buffer overflow)" in l11 and "dropped 6 messages" in l11
            assert parse_events(lines) == ([line(f"line {i}") for i in range(6, 10)], 0)
            nursery.cancel_scope.cancel()
    finally:
        env.api.close()
        env.store.close()


# -- over a real socket --------------------------------------------------------------------------


class Client:
    """One HTTP/1.1 connection, requests one after another (keep-alive)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def next_event(self) -> Any:
        while (event := self.conn.next_event()) is h11.NEED_DATA:
            data = await self.stream.receive_some(65536)
            assert data, "connection closed early"
            self.conn.receive_data(data)
        return event

    async def get(self, path: str, *headers: tuple[str, str]) -> h11.Response:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        request = h11.Request(method="GET", target=path, headers=[("Host", "x"), *headers])
        await self.stream.send_all(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))
        event = await self.next_event()
        assert isinstance(event, h11.Response)
        return event

    async def data(self) -> bytes | None:
        """The next piece of the body, or None at its end."""
        event = await self.next_event()
        if isinstance(event, h11.EndOfMessage):
            return None
        assert isinstance(event, h11.Data), event
        return bytes(event.data)


@pytest.mark.integration
async def test_event_stream_over_http(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    env = await make_env(tmp_path, log_session_ttl=600, log_session_tail_max=40)
    try:
        env.send("history")
        session_id = await env.log_session({"lines": 1, "tail": True})
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(run_api, env.api, "127.0.0.1", 0))
            client = Client(await trio.open_tcp_stream("127.0.0.1", port))
            path = f"/sessions/{session_id}"
            with trio.fail_after(3600):
                head = await client.get(path, SSE)
                assert head.status_code == 200
                headers = dict(head.headers)
                assert headers[b"content-type"] == b"text/event-stream"
                assert headers[b"cache-control"] == b"no-cache"
                assert headers[b"transfer-encoding"] == b"chunked"
                assert parse_events(await client.data() or b"") == ([line("history")], 0)
                env.send("live\nand more")
                assert parse_events(await client.data() or b"") == ([line("live\nand more")], 0)
                started = trio.current_time()
                assert await client.data() == KEEPALIVE  # idle: a comment 15 s later
                assert trio.current_time() - started == pytest.approx(KEEPALIVE_SECONDS)
                assert await client.data() == KEEPALIVE
                # The tail's 40 s are up: "reconnect at once", and the body is finished.
                assert await client.data() == RECONNECT_AT_ONCE
                assert await client.data() is None
                # The same connection: the reconnect is told to stop, plain text is not.
                assert (await client.get(path, SSE)).status_code == 204
                assert await client.data() is None
                plain = await client.get(path)
                assert dict(plain.headers)[b"content-type"] == b"text/plain; charset=utf-8"
                assert await client.data() == f"{line('live')}\nand more\n".encode()
            nursery.cancel_scope.cancel()
    finally:
        env.api.close()
        env.store.close()
