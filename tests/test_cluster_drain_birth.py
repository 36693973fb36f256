"""A new drain delivers every message sent after the API answered for it (issue 11).

In Redis mode a drain runs on the node holding its lease, from its checkpoint. The birth
checkpoint (``logplexd.cluster.birth``) is written before the 201, so messages sent before
any node owns the drain are delivered by its first owner. The tests keep the lease held by
a foreign node ("ghost", alive while its liveness key lasts) while messages arrive, so that
no node can own the drain yet.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from logplexd.api import ControlApi
from logplexd.cluster import DataPlane, birth_hook
from logplexd.daemon import BoundPorts, Daemon
from tests.helpers.api import AUTH_KEY as UNIT_AUTH_KEY
from tests.helpers.api import FakeRegistry, call
from tests.helpers.cluster import (
    Sink,
    channel_on_every_node,
    hold_lease,
    next_drain_id,
    node_settings,
    numbered,
    send_numbered,
    text,
)
from tests.helpers.curl import AUTH, JSON, api, curl
from tests.helpers.net import free_port
from tests.helpers.peers import needs_curl
from tests.helpers.redis import RedisCluster, RedisServer, eventually, running

pytestmark = [pytest.mark.integration, needs_curl]

# Lease ttl 2 s: a tick every 0.5 s. The ghost holds the lease 2 s, far longer than the
# messages below take to reach Redis, and the node acquires it within a tick after.
LEASE_TTL = 2.0
GHOST_MS = 2000


def expected(tag: str, numbers: range) -> list[bytes]:
    return [text(tag, i).encode() for i in numbers]


def bulk(reply: bytes) -> bytes | None:
    """The value of a RESP bulk-string reply (None for nil)."""
    if reply.startswith(b"$-1"):
        return None
    assert reply.startswith(b"$"), reply
    return reply.split(b"\r\n")[1]


async def send_and_store(daemon: Daemon, ports: BoundPorts, token: str, tag: str, n: int) -> None:
    """``n`` messages into the node's syslog port; returns once they are in the stream."""
    plane = daemon.plane
    assert plane is not None
    written = plane.messages_written
    stream = await trio.open_tcp_stream("127.0.0.1", ports.syslog)
    await stream.send_all(numbered(token, tag, range(n)))
    await stream.aclose()
    await eventually(lambda: plane.messages_written >= written + n, 5)


async def start_node(
    tmp_path: Path, server: RedisServer | RedisCluster, nursery: trio.Nursery
) -> tuple[Daemon, BoundPorts, str]:
    settings = node_settings(tmp_path, "A", server, drain_lease_ttl=LEASE_TTL)
    daemon = Daemon(settings)
    ports = await nursery.start(daemon.serve)
    await eventually(lambda: daemon.plane is not None and daemon.plane.failure is None, 5)
    token = await channel_on_every_node(ports, [daemon])
    return daemon, ports, token


@dataclasses.dataclass
class NodeWithSink:
    """One node serving channel "app" (``token``), and a TCP sink for its drains."""

    daemon: Daemon
    ports: BoundPorts
    token: str
    plane: DataPlane
    sink: Sink
    sink_port: int

    def parts(self) -> tuple[Daemon, BoundPorts, str, DataPlane, Sink]:
        return self.daemon, self.ports, self.token, self.plane, self.sink

    async def drain_to_sink(self, method: str = "POST", drain_id: int | None = None):
        """Create (POST) or point (PUT) a drain of "app" at the sink: (status, body)."""
        path = "/v3/channels/app/drains" + ("" if drain_id is None else f"/{drain_id}")
        url = json.dumps({"url": f"syslog://127.0.0.1:{self.sink_port}"})
        status, _, body = await curl("-X", method, *AUTH, *JSON, "-d", url, api(self.ports, path))
        return status, body


@asynccontextmanager
async def node_with_sink(
    tmp_path: Path, server: RedisServer | RedisCluster
) -> AsyncIterator[NodeWithSink]:
    sink = Sink()
    async with trio.open_nursery() as nursery:
        sink_port = await nursery.start(sink.serve)
        daemon, ports, token = await start_node(tmp_path, server, nursery)
        assert daemon.plane is not None
        yield NodeWithSink(daemon, ports, token, daemon.plane, sink, sink_port)
        nursery.cancel_scope.cancel()


def owned(daemon: Daemon, drain_id: int) -> bool:
    return daemon.cluster_drains is not None and drain_id in daemon.cluster_drains.owned()


async def test_messages_sent_before_any_node_owns_a_new_drain_are_delivered(
    tmp_path: Path, redis_any: RedisServer | RedisCluster
) -> None:
    """On one Redis and on a three-master Redis Cluster (the birth script touches two keys
    of one channel: one hash slot)."""
    async with node_with_sink(tmp_path, redis_any) as node:
        daemon, ports, token, plane, sink = node.parts()
        with trio.fail_after(60):
            # Sent before the drain exists: not for it.
            await send_and_store(daemon, ports, token, "P", 10)
            drain_id = next_drain_id(redis_any)
            lease_key = plane.keys.lease("app", drain_id)
            ckpt_key = plane.keys.checkpoint("app", drain_id)
            hold_lease(redis_any, plane.keys, "app", drain_id, GHOST_MS)
            trips = plane.trips["other"]

            status, body = await node.drain_to_sink()
            assert status == 201
            assert json.loads(body)["id"] == drain_id
            # Stored before the answer: the channel's sequence when the drain was made.
            assert bulk(redis_any.command("GET", ckpt_key)) == b"10"
            assert plane.trips["other"] == trips + 1

            # Accepted while no node can own the drain (the ghost holds its lease).
            await send_and_store(daemon, ports, token, "N", 50)
            assert not owned(daemon, drain_id)
            assert bulk(redis_any.command("GET", lease_key)) == b"ghost"

            # The ghost dies (its liveness key expires); the node takes the drain over and
            # starts from its birth.
            await eventually(lambda: owned(daemon, drain_id), 5)
            await eventually(lambda: len(sink.messages()) >= 50, 5)
            await trio.sleep(0.2)  # anything extra (a duplicate, a "P") would show by now
            assert sink.messages() == expected("N", range(50))
            # The owner's checkpoints move on from the birth one.
            await eventually(lambda: bulk(redis_any.command("GET", ckpt_key)) == b"60", 5)


async def test_a_reservation_is_born_when_it_gets_its_url(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A drain reserved without a URL delivers nothing sent before it got one, and
    everything sent after (even before any node owns it)."""
    async with node_with_sink(tmp_path, redis_server) as node:
        daemon, ports, token, plane, sink = node.parts()
        with trio.fail_after(60):
            drain_id = next_drain_id(redis_server)
            ckpt_key = plane.keys.checkpoint("app", drain_id)

            status, _, body = await curl(
                "-X", "POST", *AUTH, *JSON, "-d", "{}", api(ports, "/v3/channels/app/drains"),
            )  # fmt: skip
            assert (status, json.loads(body)["id"]) == (201, drain_id)
            assert bulk(redis_server.command("GET", ckpt_key)) is None  # not born yet
            await send_and_store(daemon, ports, token, "R", 5)

            hold_lease(redis_server, plane.keys, "app", drain_id, GHOST_MS)
            status, _ = await node.drain_to_sink("PUT", drain_id)
            assert status == 200
            assert bulk(redis_server.command("GET", ckpt_key)) == b"5"
            await send_and_store(daemon, ports, token, "S", 20)
            assert not owned(daemon, drain_id)

            await eventually(lambda: owned(daemon, drain_id), 5)
            await eventually(lambda: len(sink.messages()) >= 20, 5)
            await trio.sleep(0.2)
            assert sink.messages() == expected("S", range(20))


async def test_birth_write_failing_still_answers_201_and_logs_no_secret(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The configuration store answers but the data plane does not (here: its Redis is a
    port nobody listens on): the drain is stored, the API answers 201, one warning names
    the drain by id only."""
    secret_url = "https://user:pa55word@127.0.0.1:9/drain?key=hush"
    async with running(redis_server.url) as store, trio.open_nursery() as nursery:
        plane = DataPlane(f"redis://127.0.0.1:{free_port()}/0", node_id="A", keep_messages=100)
        await nursery.start(plane.run)
        store.drain_birth_hooks.append(birth_hook(plane))
        control = ControlApi(
            store, FakeRegistry(), auth_key=UNIT_AUTH_KEY, public_url="http://logplex.example"
        )
        with trio.fail_after(10):
            assert (await call(control, "PUT", "/v3/channels/app", {})).status == 201
            caplog.clear()
            with caplog.at_level(logging.DEBUG):
                reply = await call(control, "POST", "/v3/channels/app/drains", {"url": secret_url})
        assert reply.status == 201
        drain = reply.json
        assert [d.id for d in store.drains()] == [drain["id"]]
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [(r.name, r.levelno) for r in warnings] == [("logplexd.drains", logging.WARNING)]
        line = warnings[0].getMessage()
        assert f"drain {drain['id']} of app: start point not stored" in line
        for secret in ("pa55word", "hush", "127.0.0.1:9", drain["token"]):
            assert secret not in line
        # Nothing logged while creating it shows the URL's password or the drain token.
        everything = "\n".join(r.getMessage() for r in caplog.records)
        assert "pa55word" not in everything and drain["token"] not in everything
        nursery.cancel_scope.cancel()


async def test_a_drain_taken_on_a_node_already_following_reads_its_gap_from_the_stream(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node that takes the drain already follows the channel (a tail) from later than
    the drain's checkpoint: what lies between is read from the stream, not called lost;
    once delivered, the node keeps nothing of that read."""
    async with node_with_sink(tmp_path, redis_server) as node:
        daemon, ports, token, plane, sink = node.parts()
        reads: list[Any] = []  # the catch-up reads, and nothing else referring to them
        read_range = plane.read_range

        async def read_and_keep(*args: Any) -> Any:
            reads.append(await read_range(*args))
            return reads[-1]

        monkeypatch.setattr(plane, "read_range", read_and_keep)
        with trio.fail_after(60):
            drain_id = next_drain_id(redis_server)
            hold_lease(redis_server, plane.keys, "app", drain_id, GHOST_MS)
            status, _ = await node.drain_to_sink()
            assert status == 201
            await send_and_store(daemon, ports, token, "N", 50)
            # A reader on this node follows the channel from here on (as a tail would).
            channel = daemon.registry.channel("app")
            assert channel is not None
            follow = plane.hold(channel, await plane.top("app"))
            assert not owned(daemon, drain_id)
            await eventually(lambda: owned(daemon, drain_id), 5)
            await send_and_store(daemon, ports, token, "M", 10)
            await eventually(lambda: len(sink.messages()) >= 60, 5)
            await trio.sleep(0.2)  # anything extra (a duplicate) would show by now
            assert sink.messages() == expected("N", range(50)) + expected("M", range(10))
            assert b"L10" not in sink.data
            ckpt_key = plane.keys.checkpoint("app", drain_id)
            await eventually(lambda: bulk(redis_server.command("GET", ckpt_key)) == b"60", 5)
            assert len(reads) == 1 and len(reads[0].batch) == 50
            gc.collect()
            assert gc.get_referrers(reads[0]) == [reads]
            plane.release(follow)


async def test_a_drain_deleted_before_any_node_owns_it_leaves_no_key_behind(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Drain checkpoints never pile up in Redis: deleting a drain deletes its checkpoint on
    every node, owned or not, and every checkpoint carries an expiry as a backstop."""
    from logplexd.cluster import CHECKPOINT_TTL_MS

    async with node_with_sink(tmp_path, redis_server) as node:
        daemon, ports, token, plane, sink = node.parts()
        with trio.fail_after(30):
            drain_id = next_drain_id(redis_server)
            ckpt_key = plane.keys.checkpoint("app", drain_id)
            hold_lease(redis_server, plane.keys, "app", drain_id, 60_000)
            status, _ = await node.drain_to_sink()
            assert status == 201
            assert bulk(redis_server.command("GET", ckpt_key)) == b"0"
            ttl = int(redis_server.command("PTTL", ckpt_key)[1:].split(b"\r\n")[0])
            assert 0 < ttl <= CHECKPOINT_TTL_MS
            status, _, _ = await curl(
                "-X", "DELETE", *AUTH, api(ports, f"/v3/channels/app/drains/{drain_id}")
            )
            assert status == 204
            assert not owned(daemon, drain_id)
            await eventually(lambda: redis_server.command("EXISTS", ckpt_key) == b":0\r\n", 5)
            # Its lease key too, though a node that is not its holder deleted it.
            lease_key = plane.keys.lease("app", drain_id)
            assert redis_server.command("EXISTS", lease_key) == b":0\r\n"


async def test_deleting_a_channel_stops_its_drains_and_no_other(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A channel deleted in Redis mode takes its drains with it (stopped, their checkpoints
    deleted); another channel's drain runs on."""
    async with node_with_sink(tmp_path, redis_server) as node:
        daemon, ports, _, plane, _ = node.parts()
        with trio.fail_after(30):
            other = api(ports, "/v3/channels/other")
            status, _, _ = await curl("-X", "PUT", *AUTH, *JSON, "-d", '{"tokens":["x"]}', other)
            assert status == 201
            made: dict[str, list[int]] = {"app": [], "other": []}
            for channel, path in (("app", "a"), ("app", "b"), ("other", "c")):
                url = json.dumps({"url": f"syslog://127.0.0.1:{node.sink_port}/{path}"})
                status, _, body = await curl(
                    "-X", "POST", *AUTH, *JSON, "-d", url,
                    api(ports, f"/v3/channels/{channel}/drains"),
                )  # fmt: skip
                assert status == 201
                made[channel].append(json.loads(body)["id"])
            ids, (kept,) = made["app"], made["other"]
            await eventually(lambda: all(owned(daemon, i) for i in [*ids, kept]), 10)
            status, _, _ = await curl("-X", "DELETE", *AUTH, api(ports, "/v3/channels/app"))
            assert status == 204
            await eventually(lambda: not any(owned(daemon, i) for i in ids), 5)
            assert owned(daemon, kept)
            drains = daemon.cluster_drains
            assert drains is not None and sorted(drains.wanted) == [kept]
            for drain_id in ids:
                key = plane.keys.checkpoint("app", drain_id)
                await eventually(lambda k=key: redis_server.command("EXISTS", k) == b":0\r\n", 5)
            key = plane.keys.checkpoint("other", kept)
            assert redis_server.command("EXISTS", key) == b":1\r\n"


async def test_drains_taken_over_together_start_in_two_round_trips(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A node that takes over many drains at once (their holder died) reads where each
    resumes for all of them together: one round trip for the checkpoints, one for the
    stream tops of those without one, however many drains (one or two each, before: a
    node taking over 10,000 drains started ~2,000 a second)."""
    caplog.set_level(logging.INFO, "logplexd.drains")
    async with node_with_sink(tmp_path, redis_server) as node:
        daemon, ports, _, plane, _ = node.parts()
        with trio.fail_after(30):
            first = next_drain_id(redis_server)
            drains = {f"c{k}": first + k for k in range(20)}
            tokens = {}
            for channel, drain_id in drains.items():
                hold_lease(redis_server, plane.keys, channel, drain_id, GHOST_MS)
                path = api(ports, f"/v3/channels/{channel}")
                status, _, body = await curl(
                    "-X", "PUT", *AUTH, *JSON, "-d", '{"tokens":["x"]}', path
                )  # fmt: skip
                assert status == 201
                tokens[channel] = json.loads(body)["tokens"]["x"]
                url = json.dumps({"url": f"syslog://127.0.0.1:{node.sink_port}/{channel}"})
                status, _, body = await curl(
                    "-X", "POST", *AUTH, *JSON, "-d", url, path + "/drains"
                )  # fmt: skip
                assert status == 201 and json.loads(body)["id"] == drain_id
            # Three messages each after the drains' births (at 0): a drain with its
            # checkpoint starts after 0, one without after its stream's top, 3.
            for channel, token in tokens.items():
                await send_numbered(ports.syslog, token, channel, range(3))
            for channel in drains:
                await eventually(
                    lambda c=channel: (
                        redis_server.command("GET", plane.keys.sequence(c)) == b"$1\r\n3\r\n"
                    ),
                    5,
                )
            # Half of them without a checkpoint (as if it had expired): they start from their
            # stream's top.
            expired = list(drains.items())[::2]
            # The ghost lives GHOST_MS more from here (the sends took some of it).
            redis_server.command("SET", plane.keys.alive("ghost"), "1", "PX", str(GHOST_MS))
            for channel, drain_id in expired:
                redis_server.command("DEL", plane.keys.checkpoint(channel, drain_id))
            before = plane.trips["other"]
            await eventually(lambda: all(owned(daemon, i) for i in drains.values()), 10)
            assert plane.trips["other"] - before == 2
            starts = {
                int(m[1]): int(m[2])
                for r in caplog.records
                if (m := re.match(r"drain (\d+) of \S+: owned by this node .*, from message (\d+)",
                                  r.getMessage()))
            }  # fmt: skip
            assert starts == {i: 3 if (c, i) in expired else 0 for c, i in drains.items()}
