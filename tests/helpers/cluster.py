"""Several whole daemons on one Redis (or Redis Cluster): node settings, a channel every
node routes, numbered messages, and a TCP sink that counts them."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio

from logplexd.cluster import Keys, NodeDir
from logplexd.config import Settings
from logplexd.daemon import BoundPorts, Daemon

from .curl import AUTH, JSON, api, curl
from .daemon import settings_for
from .redis import RedisCluster, RedisServer, eventually, integer
from .syslog import frame, send_syslog

# The message texts the multi-node tests send: msg-<tag>-<number>.
MSG = re.compile(rb"msg-[A-Z]-\d{4}\.")


def text(tag: str, i: int) -> str:
    """Message ``i`` of the series ``tag`` (one capital letter), as ``MSG`` finds it."""
    return f"msg-{tag}-{i:04d}."


# Messages this large fill the sockets' buffers between a node and a stalled receiver (a
# few MB on loopback) with a few hundred messages, so the ring laps the drain.
PAD = b" " + b"x" * 8000


def padded(token: str, tag: str, numbers: range) -> bytes:
    """Messages ``numbers`` of series ``tag``, of 8 KB each (``PAD``), for ``token``."""
    return b"".join(frame(token, text(tag, i).encode() + PAD) for i in numbers)


def oldest(server: RedisServer) -> int:
    """The message sequence channel "app"'s oldest stream entry ends at (0: none)."""
    stream = Keys().stream("app")
    found = re.search(rb"(\d+)-0", server.command("XRANGE", stream, "-", "+", "COUNT", "1"))
    return int(found.group(1)) if found is not None else 0


def numbered(token: str, tag: str, numbers: Iterable[int]) -> bytes:
    """The frames of messages ``numbers`` of series ``tag``, for ``token``."""
    return b"".join(frame(token, text(tag, i)) for i in numbers)


def expected(tag: str, numbers: Iterable[int]) -> set[bytes]:
    """The texts a sink should hold for messages ``numbers`` of series ``tag``."""
    return {text(tag, i).encode() for i in numbers}


async def send_numbered(port: int, token: str, tag: str, numbers: Iterable[int]) -> None:
    """Messages ``numbers`` of series ``tag`` on one TCP syslog connection to ``port``."""
    await send_syslog(port, numbered(token, tag, numbers))


class Sink:
    """A TCP drain endpoint: every connection's bytes, in arrival order."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.connections = 0

    async def serve(
        self, port: int = 0, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            while data := await stream.receive_some(65536):
                self.data += data
        except trio.BrokenResourceError:
            pass

    def messages(self) -> list[bytes]:
        """The ``MSG`` texts received, in order."""
        return MSG.findall(bytes(self.data))

    def counts(self) -> Counter[bytes]:
        return Counter(self.messages())


def node_settings(
    tmp_path: Path, name: str, server: RedisServer | RedisCluster, **overrides: Any
) -> Settings:
    """Settings of logplexd node ``name``: loopback ports, its own data dir, ``server``'s URL."""
    return dataclasses.replace(
        settings_for(tmp_path),
        data_dir=tmp_path / name,
        store_url=server.url,
        node_id=name,
        **overrides,
    )


def hold_lease(
    server: RedisServer | RedisCluster,
    keys: Keys,
    channel: str,
    drain_id: int,
    ms: int,
    holder: str = "ghost",
) -> None:
    """Hold drain ``drain_id``'s lease for another node, ``holder``, that lives ``ms`` more
    milliseconds: the lease key names it, and its liveness key then expires."""
    server.command("SET", keys.alive(holder), "1", "PX", str(ms))
    server.command("SET", keys.lease(channel, drain_id), holder)


def next_drain_id(server: RedisServer | RedisCluster) -> int:
    """The id the store gives the next drain (its counter: redis_store.py, P:{cfg}:drain_index)."""
    reply = server.command("GET", "logplex:{cfg}:drain_index")
    return 1 if reply.startswith(b"$-1") else int(reply.split(b"\r\n")[1]) + 1


def is_alive(server: RedisServer | RedisCluster, keys: Keys, holder: str) -> bool:
    """Whether incarnation ``holder``'s liveness key exists."""
    return integer(server.command("EXISTS", keys.alive(holder))) == 1


def recorded_incarnations(data_dir: Path) -> list[str]:
    """The incarnations a node's data dir records (read without its lock: the node may run)."""
    return NodeDir.peek(data_dir)


async def channel_with_drain(
    ports: BoundPorts, sink_port: int, token_name: str = "web"
) -> tuple[str, int]:
    """Channel "app" (one token, ``token_name``) with one syslog drain to ``sink_port``, made
    over the v3 API with curl; its token and the drain's id."""
    status, _, body = await curl(
        "-X", "PUT", *AUTH, *JSON, "-d", json.dumps({"tokens": [token_name]}),
        api(ports, "/v3/channels/app"),
    )  # fmt: skip
    assert status == 201
    token: str = json.loads(body)["tokens"][token_name]
    status, _, body = await curl(
        "-X", "POST", *AUTH, *JSON,
        "-d", json.dumps({"url": f"syslog://127.0.0.1:{sink_port}/"}),
        api(ports, "/v3/channels/app/drains"),
    )  # fmt: skip
    assert status == 201
    return token, json.loads(body)["id"]


async def channel_on_every_node(api_ports: BoundPorts, nodes: Iterable[Daemon]) -> str:
    """PUT channel "app" with token name "web" through ``api_ports`` (one node's BoundPorts);
    return the token once every daemon in ``nodes`` routes it."""
    status, _, body = await curl(
        "-X", "PUT", *AUTH, *JSON, "-d", '{"tokens":["web"]}', api(api_ports, "/v3/channels/app")
    )  # fmt: skip
    assert status == 201
    token: str = json.loads(body)["tokens"]["web"]
    await eventually(lambda: all(n.registry.channel_of_token(token) for n in nodes))
    return token
