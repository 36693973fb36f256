"""The configuration store on a real three-master Redis Cluster (issue 11).

The behaviour tests shared with the embedded store and one Redis run on the cluster too
(tests/test_store_redis.py, parameter ``cluster``); here is what only a cluster has: keys
spread over shards, seed nodes that do not own the configuration, slots that move.
"""

from __future__ import annotations

import time
from pathlib import Path

import trio

from logplexd.store import channel_key
from tests.helpers.redis import (
    PROPAGATION,
    RedisCluster,
    bulk_strings,
    integer,
    needs_redis,
    replicated,
    running,
    send,
)
from tests.helpers.store import state_of

pytestmark = needs_redis

CFG_KEY = "logplex:{cfg}:version"


async def test_channels_spread_over_shards_and_the_configuration_stays_on_one(
    redis_cluster: RedisCluster,
) -> None:
    async with running(redis_cluster.url) as store:
        names = [f"app-{i}" for i in range(12)]
        for name in names:
            await store.put_channel(name, ["web"])
        await store.create_drain("app-0", "syslog://h.example", max_drains=6)
        channels = sorted(c.name for c in store.channels())
    assert channels == sorted(names)
    # A channel's history key (and every other key of that channel) goes by its hash tag.
    owners = {redis_cluster.owner_of(channel_key("logplex", n, "log")) for n in channels}
    assert len(owners) >= 2, owners
    assert len(owners) == 3  # 12 names over 3 masters: deterministic, and all are used
    for name in channels:
        slot = redis_cluster.keyslot(channel_key("logplex", name, "log"))
        assert slot == redis_cluster.keyslot(channel_key("logplex", name, "drain:1:checkpoint"))
    # Every configuration key is in the one {cfg} slot, on one master (one atomic step).
    stored = redis_cluster.stored_keys()
    assert stored and all(key.startswith(b"logplex:{cfg}:") for key in stored)
    assert {redis_cluster.keyslot(key) for key in stored} == {redis_cluster.keyslot(CFG_KEY)}


async def test_a_change_on_one_node_applies_on_another_within_a_second(
    redis_cluster: RedisCluster,
) -> None:
    """Each store is seeded with one master only, and for one of them that master does not
    hold the configuration: the client finds its way by the slot map and MOVED."""
    owner = redis_cluster.owner_of(CFG_KEY)
    others = [p for p in redis_cluster.ports if p != owner]
    url_a = f"redis+cluster://127.0.0.1:{owner}"
    url_b = f"redis+cluster://127.0.0.1:{others[0]}"
    async with running(url_a, node_id="a") as a, running(url_b, node_id="b") as b:
        delays = []
        for i in range(5):
            writer, reader = (a, b) if i % 2 == 0 else (b, a)
            started = time.monotonic()
            await writer.put_channel(f"c{i}", ["t"])
            with trio.fail_after(PROPAGATION):
                while reader.channel(f"c{i}") is None:
                    await trio.sleep(0.002)
            delays.append(time.monotonic() - started)
        drain = await b.create_drain("c0", "syslog://x.example", max_drains=6)
        with trio.fail_after(PROPAGATION):
            while a.drain(drain.id) != drain:
                await trio.sleep(0.002)
        assert state_of(a) == state_of(b)
        assert max(delays) < PROPAGATION


def _migrate_slot(cluster: RedisCluster, slot: int, source: int, target: int) -> None:
    """Move one slot with its keys the way redis-cli --cluster reshard does."""
    source_id = send(source, "CLUSTER", "MYID").split(b"\r\n")[1]
    target_id = send(target, "CLUSTER", "MYID").split(b"\r\n")[1]
    assert send(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id) == b"+OK\r\n"
    assert send(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id) == b"+OK\r\n"
    keys = bulk_strings(send(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "1000"))
    assert keys
    reply = send(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *keys)
    assert reply == b"+OK\r\n", reply
    for port in (target, source, *[p for p in cluster.ports if p not in (source, target)]):
        assert send(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id) == b"+OK\r\n"


async def test_the_configuration_slot_moves_to_another_master(
    redis_cluster: RedisCluster,
) -> None:
    """Resharding the {cfg} slot while two nodes run: both follow the MOVED redirection,
    keep writing and keep seeing each other's changes, and nothing is lost."""
    async with running(redis_cluster.url, node_id="a") as a, running(redis_cluster.url) as b:
        await a.put_channel("before", ["t"])
        with trio.fail_after(PROPAGATION):
            while b.channel("before") is None:
                await trio.sleep(0.005)
        slot = redis_cluster.keyslot(CFG_KEY)
        source = redis_cluster.owner_of(CFG_KEY)
        target = next(p for p in redis_cluster.ports if p != source)
        await trio.to_thread.run_sync(_migrate_slot, redis_cluster, slot, source, target)
        redis_cluster.wait_ready()  # refresh the test's own slot map
        assert redis_cluster.owner_of(CFG_KEY) == target
        assert integer(send(source, "CLUSTER", "COUNTKEYSINSLOT", str(slot))) == 0

        with trio.fail_after(10):
            await b.put_channel("after-b", [])
            await a.put_channel("after-a", [])
            while a.channel("after-b") is None or b.channel("after-a") is None:
                await trio.sleep(0.005)
        assert state_of(a) == state_of(b)
        assert sorted(c.name for c in a.channels()) == ["after-a", "after-b", "before"]
        assert a.failure is None and b.failure is None
        # A redirection is followed, not taken for a lost Redis: no reload was needed.
        assert (a.rebuilds, b.rebuilds) == (1, 1)


async def test_a_failover_of_the_configuration_master(tmp_path: Path) -> None:
    """Three masters with a replica each; the master holding {cfg} is killed. After the
    replica takes over (cluster-node-timeout 2 s), both nodes reconnect to it by themselves,
    writes work again and changes flow between the nodes."""
    cluster = RedisCluster(tmp_path, replicas=1, persistent=True)
    await trio.to_thread.run_sync(cluster.start)
    try:
        async with running(cluster.url, node_id="a") as a, running(cluster.url) as b:
            await a.put_channel("before", ["t"])
            # Replication is asynchronous: a 2xx means the change is on the master, and a
            # failover before the replica has it loses it (docs/configuration.md). Wait
            # until the replica has acknowledged the master's whole replication stream.
            master = cluster.server_of(CFG_KEY)
            await trio.to_thread.run_sync(replicated, master.port)
            with trio.fail_after(PROPAGATION):
                while b.channel("before") is None:
                    await trio.sleep(0.005)
            master.kill()
            with trio.fail_after(5):
                while a.failure is None:
                    await trio.sleep(0.01)
            await trio.to_thread.run_sync(cluster.wait_ready)
            assert cluster.owner_of(CFG_KEY) != master.port
            with trio.fail_after(15):
                await a.connected.wait()
                await b.connected.wait()
                await b.put_channel("after", [])
                while a.channel("after") is None:
                    await trio.sleep(0.005)
            assert sorted(c.name for c in a.channels()) == ["after", "before"]
            assert state_of(a) == state_of(b)
    finally:
        cluster.kill()
