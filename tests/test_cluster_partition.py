"""A node cut off from Redis (a proxy that stops forwarding, silently) while others are not."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import trio

from logplexd.daemon import Daemon
from tests.helpers.cluster import (
    Sink,
    channel_on_every_node,
    expected,
    node_settings,
    send_numbered,
)
from tests.helpers.curl import AUTH, JSON, api, curl
from tests.helpers.daemon import serve_in
from tests.helpers.peers import needs_curl
from tests.helpers.redis import RedisServer, eventually

pytestmark = [pytest.mark.integration, needs_curl]

# The cut-off node's drain lease expires within a second; its buffer holds what it takes in
# meanwhile (as in tests/test_cluster_nodes.py).
LEASE_TTL = 1.0
BUFFER_MESSAGES = 150


class Proxy:
    """TCP proxy to Redis. ``partition`` stops forwarding without closing anything (packets
    lost, as on a real partition); ``heal`` forwards again."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.flowing = trio.Event()
        self.flowing.set()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    def partition(self) -> None:
        if self.flowing.is_set():
            self.flowing = trio.Event()

    def heal(self) -> None:
        self.flowing.set()

    async def _handle(self, client: trio.SocketStream) -> None:
        await self.flowing.wait()
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
            nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, scope) -> None:
        try:
            while data := await src.receive_some(65536):
                await self.flowing.wait()  # held back while partitioned
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


async def test_a_node_cut_off_from_redis_hands_its_drain_over(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    sink = Sink()
    async with trio.open_nursery() as nursery:
        sink_port = await nursery.start(sink.serve)
        proxies = {name: Proxy(redis_server.port) for name in "AB"}
        nodes = {}
        for name, proxy in proxies.items():
            port = await nursery.start(proxy.serve)
            settings = node_settings(
                tmp_path,
                name,
                redis_server,
                drain_lease_ttl=LEASE_TTL,
                redis_buffer_messages=BUFFER_MESSAGES,
            )
            url = f"redis://127.0.0.1:{port}/0"
            nodes[name] = Daemon(dataclasses.replace(settings, store_url=url))
        scopes = {name: trio.CancelScope() for name in nodes}
        ports = {name: await nursery.start(serve_in, d, scopes[name]) for name, d in nodes.items()}
        with trio.fail_after(40):
            await eventually(lambda: all(n.plane.failure is None for n in nodes.values()), 5)  # type: ignore[union-attr]
            token = await channel_on_every_node(ports["A"], nodes.values())
            url = json.dumps({"url": f"syslog://127.0.0.1:{sink_port}"})
            status, _, body = await curl(
                "-X", "POST", *AUTH, *JSON, "-d", url, api(ports["A"], "/v3/channels/app/drains"),
            )  # fmt: skip
            drain_id = json.loads(body)["id"]

            def owners() -> list[str]:
                return [
                    name
                    for name, n in nodes.items()
                    if n.cluster_drains is not None and drain_id in n.cluster_drains.owned()
                ]

            await eventually(lambda: len(owners()) == 1, 5)
            (cut,) = owners()
            (other,) = [name for name in nodes if name != cut]
            await send_numbered(ports[other].syslog, token, "P", range(50))
            await eventually(lambda: set(sink.counts()) == expected("P", range(50)), 5)
            plane = nodes[cut].plane
            assert plane is not None
            ckpt = plane.keys.checkpoint("app", drain_id)
            await eventually(lambda: redis_server.command("GET", ckpt).endswith(b"\r\n50\r\n"), 5)

            proxies[cut].partition()
            partitioned_at = trio.current_time()
            # The cut-off node says so; the other does not.
            await eventually(lambda: plane.failure is not None, 3)
            status, _, _ = await curl(api(ports[cut], "/v3/healthcheck"))
            assert status == 503
            status, _, _ = await curl(api(ports[other], "/v3/healthcheck"))
            assert status == 200
            # It stops delivering by itself (its lease is not confirmed), and the other node
            # takes the drain once the lease has expired in Redis: never two owners.
            await eventually(lambda: owners() == [other], 5)
            assert trio.current_time() - partitioned_at < 15
            # Messages accepted on both sides meanwhile: the cut-off node buffers its own.
            written, pushed = plane.messages_written, plane.buffer.pushed
            await send_numbered(ports[other].syslog, token, "Q", range(50))
            await send_numbered(ports[cut].syslog, token, "R", range(30))
            await eventually(lambda: set(sink.counts()) >= expected("Q", range(50)), 5)
            await eventually(lambda: plane.buffer.pushed == pushed + 30, 5)
            assert plane.messages_written == written and plane.buffer.dropped == 0

            proxies[cut].heal()
            await eventually(lambda: plane.failure is None, 10)
            everything = (
                expected("P", range(50)) | expected("Q", range(50)) | expected("R", range(30))
            )
            await eventually(lambda: set(sink.counts()) >= everything, 10)
            assert set(sink.counts()) == everything and max(sink.counts().values()) == 1
            # The drain stays where it went.
            assert owners() == [other]
            status, _, _ = await curl(api(ports[cut], "/v3/healthcheck"))
            assert status == 200
        nursery.cancel_scope.cancel()
