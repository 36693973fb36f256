"""Three whole daemons sharing one real redis-server (issue 11, configuration part)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from logplexd.daemon import BoundPorts, Daemon
from tests.helpers.cluster import node_settings
from tests.helpers.curl import AUTH, JSON, api, curl
from tests.helpers.peers import needs_curl
from tests.helpers.redis import PROPAGATION, RedisCluster, RedisServer, eventually
from tests.helpers.syslog import frame

pytestmark = [pytest.mark.integration, needs_curl]


async def test_three_nodes_share_configuration(
    tmp_path: Path, redis_any: RedisServer | RedisCluster
) -> None:
    """On one Redis and on a three-master Redis Cluster alike."""
    nodes = {name: Daemon(node_settings(tmp_path, name, redis_any)) for name in "ABC"}
    # On a cluster, only the master holding the configuration is stopped (the others serve).
    victim = redis_any
    if isinstance(redis_any, RedisCluster):
        victim = redis_any.server_of("logplex:{cfg}:version")
    async with trio.open_nursery() as nursery:
        ports: dict[str, BoundPorts] = {}
        for name, daemon in nodes.items():
            ports[name] = await nursery.start(daemon.serve)
        a, b, c = nodes["A"], nodes["B"], nodes["C"]
        with trio.fail_after(15):
            # A channel created on A ...
            status, _, body = await curl(
                "-X", "PUT", *AUTH, *JSON, "-d", '{"tokens":["web"]}',
                api(ports["A"], "/v3/channels/app"),
            )  # fmt: skip
            assert status == 201
            token = json.loads(body)["tokens"]["web"]
            # ... takes messages on B's syslog port and C's /logs within a second.
            await eventually(
                lambda: all(n.registry.channel_of_token(token) is not None for n in (b, c)),
                PROPAGATION,
            )
            stream = await trio.open_tcp_stream("127.0.0.1", ports["B"].syslog)
            await stream.send_all(frame(token, "via B"))
            body_file = tmp_path / "frames"
            body_file.write_bytes(frame(token, "via C"))
            status, _, _ = await curl(
                "-u", f"token:{token}", "-H", "Content-Type: application/logplex-1",
                "-H", "Logplex-Msg-Count: 1", "--data-binary", f"@{body_file}",
                f"http://127.0.0.1:{ports['C'].logs}/logs",
            )  # fmt: skip
            assert status == 204
            # (Each node writes what it accepted to the channel's stream: test_cluster_nodes.)
            await eventually(
                lambda: all(n.plane is not None and n.plane.messages_written >= 1 for n in (b, c))
            )
            await stream.aclose()

            # A drain added on B is known to every node and runs on one (its lease owner).
            status, _, body = await curl(
                "-X", "POST", *AUTH, *JSON, "-d", '{"url":"syslog://127.0.0.1:9"}',
                api(ports["B"], "/v3/channels/app/drains"),
            )  # fmt: skip
            assert status == 201
            await eventually(
                lambda: (
                    all(n.cluster_drains and len(n.cluster_drains) == 1 for n in nodes.values())
                    and sum(len(n.drains) for n in nodes.values()) == 1
                )
            )

            # A configuration change on C takes effect on A within a second.
            status, _, body = await curl(
                "-X", "PUT", *AUTH, *JSON, "-d", '{"tokens":["worker"]}',
                api(ports["C"], "/v3/channels/app"),
            )  # fmt: skip
            assert status == 200
            worker = json.loads(body)["tokens"]["worker"]
            await eventually(
                lambda: (
                    a.registry.channel_of_token(worker) is not None
                    and a.registry.channel_of_token(token) is None
                ),
                PROPAGATION,
            )
            status, _, body = await curl(*AUTH, api(ports["A"], "/v3/channels/app"))
            assert status == 200 and json.loads(body)["tokens"] == {"worker": worker}

            # Redis goes away: health and writes say so; it comes back: all recover.
            victim.kill()
            await eventually(lambda: all(n.store and n.store.failure for n in nodes.values()), 5)
            status, _, _ = await curl(*AUTH, api(ports["A"], "/healthcheck"))
            assert status == 503
            status, _, _ = await curl(
                "-X", "PUT", *AUTH, *JSON, "-d", "{}", api(ports["A"], "/v3/channels/other"),
            )  # fmt: skip
            assert status == 503
            victim.start()
            await eventually(
                lambda: all(n.store and n.store.failure is None for n in nodes.values()), 5
            )
            status, _, _ = await curl(*AUTH, api(ports["A"], "/healthcheck"))
            assert status == 200
            status, _, _ = await curl(
                "-X", "DELETE", *AUTH, api(ports["B"], "/v3/channels/app"),
            )  # fmt: skip
            assert status == 204
            await eventually(
                lambda: (
                    all(n.registry.channel("app") is None for n in nodes.values())
                    and all(len(n.drains) == 0 for n in nodes.values())
                )
            )
        nursery.cancel_scope.cancel()
