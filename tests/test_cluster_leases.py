"""Drain leases across nodes (issue 21): one liveness key per node, not one renewal per drain.

Two whole daemons on a real Redis (and on a three-master Redis Cluster where marked), with
channels and drains created through the API; what Redis counts (``INFO commandstats``) is
what the test reads.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from logplexd.daemon import Daemon
from tests.helpers.cluster import (
    Sink,
    expected,
    node_settings,
    recorded_incarnations,
    send_numbered,
)
from tests.helpers.curl import AUTH, JSON, api, curl
from tests.helpers.daemon import serve_in
from tests.helpers.peers import needs_curl
from tests.helpers.redis import RedisCluster, RedisServer, eventually

pytestmark = [pytest.mark.integration, needs_curl]

# A tick every 0.1 s.
LEASE_TTL = 0.4
# What lease upkeep may run in Redis: renewing (SET, or GET and PEXPIRE in a script),
# asking after holders (EXISTS), trying to acquire (GET, SET). On a cluster GET is left out:
# an idle follower there polls with it too.
LEASE_COMMANDS = ("get", "set", "pexpire", "exists")


@dataclasses.dataclass
class Fleet:
    nodes: dict[str, Daemon]
    ports: dict[str, Any]
    sink: Sink
    sink_port: int

    def owned(self) -> int:
        return sum(len(n.cluster_drains.owned()) for n in self.nodes.values())  # type: ignore[union-attr]

    def ticks(self) -> dict[str, int]:
        return {k: n.cluster_drains.ticks for k, n in self.nodes.items()}  # type: ignore[union-attr]


@asynccontextmanager
async def fleet(
    tmp_path: Path, server: RedisServer | RedisCluster, names: str = "AB"
) -> AsyncIterator[Fleet]:
    nodes = {
        name: Daemon(node_settings(tmp_path, name, server, drain_lease_ttl=LEASE_TTL))
        for name in names
    }
    sink = Sink()
    async with trio.open_nursery() as nursery:
        sink_port = await nursery.start(sink.serve)
        ports = {
            name: await nursery.start(serve_in, d, trio.CancelScope()) for name, d in nodes.items()
        }
        await eventually(
            lambda: all(n.plane and n.plane.failure is None for n in nodes.values()), 5
        )
        yield Fleet(nodes, ports, sink, sink_port)
        nursery.cancel_scope.cancel()


async def channel_with_drain(f: Fleet, name: str) -> tuple[str, int]:
    """Channel ``name`` (token "web") with one syslog drain to the sink, made on node A."""
    status, _, body = await curl(
        "-X", "PUT", *AUTH, *JSON, "-d", '{"tokens":["web"]}',
        api(f.ports["A"], f"/v3/channels/{name}"),
    )  # fmt: skip
    assert status == 201
    token: str = json.loads(body)["tokens"]["web"]
    url = json.dumps({"url": f"syslog://127.0.0.1:{f.sink_port}"})
    status, _, body = await curl(
        "-X", "POST", *AUTH, *JSON, "-d", url, api(f.ports["A"], f"/v3/channels/{name}/drains"),
    )  # fmt: skip
    assert status == 201
    return token, json.loads(body)["id"]


def lease_calls(server: RedisServer | RedisCluster) -> int:
    calls = server.command_calls()
    names = LEASE_COMMANDS[1:] if isinstance(server, RedisCluster) else LEASE_COMMANDS
    return sum(calls.get(name, 0) for name in names)


async def test_idle_lease_traffic_does_not_grow_with_the_drains(
    tmp_path: Path, redis_any: RedisServer | RedisCluster
) -> None:
    """24 drains shared by two idle nodes: each tick of a node costs Redis a renewal of its
    liveness key and a question about the other node's, not a command per drain (that was
    two per drain per tick: 48 here)."""
    drains = 24
    async with fleet(tmp_path, redis_any) as f:
        with trio.fail_after(60):
            for i in range(drains):
                await channel_with_drain(f, f"app{i}")
            await eventually(lambda: f.owned() == drains, 10)
            await eventually(lambda: all(n.cluster_drains.wanted for n in f.nodes.values()), 5)  # type: ignore[union-attr]
            # Settled: each node knows every drain's holder.
            start = f.ticks()
            await eventually(lambda: all(t >= start[k] + 2 for k, t in f.ticks().items()), 5)
            before, ticks0 = lease_calls(redis_any), f.ticks()
            await eventually(lambda: all(t >= ticks0[k] + 5 for k, t in f.ticks().items()), 5)
            after, ticks1 = lease_calls(redis_any), f.ticks()
            assert f.owned() == drains  # nobody lost or dropped a drain meanwhile
        ticks = sum(ticks1[k] - ticks0[k] for k in ticks0)
        per_tick = (after - before) / ticks
        assert per_tick <= 3, f"{after - before} lease commands in {ticks} ticks"


async def test_a_node_whose_liveness_key_vanished_takes_its_drains_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Redis lost the node's liveness key (here: deleted) while the node ran: it stops its
    drains, takes a new incarnation and takes them back (no other node holds them), and the
    drain goes on delivering."""
    async with fleet(tmp_path, redis_server, names="A") as f:
        node = f.nodes["A"]
        drains = node.cluster_drains
        assert drains is not None
        with trio.fail_after(30):
            token, drain_id = await channel_with_drain(f, "app")
            await eventually(lambda: f.owned() == 1, 5)
            keys = node.plane.keys  # type: ignore[union-attr]
            lease_key = keys.lease("app", drain_id)
            first = drains.liveness.holder
            assert redis_server.command("GET", lease_key) == b"$%d\r\n%s\r\n" % (
                len(first),
                first.encode(),
            )
            await send_numbered(f.ports["A"].syslog, token, "A", range(5))
            await eventually(lambda: set(f.sink.counts()) >= expected("A", range(5)), 5)

            redis_server.command("DEL", keys.alive(first))
            await eventually(lambda: drains.liveness.holder != first, 5)
            second = drains.liveness.holder
            assert second.startswith("A/")
            await eventually(
                lambda: redis_server.command("GET", lease_key).endswith(second.encode() + b"\r\n"),
                5,
            )
            # Recorded in its data dir before Redis saw it (the first, dead, no more).
            assert recorded_incarnations(tmp_path / "A") == [second]
            await eventually(lambda: f.owned() == 1, 5)
            await send_numbered(f.ports["A"].syslog, token, "B", range(5))
            await eventually(lambda: set(f.sink.counts()) >= expected("B", range(5)), 5)
