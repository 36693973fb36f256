"""The firehose on a running daemon (REFERENCE.md section 7): messages of filtered tokens are
copied raw to one firehose channel each, spread evenly, never looped, and counted."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from logplexd.config import Settings
from logplexd.daemon import BoundPorts, Daemon
from logplexd.router import Channel
from tests.helpers.cluster import node_settings
from tests.helpers.daemon import settings_for
from tests.helpers.drains import SyslogSink
from tests.helpers.http import Exchange, credentials, request
from tests.helpers.metrics import scrape, value
from tests.helpers.redis import RedisServer, eventually
from tests.helpers.syslog import frame, message
from tests.helpers.syslog import send_syslog as send_syslog_to

HOSES = ("fh-1", "fh-2", "fh-3")


@dataclass
class Running:
    daemon: Daemon
    ports: BoundPorts
    sink: SyslogSink
    tokens: dict[str, dict[str, str]]
    # What the next reload (SIGHUP) reads; None: the settings it started with.
    reloaded: list[Settings]

    def channel(self, name: str) -> Channel:
        channel = self.daemon.registry.channel(name)
        assert channel is not None
        return channel

    def lines(self, name: str) -> list[bytes]:
        return self.channel(name).ring.last(10_000).frames()

    def copies(self) -> dict[str, list[bytes]]:
        return {hose: self.lines(hose) for hose in HOSES}


async def put_channel(ports: BoundPorts, name: str, *tokens: str) -> dict[str, str]:
    status, _, body = await request(
        ports.api, "PUT", f"/v3/channels/{name}", body={"tokens": list(tokens)}
    )
    assert status == 201, body
    result: dict[str, str] = json.loads(body)["tokens"]
    return result


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    settings = settings_for(
        tmp_path, firehose_channel_ids=HOSES, firehose_filter_tokens=("heroku",)
    )
    reloaded: list[Settings] = []
    daemon = Daemon(settings, reload_settings=lambda old: reloaded[-1] if reloaded else old)
    sink = SyslogSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.serve)
        ports = await nursery.start(daemon.serve)
        with trio.fail_after(10):
            tokens = {
                "my-app": await put_channel(ports, "my-app", "app", "heroku"),
                "other": await put_channel(ports, "other", "heroku"),
            }
            for hose in HOSES:
                tokens[hose] = await put_channel(ports, hose, "heroku")
            # A drain on a firehose channel gets its copies like any of its messages.
            status, _, body = await request(
                ports.api,
                "POST",
                "/v3/channels/fh-1/drains",
                body={"url": f"syslog://127.0.0.1:{sink.port}"},
            )
            assert status == 201, body
        yield Running(daemon, ports, sink, tokens, reloaded)
        nursery.cancel_scope.cancel()


async def send_syslog(running: Running, frames: list[bytes], channels: list[str]) -> None:
    """``frames`` on one TCP connection; returns once ``channels`` grew by as many as sent
    to each (heads counted before sending)."""
    heads = {name: running.channel(name).ring.head for name in set(channels)}
    stream = await trio.open_tcp_stream("127.0.0.1", running.ports.syslog)
    await stream.send_all(b"".join(frames))
    await stream.aclose()
    for name, head in heads.items():
        await running.channel(name).wait_head(head + channels.count(name))


async def post_logs(running: Running, token: str, frames: list[bytes]) -> None:
    status, _, body = await request(
        running.ports.logs,
        "POST",
        "/logs",
        body=b"".join(frames),
        headers=[("Content-Type", "application/logplex-1")],
        auth=credentials("token", token),
    )
    assert status == 204, body


async def test_filtered_tokens_are_copied_raw_to_one_firehose_each(running: Running) -> None:
    heroku, app = running.tokens["my-app"]["heroku"], running.tokens["my-app"]["app"]
    other = running.tokens["other"]["heroku"]
    with trio.fail_after(10):
        routed = [frame(heroku, f"router {i}") for i in range(9)]
        routed += [frame(app, "not copied"), frame(other, "other app")]
        await send_syslog(running, routed, ["my-app"] * 10 + ["other"] + list(HOSES) * 3 + ["fh-1"])
        # Token auth: copied as the token its APP-NAME names, else as the one that posted.
        await post_logs(running, app, [frame(heroku, "sibling"), frame("web", "as app")])
        await post_logs(running, heroku, [frame("web", "as heroku")])

    # Its own channel has every line, APP-NAME rewritten to the token's name as always.
    own = running.lines("my-app")
    assert own[:9] == [message("heroku", f"router {i}") for i in range(9)]
    assert own[9:] == [
        message("app", "not copied"),
        message("heroku", "sibling"),
        message("web", "as app"),
        message("web", "as heroku"),
    ]
    # Each filtered line is in exactly one firehose channel, raw (APP-NAME the token id).
    copies = running.copies()
    raw = [message(heroku, f"router {i}") for i in range(9)]
    raw += [message(other, "other app"), message(heroku, "sibling"), message("web", "as heroku")]
    assert sorted(line for hose in copies.values() for line in hose) == sorted(raw)
    # In turn: counts differ by at most one, and each hose keeps the order lines came in.
    assert sorted(len(lines) for lines in copies.values()) == [4, 4, 4]
    for lines in copies.values():
        assert lines == [line for line in raw if line in lines]
    copied = [line for hose in copies.values() for line in hose]
    assert not any(b"not copied" in line or b"as app" in line for line in copied)

    samples = await scrape(running.ports.api)
    posted = {
        hose: value(samples, "logplexd_firehose_messages_total", channel=hose) for hose in HOSES
    }
    assert posted == {"fh-1": 4.0, "fh-2": 4.0, "fh-3": 4.0}
    # The drain on fh-1 delivers its copies, raw.
    await running.sink.wait_for(lambda: running.sink.messages() == 4)
    assert all(
        f" {heroku} ".encode() in line or f" {other} ".encode() in line or b" web " in line
        for line in running.sink.frames()
    )


async def test_spread_over_many_lines_and_no_loop(running: Running) -> None:
    heroku = running.tokens["my-app"]["heroku"]
    with trio.fail_after(10):
        await send_syslog(
            running,
            [frame(heroku, f"{i}") for i in range(300)],
            ["my-app"] * 300 + list(HOSES) * 100,
        )
        assert [len(running.lines(hose)) for hose in HOSES] == [100, 100, 100]
        # A firehose channel's own "heroku" token: never copied again, to itself or others.
        hose_token = running.tokens["fh-2"]["heroku"]
        await send_syslog(running, [frame(hose_token, f"own {i}") for i in range(5)], ["fh-2"] * 5)
        await post_logs(running, hose_token, [frame("web", "own over /logs")])
    assert [len(running.lines(hose)) for hose in HOSES] == [100, 106, 100]
    samples = await scrape(running.ports.api)
    assert [value(samples, "logplexd_firehose_messages_total", channel=hose) for hose in HOSES] == [
        100.0,
        100.0,
        100.0,
    ]


async def test_reload_changes_the_firehose(running: Running) -> None:
    """SIGHUP applies both settings at once; none set switches the firehose off."""
    daemon = running.daemon
    heroku, app = running.tokens["my-app"]["heroku"], running.tokens["my-app"]["app"]
    base = daemon.settings

    def reload_to(channels: tuple[str, ...], tokens: tuple[str, ...]) -> None:
        running.reloaded.append(
            dataclasses.replace(base, firehose_channel_ids=channels, firehose_filter_tokens=tokens)
        )
        assert daemon.reload() == []

    with trio.fail_after(10):
        reload_to(("fh-3",), ("app",))
        await send_syslog(running, [frame(app, "a"), frame(heroku, "h")], ["my-app"] * 2 + ["fh-3"])
        assert running.copies() == {"fh-1": [], "fh-2": [], "fh-3": [message(app, "a")]}
        reload_to((), ())
        await send_syslog(running, [frame(app, "a2"), frame(heroku, "h2")], ["my-app"] * 2)
        assert running.copies()["fh-3"] == [message(app, "a")]
    samples = await scrape(running.ports.api)
    with pytest.raises(KeyError):
        value(samples, "logplexd_firehose_messages_total", channel="fh-1")
    assert value(samples, "logplexd_firehose_messages_total", channel="fh-3") == 1.0


async def test_firehose_across_nodes_on_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    """In Redis mode the copies go through the firehose channels' streams: a line ingested
    on node A is read back from its firehose channel on node B."""
    firehose = {"firehose_channel_ids": ("fh-1", "fh-2"), "firehose_filter_tokens": ("heroku",)}
    a = Daemon(node_settings(tmp_path, "a", redis_server, **firehose))
    b = Daemon(node_settings(tmp_path, "b", redis_server, **firehose))
    async with trio.open_nursery() as nursery:
        ports_a = await nursery.start(a.serve)
        ports_b = await nursery.start(b.serve)
        with trio.fail_after(20):
            heroku = (await put_channel(ports_a, "my-app", "heroku"))["heroku"]
            app = (await put_channel(ports_a, "quiet-app", "app"))["app"]
            for hose in ("fh-1", "fh-2"):
                await put_channel(ports_a, hose, "app")
            await eventually(
                lambda: all(
                    node.registry.firehose is not None
                    and len(node.registry.firehose) == 2
                    and node.registry.table.firehosed(heroku.encode())
                    for node in (a, b)
                )
            )
            frames = [frame(heroku, f"fire-{i:02d}") for i in range(10)]
            await send_syslog_to(ports_a.syslog, b"".join([*frames, frame(app, "fire-no")]))
            # Node B tails each firehose channel (history, then live) until it has its part.
            seen: dict[str, list[bytes]] = {}
            for hose in ("fh-1", "fh-2"):
                status, _, body = await request(
                    ports_b.api,
                    "POST",
                    "/v3/sessions",
                    body={"channel_id": hose, "num": 100, "tail": True},
                )
                assert status == 201, body
                url = json.loads(body)["url"]
                tail = await Exchange.open(
                    ports_b.api, "GET", url[url.index("/sessions/") :], auth=None
                )
                text = b""
                while len(re.findall(rb"fire-\w+", text)) < 5:
                    chunk = await tail.chunk()
                    assert chunk is not None
                    text += chunk
                await tail.stream.aclose()
                seen[hose] = re.findall(rb"fire-\w+", text)
        assert sorted(seen["fh-1"] + seen["fh-2"]) == [b"fire-%02d" % i for i in range(10)]
        assert (len(seen["fh-1"]), len(seen["fh-2"])) == (5, 5)
        assert a.registry.firehose_posted() == {"fh-1": 5, "fh-2": 5}
        nursery.cancel_scope.cancel()
