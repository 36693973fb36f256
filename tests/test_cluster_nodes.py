"""Three whole daemons on one real redis-server: history, tails and drains across nodes.

Messages go in on two nodes; a tail on a third node and a drain (a TCP sink here) receive
each of them once; the drain's owner dies and another node continues from the checkpoint;
Redis goes away mid-stream and comes back (health 503, bounded buffer, exact L10 count).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from logplexd.cluster import READER_SLACK
from logplexd.cluster.drains import CHECKPOINT_INTERVAL
from logplexd.config import Settings
from logplexd.daemon import BoundPorts, Daemon
from tests.helpers.cluster import (
    MSG,
    Sink,
    channel_on_every_node,
    expected,
    hold_lease,
    numbered,
    send_numbered,
)
from tests.helpers.cluster import node_settings as shared_node_settings
from tests.helpers.curl import AUTH, JSON, api, curl
from tests.helpers.daemon import serve_in
from tests.helpers.peers import needs_curl
from tests.helpers.redis import RedisCluster, RedisServer, eventually

pytestmark = [pytest.mark.integration, needs_curl]

LEASE_TTL = 1.0
BUFFER_MESSAGES = 150


def node_settings(tmp_path: Path, name: str, server: RedisServer | RedisCluster) -> Settings:
    return shared_node_settings(
        tmp_path,
        name,
        server,
        drain_lease_ttl=LEASE_TTL,
        redis_buffer_messages=BUFFER_MESSAGES,
    )


class Tail:
    """A streaming GET of a session URL, read in the background."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def run(self, port: int, path: str, *, task_status: trio.TaskStatus[None]) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        task_status.started()
        while data := await stream.receive_some(65536):
            self.data += data

    def counts(self) -> Counter[bytes]:
        return Counter(MSG.findall(bytes(self.data)))


async def post_logs(tmp_path: Path, port: int, token: str, node: str, numbers: range) -> None:
    body = tmp_path / f"body-{node}-{numbers.start}"
    body.write_bytes(numbered(token, node, numbers))
    status, _, _ = await curl(
        "-u", f"token:{token}", "-H", "Content-Type: application/logplex-1",
        "-H", f"Logplex-Msg-Count: {len(numbers)}", "--data-binary", f"@{body}",
        f"http://127.0.0.1:{port}/logs",
    )  # fmt: skip
    assert status == 204


@dataclasses.dataclass
class Nodes:
    """Nodes on one Redis (or Cluster), channel "app" with one syslog drain to ``sink``."""

    nursery: trio.Nursery
    nodes: dict[str, Daemon]
    scopes: dict[str, trio.CancelScope]
    ports: dict[str, BoundPorts]
    sink: Sink
    token: str
    drain_id: int

    def owner(self) -> str | None:
        """The running node that owns the drain."""
        for name, n in self.nodes.items():
            drains = n.cluster_drains
            if not self.scopes[name].cancel_called and drains is not None and drains.owned():
                return name
        return None


@asynccontextmanager
async def nodes_with_a_drain(
    tmp_path: Path, server: RedisServer | RedisCluster, names: str = "AB", **settings: Any
) -> AsyncIterator[Nodes]:
    """Every node serving, the drain created on A and owned by one of them."""
    nodes = {
        name: Daemon(dataclasses.replace(node_settings(tmp_path, name, server), **settings))
        for name in names
    }
    scopes = {name: trio.CancelScope() for name in nodes}
    sink = Sink()
    async with trio.open_nursery() as nursery:
        sink_port = await nursery.start(sink.serve)
        ports = {name: await nursery.start(serve_in, d, scopes[name]) for name, d in nodes.items()}
        await eventually(
            lambda: all(n.plane and n.plane.failure is None for n in nodes.values()), 5
        )
        token = await channel_on_every_node(ports["A"], nodes.values())
        status, _, body = await curl(
            "-X", "POST", *AUTH, *JSON, "-d", json.dumps({"url": f"syslog://127.0.0.1:{sink_port}"}),
            api(ports["A"], "/v3/channels/app/drains"),
        )  # fmt: skip
        assert status == 201
        pair = Nodes(nursery, nodes, scopes, ports, sink, token, json.loads(body)["id"])
        await eventually(lambda: pair.owner() is not None, 5)
        yield pair
        nursery.cancel_scope.cancel()


async def test_three_nodes_share_history_tails_and_drains(
    tmp_path: Path, redis_any: RedisServer | RedisCluster
) -> None:
    """On one Redis and on a three-master Redis Cluster (there the fault stops the master
    holding the channel's keys)."""
    redis_server = redis_any
    victim = redis_any
    if isinstance(redis_any, RedisCluster):
        victim = redis_any.server_of("logplex:{ch:app}:log")
    tail = Tail()
    async with nodes_with_a_drain(tmp_path, redis_any, "ABC") as three:
        nursery, nodes, scopes, ports, sink = (
            three.nursery,
            three.nodes,
            three.scopes,
            three.ports,
            three.sink,
        )
        token, drain_id = three.token, three.drain_id
        with trio.fail_after(60):

            def owners() -> list[str]:
                return [
                    name
                    for name, n in nodes.items()
                    if not scopes[name].cancel_called
                    and n.cluster_drains is not None
                    and drain_id in n.cluster_drains.owned()
                ]

            await eventually(lambda: len(owners()) == 1, 5)
            # Exactly one node runs it.
            assert sum(len(n.drains) for n in nodes.values()) == 1
            # A tail on A.
            status, _, body = await curl(
                "-X", "POST", *AUTH, *JSON, "-d", '{"channel_id":"app","tail":true,"num":0}',
                api(ports["A"], "/v3/sessions"),
            )  # fmt: skip
            assert status == 201
            path = "/" + json.loads(body)["url"].split("/", 3)[3]
            await nursery.start(tail.run, ports["A"].api, path)
            await eventually(lambda: nodes["A"].plane and nodes["A"].plane.follow_of("app"), 2)

            # Messages into B's syslog port and C's /logs.
            await send_numbered(ports["B"].syslog, token, "B", range(100))
            await post_logs(tmp_path, ports["C"].logs, token, "C", range(100))
            phase1 = expected("B", range(100)) | expected("C", range(100))
            await eventually(
                lambda: set(sink.counts()) >= phase1 and set(tail.counts()) >= phase1, 10
            )
            assert set(tail.counts()) == phase1 and set(tail.counts().values()) == {1}
            assert set(sink.counts()) == phase1 and set(sink.counts().values()) == {1}

            # History from any node, read from the stream on a node that follows nothing.
            (reader,) = [n for n in "BC" if n not in owners()][:1]
            plane = nodes[reader].plane
            assert plane is not None and plane.follow_of("app") is None
            # Reachable (a lease exchange slower than its 0.25 s tick on a loaded machine
            # counts as a failure until the next one succeeds, and reads are then local).
            await eventually(lambda: plane.failure is None, 5)
            reads = plane.round_trips
            status, headers, body = await curl(
                *AUTH, api(ports[reader], "/v3/channels/app/logs?num=200")
            )
            assert plane.round_trips > reads
            assert status == 200 and headers["logplex-msg-count"] == "200"
            assert set(MSG.findall(body)) == phase1

            # The owner dies without a word; another node takes over within 15 s.
            (owner,) = owners()
            owner_daemon = nodes[owner]
            assert owner_daemon.cluster_drains is not None and owner_daemon.plane is not None
            ckpt_key = owner_daemon.plane.keys.checkpoint("app", drain_id)
            top = int(
                redis_server.command("GET", owner_daemon.plane.keys.sequence("app")).split(b"\r\n")[
                    1
                ]
            )
            await eventually(
                lambda: (
                    redis_server.command("GET", ckpt_key).split(b"\r\n")[1] == str(top).encode()
                ),
                5,
            )
            owner_daemon.cluster_drains.release_on_stop = False
            killed_at = trio.current_time()
            scopes[owner].cancel()
            alive = [name for name in nodes if name != owner]
            # Accepted while the drain has no owner: must not be lost.
            await send_numbered(ports[alive[0]].syslog, token, "D", range(50))
            await post_logs(tmp_path, ports[alive[1]].logs, token, "E", range(50))
            await eventually(lambda: len(owners()) == 1, 15)
            took = trio.current_time() - killed_at
            print("TAKEOVER", took, owner, owners())
            assert took < 15
            assert owners()[0] != owner
            phase2 = expected("D", range(50)) | expected("E", range(50))
            await eventually(lambda: set(sink.counts()) >= phase1 | phase2, 10)
            # At-least-once, and the checkpoint was stored after the last delivery: no
            # message is delivered twice here.
            assert set(sink.counts()) == phase1 | phase2
            assert max(sink.counts().values()) == 1

            # The new owner dies in the middle of a burst. Duplicates are bounded by what it
            # delivered after its last stored checkpoint (sequence = messages delivered so
            # far: the drain started on an empty stream and delivered in order, once each).
            (second,) = owners()
            nodes[second].cluster_drains.release_on_stop = False  # type: ignore[union-attr]
            (last,) = [name for name in alive if name != second]
            written = nodes[last].plane.messages_written  # type: ignore[union-attr]
            for start in range(0, 400, 100):  # (the buffer holds 150: one batch at a time)
                await send_numbered(ports[last].syslog, token, "K", range(start, start + 100))
                await eventually(
                    lambda w=written + start + 100: nodes[last].plane.messages_written >= w,  # type: ignore[union-attr]
                    5,
                )
                if start == 100:  # killed while the second batch is being delivered
                    scopes[second].cancel()
                    delivered = len(sink.counts())
                    assert max(sink.counts().values()) == 1
                    reply = redis_server.command("GET", ckpt_key)
                    checkpoint = int(reply.split(b"\r\n")[1])
            alive = [last]
            await eventually(lambda: owners() == [last], 15)
            phase3 = expected("K", range(400))
            await eventually(lambda: set(sink.counts()) >= phase1 | phase2 | phase3, 10)
            duplicates = sum(sink.counts().values()) - len(sink.counts())
            assert duplicates <= delivered - checkpoint
            print("IN-FLIGHT KILL", delivered, checkpoint, duplicates)

            # Redis goes away mid-stream: health says so, ingestion goes on (bounded).
            new_owner = owners()[0]
            ingest = (
                next(name for name in alive if name != new_owner) if len(alive) > 1 else alive[0]
            )
            victim.kill()
            await eventually(lambda: all(nodes[n].plane.failure for n in alive), 5)  # type: ignore[union-attr]
            for name in alive:
                status, _, _ = await curl(api(ports[name], "/v3/healthcheck"))
                assert status == 503
            plane = nodes[ingest].plane
            assert plane is not None
            before_drops, pushed = plane.buffer.dropped, plane.buffer.pushed
            # Twelve routed batches of 25: the buffer (150 messages) drops the oldest whole.
            for start in range(0, 300, 25):
                await send_numbered(ports[ingest].syslog, token, "F", range(start, start + 25))
                await eventually(lambda s=start: plane.buffer.pushed >= pushed + s + 25, 2)
            await eventually(lambda: plane.buffer.dropped - before_drops == 150, 5)
            victim.start()
            await eventually(
                lambda: all(
                    nodes[n].plane.failure is None and nodes[n].store.failure is None  # type: ignore[union-attr]
                    for n in alive
                ),
                10,
            )
            for name in alive:
                status, _, body = await curl(api(ports[name], "/v3/healthcheck"))
                assert (status, body) == (200, b"OK")
            # The newest 150 arrive; the 150 dropped are announced with their exact count.
            kept = expected("F", range(150, 300))
            await eventually(lambda: set(sink.counts()) >= phase1 | phase2 | kept, 15)
            assert not set(sink.counts()) & expected("F", range(150))
            assert b"Error L10 (output buffer overflow): 150 messages dropped since" in sink.data
            assert set(sink.counts()) == phase1 | phase2 | phase3 | kept


async def test_checkpoint_trimmed_away_gives_l10_with_the_exact_count(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A new owner whose checkpoint the stream no longer holds announces exactly what it
    cannot deliver (counted from the stream ids), then delivers what is left. The dead
    owner's report of its drain's position still counts (``DRAIN_STALE_MS``): the writer
    kept READER_SLACK x keep (80) behind the newest message for it, not keep (20)."""
    keep = 20
    async with nodes_with_a_drain(
        tmp_path, redis_server, history_messages=10, channel_buffer_messages=keep
    ) as pair:
        nodes, scopes, ports, sink = pair.nodes, pair.scopes, pair.ports, pair.sink
        token, drain_id, owner = pair.token, pair.drain_id, pair.owner
        with trio.fail_after(30):
            first = owner()
            assert first is not None
            await send_numbered(ports["A"].syslog, token, "G", range(10))
            await eventually(lambda: set(sink.counts()) >= expected("G", range(10)), 5)
            keys = nodes["A"].plane.keys  # type: ignore[union-attr]
            await eventually(
                lambda: redis_server.command("GET", keys.checkpoint("app", drain_id)).endswith(
                    b"\r\n10\r\n"
                ),
                5,
            )
            # Its report of where the drain is (every REPORT_INTERVAL) has landed too.
            await eventually(
                lambda: (
                    f"{first}/drains".encode() + b"\r\n$"
                    in redis_server.command("HGETALL", keys.readers("app"))
                ),
                5,
            )
            # The owner dies and, before anyone else can take the drain, 100 more messages
            # arrive in ten entries: the stream keeps the newest 80 for the drain (its
            # checkpoint, 10, is further behind than that).
            nodes[first].cluster_drains.release_on_stop = False  # type: ignore[union-attr]
            scopes[first].cancel()
            (other,) = [n for n in nodes if n != first]
            # Another node ("intruder", alive) takes the lease first.
            hold_lease(redis_server, keys, "app", drain_id, 60_000, holder="intruder")
            plane = nodes[other].plane
            assert plane is not None
            for start in range(0, 100, 10):
                written = plane.messages_written
                await send_numbered(ports[other].syslog, token, "H", range(start, start + 10))
                await eventually(lambda w=written: plane.messages_written >= w + 10, 5)
            assert owner() is None
            redis_server.command("DEL", keys.alive("intruder"))  # it dies
            await eventually(lambda: owner() == other, 5)
            await eventually(lambda: set(sink.counts()) >= expected("H", range(20, 100)), 5)
            assert READER_SLACK * keep == 80
            assert b"Error L10 (output buffer overflow): 20 messages dropped since" in sink.data
            assert not set(sink.counts()) & expected("H", range(20))
            assert max(sink.counts().values()) == 1


async def test_a_writer_waits_for_a_node_behind_on_the_stream_instead_of_trimming(
    tmp_path: Path, redis_any: RedisServer | RedisCluster
) -> None:
    """The drain's owner is behind on the channel (here: a consumer of its ring holds it, as
    a drain that would take more does) while the other node takes in 15 times what the
    stream keeps. Before, the writer trimmed the stream past the owner (L10, lost); now the
    owner's reported position keeps it, the writer waits once the owner is 4 x keep behind
    (its inputs wait too), and every message is delivered once, no L10."""
    keep = 40
    total = 15 * keep
    async with nodes_with_a_drain(
        tmp_path, redis_any, history_messages=keep, channel_buffer_messages=keep
    ) as pair:
        nodes, ports, sink, token = pair.nodes, pair.ports, pair.sink, pair.token
        with trio.fail_after(60):
            owner = pair.owner()
            assert owner is not None
            (other,) = [n for n in nodes if n != owner]
            channel = nodes[owner].registry.channel("app")
            assert channel is not None
            holder = object()
            reported = redis_any.command("HGETALL", nodes[owner].plane.keys.readers("app"))  # type: ignore[union-attr]
            channel.hold(holder)
            # Held, the owner's follower stops reading and says where it stands (again).
            await eventually(
                lambda: (
                    redis_any.command("HGETALL", nodes[owner].plane.keys.readers("app"))  # type: ignore[union-attr]
                    != reported
                ),
                5,
            )
            writer = nodes[other].plane.writer  # type: ignore[union-attr]
            async with trio.open_nursery() as senders:
                senders.start_soon(send_numbered, ports[other].syslog, token, "W", range(total))
                await eventually(lambda: writer.deferred > 0, 10)
                # Waiting, not trimming: the stream still holds the owner's next message.
                written = nodes[other].plane.messages_written  # type: ignore[union-attr]
                assert 4 * keep - keep <= written < total
                channel.release(holder)
            await eventually(lambda: set(sink.counts()) >= expected("W", range(total)), 20)
            assert b"L10" not in sink.data
            assert max(sink.counts().values()) == 1


async def test_a_graceful_stop_hands_the_drain_over_without_duplicates(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Checkpoints are stored at most every CHECKPOINT_INTERVAL; a node that stops
    gracefully stores its last one before handing the lease back, so the next owner goes on
    exactly where it stopped: every message once."""
    async with nodes_with_a_drain(tmp_path, redis_server) as pair:
        nodes, scopes, ports, sink = pair.nodes, pair.scopes, pair.ports, pair.sink
        token, owner = pair.token, pair.owner
        with trio.fail_after(30):
            first = owner()
            assert first is not None
            (other,) = [n for n in nodes if n != first]
            # Several deliveries in quick succession, the owner stops right after the last.
            plane = nodes[first].plane
            assert plane is not None
            trips, began = plane.trips["checkpoint"], trio.current_time()
            for start in range(0, 200, 20):
                await send_numbered(ports[other].syslog, token, "P", range(start, start + 20))
                await eventually(lambda s=start: len(sink.counts()) >= s + 20, 5)
            took = trio.current_time() - began
            # Ten deliveries, but one checkpoint round trip per CHECKPOINT_INTERVAL at most.
            assert plane.trips["checkpoint"] - trips <= took / CHECKPOINT_INTERVAL + 1
            scopes[first].cancel()
            await eventually(lambda: owner() == other, 5)
            await send_numbered(ports[other].syslog, token, "Q", range(50))
            every = expected("P", range(200)) | expected("Q", range(50))
            await eventually(lambda: set(sink.counts()) >= every, 10)
            assert set(sink.counts()) == every
            assert max(sink.counts().values()) == 1


async def test_two_nodes_share_a_redis_reached_only_through_its_unix_socket(
    tmp_path: Path, redis_unix_server: RedisServer
) -> None:
    """``unix:///PATH?db=0``: a redis-server with no TCP port at all (``--port 0``) serves
    the configuration, the streams and the drain's lease of two nodes; messages into both
    reach the drain once each, through the channel's stream."""
    server = redis_unix_server
    assert server.url.startswith("unix:///")
    async with nodes_with_a_drain(tmp_path, server, "AB") as two:
        with trio.fail_after(30):
            await send_numbered(two.ports["A"].syslog, two.token, "A", range(200))
            await send_numbered(two.ports["B"].syslog, two.token, "B", range(200))
            both = expected("A", range(200)) | expected("B", range(200))
            await eventually(lambda: set(two.sink.counts()) >= both, 10)
            assert set(two.sink.counts()) == both and set(two.sink.counts().values()) == {1}
            # Through Redis: each node wrote its 200 to the channel's stream.
            assert int(server.command("XLEN", "logplex:{ch:app}:log")[1:-2]) > 0
            planes = [two.nodes[name].plane for name in "AB"]
            assert [p.messages_written if p else None for p in planes] == [200, 200]
            reply = server.command("CLIENT", "LIST").decode()
            clients = reply.split("\r\n", 1)[1].split()  # past the bulk's $size
            # Both nodes' store and data-plane connections, all on the socket.
            addresses = [field for field in clients if field.startswith("addr=")]
            assert len(addresses) > 4
            assert set(addresses) == {f"addr={server.socket_path}:0"}


async def test_a_node_stops_promptly_while_redis_is_gone(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The last words of a stopping node (checkpoints, leases handed back) are bounded:
    with Redis gone they are given up after CLOSE_GRACE, and the node stops."""
    from logplexd.cluster import CLOSE_GRACE

    daemon = Daemon(node_settings(tmp_path, "A", redis_server))
    scope, stopped, sink = trio.CancelScope(), trio.Event(), Sink()

    async def node(*, task_status: trio.TaskStatus[BoundPorts]) -> None:
        try:
            await serve_in(daemon, scope, task_status=task_status)
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        sink_port = await nursery.start(sink.serve)
        ports = await nursery.start(node)
        with trio.fail_after(20):
            await eventually(lambda: daemon.plane is not None and daemon.plane.failure is None, 5)
            token = await channel_on_every_node(ports, [daemon])
            status, _, _ = await curl(
                "-X", "POST", *AUTH, *JSON, "-d", json.dumps({"url": f"syslog://127.0.0.1:{sink_port}"}),
                api(ports, "/v3/channels/app/drains"),
            )  # fmt: skip
            assert status == 201
            await send_numbered(ports.syslog, token, "S", range(10))
            await eventually(lambda: len(sink.counts()) == 10, 5)
            redis_server.kill()
            await eventually(lambda: daemon.plane is not None and daemon.plane.failure, 5)
            began = trio.current_time()
            scope.cancel()
            await stopped.wait()
            took = trio.current_time() - began
        nursery.cancel_scope.cancel()
    assert took < CLOSE_GRACE + 2, took
