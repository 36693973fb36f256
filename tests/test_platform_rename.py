"""Renaming a Platform app on a running daemon, over HTTP: the app keeps its id, token,
drains, history and sessions; producers keep sending with the same token and lose nothing;
the old name answers 404 in the Platform API's error format."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from logplexd.daemon import BoundPorts, Daemon
from tests.helpers.daemon import settings_for
from tests.helpers.drains import SyslogSink
from tests.helpers.http import Exchange, credentials, request
from tests.helpers.syslog import TS, frame

V3 = ("Accept", "application/vnd.heroku+json; version=3")


@dataclass
class Running:
    daemon: Daemon
    ports: BoundPorts
    sink: SyslogSink


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    daemon = Daemon(settings_for(tmp_path))
    sink = SyslogSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.serve)
        ports = await nursery.start(daemon.serve)
        yield Running(daemon, ports, sink)
        nursery.cancel_scope.cancel()


async def platform(
    running: Running, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    status, _, raw = await request(running.ports.api, method, path, body=body, headers=[V3])
    return status, json.loads(raw)


async def post_logs(running: Running, token: str, *texts: str) -> None:
    body = b"".join(frame(token, text, ps="web.1") for text in texts)
    status, _, _ = await request(
        running.ports.logs,
        "POST",
        "/logs",
        body=body,
        headers=[("Content-Type", "application/logplex-1")],
        auth=credentials("token", token),
    )
    assert status == 204


async def session_url(running: Running, app: str, **body: Any) -> str:
    status, session = await platform(running, "POST", f"/apps/{app}/log-sessions", body)
    assert status == 201, session
    url: str = session["logplex_url"]
    return url[url.index("/sessions/") :]


def line(text: str) -> bytes:
    return f"{TS} app[web.1]: {text}\n".encode()


async def test_rename_keeps_token_drains_history_and_tails(running: Running) -> None:
    store, registry = running.daemon.store, running.daemon.registry
    assert store is not None
    with trio.fail_after(10):
        status, app = await platform(running, "POST", "/apps", {"name": "first-name"})
        assert status == 201
        (token,) = [t.id for t in store.tokens_of("first-name") if t.name == "app"]
        url = f"syslog://127.0.0.1:{running.sink.port}"
        status, drain = await platform(running, "POST", "/apps/first-name/log-drains", {"url": url})
        assert status == 201
        # A live tail opened under the old name, before the rename.
        tail = await Exchange.open(
            running.ports.api,
            "GET",
            await session_url(running, "first-name", tail=True, lines=0),
            auth=None,
        )
        assert tail.status == 200
        await post_logs(running, token, "before")

        status, renamed = await platform(running, "PATCH", "/apps/first-name", {"name": "new-name"})
        assert status == 200
        assert renamed == {
            **app,
            "name": "new-name",
            "updated_at": renamed["updated_at"],
            "web_url": "http://new-name.herokuapp.com",
        }

        # The old name: 404 in the Platform format; the new one and the id answer.
        status, headers, raw = await request(
            running.ports.api, "GET", "/apps/first-name", headers=[V3]
        )
        assert status == 404 and headers["request-id"]
        assert json.loads(raw) == {"id": "not_found", "message": "Couldn't find that app."}
        for ident in ("new-name", app["id"]):
            assert await platform(running, "GET", f"/apps/{ident}") == (200, renamed)
        status, _ = await platform(running, "POST", "/apps/first-name/log-sessions", {})
        assert status == 404

        # The same token after the rename, over both inputs.
        await post_logs(running, token, "after")
        channel = registry.channel(app["name"])
        assert channel is not None
        head = channel.ring.head
        stream = await trio.open_tcp_stream("127.0.0.1", running.ports.syslog)
        await stream.send_all(frame(token, "over syslog", ps="web.1"))
        await stream.aclose()
        await channel.wait_head(head + 1)

        # History under the new name has every line, in order.
        status, _, body = await request(
            running.ports.api, "GET", await session_url(running, "new-name", lines=10), auth=None
        )
        assert status == 200
        assert body == line("before") + line("after") + line("over syslog")
        # The tail opened before the rename goes on.
        seen = b""
        while seen.count(b"\n") < 3:
            chunk = await tail.chunk()
            assert chunk is not None
            seen += chunk
        assert seen == body
        await tail.stream.aclose()

        # The drain is still the app's, and delivers what was sent before and after.
        assert await platform(running, "GET", "/apps/new-name/log-drains") == (200, [drain])
        await running.sink.wait_for(lambda: running.sink.messages() == 3)
        frames = running.sink.frames()
        assert [f.split(b" - - ", 1)[1] for f in frames] == [
            b"before\n",
            b"after\n",
            b"over syslog\n",
        ]
        assert all(f" {drain['token']} app web.1 ".encode() in f for f in frames)


async def test_no_message_lost_while_renaming(running: Running) -> None:
    """A producer writes on one syslog connection throughout; renames land in between."""
    store, registry = running.daemon.store, running.daemon.registry
    assert store is not None
    with trio.fail_after(10):
        status, _ = await platform(running, "POST", "/apps", {"name": "busy-app"})
        assert status == 201
        (token,) = [t.id for t in store.tokens_of("busy-app") if t.name == "app"]
        channel = registry.channel("busy-app")
        assert channel is not None
        stream = await trio.open_tcp_stream("127.0.0.1", running.ports.syslog)
        names = ["busy-app", "busy-two", "busy-three", "busy-four"]
        sent = 0
        for old, new in zip(names, names[1:], strict=False):
            await stream.send_all(b"".join(frame(token, f"m{sent + i}") for i in range(50)))
            sent += 50
            async with trio.open_nursery() as nursery:
                # The rename and the next writes race on purpose.
                nursery.start_soon(platform, running, "PATCH", f"/apps/{old}", {"name": new})
                await stream.send_all(b"".join(frame(token, f"m{sent + i}") for i in range(50)))
                sent += 50
        await stream.aclose()
        await channel.wait_head(sent)
        status, _, body = await request(
            running.ports.api, "GET", await session_url(running, names[-1], lines=1000), auth=None
        )
        assert status == 200
        lines = body.decode().splitlines()
        assert [text.rsplit(" ", 1)[1] for text in lines] == [f"m{i}" for i in range(sent)]
