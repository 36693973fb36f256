"""The Platform API on two whole daemons sharing one real Redis or Redis Cluster (issue 20):
accounts, apps and drain timestamps live in the shared store, so what one node creates the
other serves at once: an account made with ``logplexd accounts create --store-url`` calls
both, and an app and its drains made on A are listed, renamed, tailed and deleted through B."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import trio

from logplexd import cli
from logplexd.daemon import BoundPorts, Daemon
from tests.helpers.cluster import node_settings
from tests.helpers.daemon import serve_in
from tests.helpers.drains import SyslogSink
from tests.helpers.http import Exchange, credentials, request
from tests.helpers.redis import RedisCluster, RedisServer, eventually
from tests.helpers.syslog import frame

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_env")]

V3 = ("Accept", "application/vnd.heroku+json; version=3")


class Client:
    """Platform API calls to one node with one account's API token."""

    def __init__(self, ports: BoundPorts, token: str) -> None:
        self.ports = ports
        self.auth = ("Authorization", f"Bearer {token}")

    async def __call__(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        status, _, raw = await request(
            self.ports.api, method, path, body=body, headers=[V3, self.auth], auth=None
        )
        return status, json.loads(raw)


async def create_account(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``logplexd accounts create --store-url URL``; the API token it prints."""
    args = ["accounts", "create", "dev@example.com", "--store-url", url]
    args += ["--data-dir", str(tmp_path / "cli")]
    assert await trio.to_thread.run_sync(cli.main, args) == 0
    (token,) = re.findall(r"^api token: (\S+)$", capsys.readouterr().out, re.MULTILINE)
    return str(token)


async def test_an_app_made_on_one_node_is_served_by_the_other(
    redis_any: RedisServer | RedisCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On one Redis and on a Redis Cluster (tests/conftest.py: ``redis_any``)."""
    nodes = {name: Daemon(node_settings(tmp_path, name, redis_any)) for name in "AB"}
    sinks = [SyslogSink(), SyslogSink()]
    async with trio.open_nursery() as nursery:
        for sink in sinks:
            await nursery.start(sink.serve)
        scopes = {name: trio.CancelScope() for name in nodes}
        ports: dict[str, BoundPorts] = {
            name: await nursery.start(serve_in, daemon, scopes[name])
            for name, daemon in nodes.items()
        }
        with trio.fail_after(30):
            await eventually(
                lambda: all(
                    n.plane is not None and n.plane.failure is None and n.store is not None
                    for n in nodes.values()
                ),
                5,
            )
            store_a, store_b = nodes["A"].store, nodes["B"].store
            assert store_a is not None and store_b is not None

            # An account made while both run calls both at once: no waiting.
            token = await create_account(redis_any.url, tmp_path, capsys)
            a, b = Client(ports["A"], token), Client(ports["B"], token)
            status_a, me_a = await a("GET", "/account")
            status_b, me_b = await b("GET", "/account")
            assert (status_a, status_b) == (200, 200) and me_a == me_b
            assert me_a["email"] == "dev@example.com"

            # An app and two drains made on A...
            status, app = await a("POST", "/apps", {"name": "shared-app"})
            assert status == 201, app
            drains = []
            for sink in sinks:
                url = f"syslog://127.0.0.1:{sink.port}"
                status, drain = await a("POST", "/apps/shared-app/log-drains", {"url": url})
                assert status == 201, drain
                drains.append(drain)
            # ...are listed by B, with A's timestamps (each request catches up first).
            assert await b("GET", "/apps") == (200, [app])
            assert await b("GET", f"/apps/{app['id']}") == (200, app)
            status, listed = await b("GET", "/apps/shared-app/log-drains")
            assert status == 200 and sorted(listed, key=lambda d: d["url"]) == sorted(
                drains, key=lambda d: d["url"]
            )

            # Renamed through B: A answers under the new name only, at once.
            status, renamed = await b("PATCH", "/apps/shared-app", {"name": "renamed-app"})
            assert status == 200 and renamed["id"] == app["id"], renamed
            assert renamed["web_url"] == "http://renamed-app.herokuapp.com"
            assert await a("GET", "/apps/renamed-app") == (200, renamed)
            assert (await a("GET", "/apps/shared-app"))[0] == 404
            status, listed = await a("GET", "/apps/renamed-app/log-drains")
            assert status == 200 and len(listed) == 2

            # A log session made on B tails what A takes in, through the app's token.
            status, session = await b(
                "POST", "/apps/renamed-app/log-sessions", {"tail": True, "lines": 0}
            )
            assert status == 201, session
            url: str = session["logplex_url"]
            assert url.startswith(f"http://127.0.0.1:{ports['B'].api}/sessions/")
            tail = await Exchange.open(
                ports["B"].api, "GET", url[url.index("/sessions/") :], auth=None
            )
            assert tail.status == 200
            (app_token,) = [t.id for t in store_a.tokens_of("shared-app") if t.name == "app"]
            status, _, _ = await request(
                ports["A"].logs,
                "POST",
                "/logs",
                body=frame(app_token, "hello from A", ps="web.1"),
                headers=[("Content-Type", "application/logplex-1")],
                auth=credentials("token", app_token),
            )
            assert status == 204
            seen = b""
            while b"hello from A" not in seen:
                chunk = await tail.chunk()
                assert chunk is not None
                seen += chunk
            await tail.stream.aclose()
            # The drains (each run by one node) deliver it too.
            for sink in sinks:
                await sink.wait_for(lambda s=sink: b"hello from A" in s.data)

            # Deleted through B: gone on A at once, channel, drains and all.
            assert await b("DELETE", "/apps/renamed-app") == (200, renamed)
            assert (await a("GET", f"/apps/{app['id']}"))[0] == 404
            assert await a("GET", "/apps") == (200, [])
            assert store_a.channel("shared-app") is None
            assert store_a.app(app["id"]) is None and list(store_a.drains()) == []
            # The account still calls both.
            assert (await a("GET", "/account"))[0] == (await b("GET", "/account"))[0] == 200
        nursery.cancel_scope.cancel()
