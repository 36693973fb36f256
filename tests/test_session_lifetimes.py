"""Log-session lifetimes (issue 20): the Platform API reference says a session "remains
available for about 5 minutes after creation or about one hour after connecting".

Platform log-sessions follow it (settings ``session_url_ttl`` and ``tail_max_duration``);
Logplex's own /v2 and /v3 sessions keep Logplex's 360 s URL and tails without an end.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing

from logplexd.api import ControlApi, ReadRoutes, mount_platform, run_api
from logplexd.native import parse_frames
from logplexd.router import Registry
from logplexd.store import SESSION_TTL_SECONDS, EmbeddedStore, open_store
from logplexd.web import Request, Response
from tests.helpers.http import basic_auth
from tests.helpers.sessions import settle, start_reading
from tests.helpers.syslog import message

KEY = "k"
V3 = "application/vnd.heroku+json; version=3"
TOKEN = "t.lifetimes"
APP = "tailed"
PLATFORM_AUTH = basic_auth("", KEY)


@dataclass
class Env:
    api: ControlApi
    store: EmbeddedStore
    registry: Registry

    async def call(
        self, method: str, path: str, body: Any = None, *, auth: str | None = PLATFORM_AUTH
    ) -> Response:
        headers = [("content-type", "application/json"), ("accept", V3)]
        if auth is not None:
            headers.append(("authorization", auth))
        raw = b"" if body is None else json.dumps(body).encode()
        return await self.api.handle(Request(method, path, tuple(headers), raw, request_id="r"))

    async def log_session(self, body: dict[str, Any]) -> str:
        """A Platform log-session; returns its session id."""
        response = await self.call("POST", f"/apps/{APP}/log-sessions", body)
        assert response.status == 201, response.body
        assert isinstance(response.body, bytes)
        return str(json.loads(response.body)["logplex_url"].rsplit("/", 1)[1])

    async def v3_session(self, body: dict[str, Any]) -> str:
        body = {"channel_id": APP, **body}
        response = await self.call("POST", "/v3/sessions", body, auth=f"Basic {KEY}")
        assert response.status == 201, response.body
        assert isinstance(response.body, bytes)
        return str(json.loads(response.body)["url"].rsplit("/", 1)[1])

    async def fetch(self, session_id: str) -> Response:
        return await self.call("GET", f"/sessions/{session_id}", auth=None)

    def send(self, text: str) -> None:
        self.registry.route(parse_frames([message(TOKEN, text, host="host", ps="web.1")]))


async def make_env(tmp_path: Path, **options: Any) -> Env:
    # The store's clock is trio's, so that a MockClock moves session expiry too.
    store = open_store(str(tmp_path), clock=trio.current_time)
    registry = Registry()
    api = ControlApi(store, registry, auth_key=KEY, public_url="http://logplex.test", **options)
    ReadRoutes(store, registry).mount(api.add_route)
    mount_platform(api, store, registry)
    env = Env(api, store, registry)
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
    assert response.status == 200 and response.streamed
    assert not isinstance(response.body, bytes | bytearray)
    return b"".join([chunk async for chunk in response.body])


def lines(data: bytes) -> list[str]:
    return [line.rsplit(": ", 1)[1] for line in data.decode().splitlines()]


# -- the URL: about 5 minutes until it is connected ----------------------------------------------


async def test_platform_session_url_expires_after_its_ttl_unconnected(
    env: Env, mock_clock: trio.testing.MockClock
) -> None:
    env.send("before")
    first = await env.log_session({"lines": 5})
    second = await env.log_session({"lines": 5})
    mock_clock.jump(299)
    # Still served just before the TTL.
    assert lines(await body_of(await env.fetch(first))) == ["before"]
    mock_clock.jump(1)
    for session_id in (first, second):  # fetched once or never: both are gone
        response = await env.fetch(session_id)
        assert (response.status, response.body) == (404, b'{"error":"Not found"}')


async def test_session_url_ttl_is_configurable(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    env = await make_env(tmp_path, log_session_ttl=30)
    try:
        session_id = await env.log_session({})
        mock_clock.jump(29.5)
        assert (await env.fetch(session_id)).status == 200
        mock_clock.jump(0.5)
        assert (await env.fetch(session_id)).status == 404
    finally:
        env.api.close()
        env.store.close()


async def test_logplex_v3_sessions_keep_logplex_360_seconds(
    env: Env, mock_clock: trio.testing.MockClock
) -> None:
    assert SESSION_TTL_SECONDS == 360
    session_id = await env.v3_session({})
    mock_clock.jump(359)
    assert (await env.fetch(session_id)).status == 200
    mock_clock.jump(1)
    assert (await env.fetch(session_id)).status == 404


# -- the connected tail: about one hour ----------------------------------------------------------


async def test_connected_platform_tail_ends_after_max_duration(
    env: Env, mock_clock: trio.testing.MockClock
) -> None:
    env.send("history")
    session_id = await env.log_session({"lines": 1, "tail": True})
    mock_clock.jump(250)  # connected within the URL's 5 minutes
    async with trio.open_nursery() as nursery:
        connected = trio.current_time()
        reader = start_reading(nursery, await env.fetch(session_id))
        await trio.testing.wait_all_tasks_blocked()
        env.send("live 1")
        await settle(mock_clock)
        mock_clock.jump(connected + 3599.5 - trio.current_time())
        await trio.testing.wait_all_tasks_blocked()
        # The URL expired long ago; the connected stream is not affected by that.
        assert env.store.session(session_id) is None
        env.send("live 2")
        await settle(mock_clock)
        assert not reader.done.is_set()
        assert lines(b"".join(reader.chunks)) == ["history", "live 1", "live 2"]
        mock_clock.jump(0.5)
        await trio.testing.wait_all_tasks_blocked()
        # The body ended by itself (no cancel): the chunked response is finished.
        assert reader.done.is_set()
        env.send("too late")
        await settle(mock_clock)
    assert lines(b"".join(reader.chunks)) == ["history", "live 1", "live 2"]


async def test_a_busy_tail_ends_on_time_too(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    env = await make_env(tmp_path, log_session_tail_max=60)
    try:
        env.send("history")
        session_id = await env.log_session({"lines": 1, "tail": True})
        response = await env.fetch(session_id)
        assert not isinstance(response.body, bytes | bytearray)
        body = response.body.__aiter__()
        with trio.fail_after(3600):  # nothing here waits: a wait would be a bug
            assert lines(await body.__anext__()) == ["history"]
            for i in range(2):
                env.send(f"line {i}")
                assert lines(await body.__anext__()) == [f"line {i}"]
                autojump_clock.jump(31)
            # Lines are waiting at the deadline: they do not keep the tail open.
            env.send("more")
            with pytest.raises(StopAsyncIteration):
                await body.__anext__()
    finally:
        env.api.close()
        env.store.close()


async def test_logplex_v3_tail_has_no_end(env: Env, mock_clock: trio.testing.MockClock) -> None:
    session_id = await env.v3_session({"num": 0, "tail": True})
    async with trio.open_nursery() as nursery:
        reader = start_reading(nursery, await env.fetch(session_id))
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(24 * 3600)
        env.send("a day later")
        await settle(mock_clock)
        assert not reader.done.is_set()
        assert lines(b"".join(reader.chunks)) == ["a day later"]
        nursery.cancel_scope.cancel()


async def test_one_shot_platform_session_is_not_held_open(
    env: Env, mock_clock: trio.testing.MockClock
) -> None:
    env.send("only")
    session_id = await env.log_session({"lines": 1})
    with trio.fail_after(1):
        assert lines(await body_of(await env.fetch(session_id))) == ["only"]


# -- over HTTP: the chunked response is finished properly ----------------------------------------


def h11_events(data: bytes) -> Iterator[Any]:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    while (event := client.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
        yield event


async def test_tail_over_http_ends_with_a_finished_chunked_body(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    env = await make_env(tmp_path, log_session_tail_max=90)
    try:
        env.send("history")
        session_id = await env.log_session({"lines": 1, "tail": True})
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(run_api, env.api, "127.0.0.1", 0))
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            started = trio.current_time()
            await stream.send_all(
                f"GET /sessions/{session_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            data = b""
            with trio.fail_after(3600):
                while b"0\r\n\r\n" not in data:
                    chunk = await stream.receive_some(65536)
                    assert chunk, data
                    data += chunk
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
        assert 90 <= elapsed < 100
        assert data.endswith(b"\r\n0\r\n\r\n")
        events = list(h11_events(data))
        assert isinstance(events[0], h11.Response) and events[0].status_code == 200
        assert (b"transfer-encoding", b"chunked") in list(events[0].headers)
        assert b"".join(e.data for e in events if isinstance(e, h11.Data)).endswith(
            b"app[web.1]: history\n"
        )
        assert isinstance(events[-1], h11.EndOfMessage)
    finally:
        env.api.close()
        env.store.close()
