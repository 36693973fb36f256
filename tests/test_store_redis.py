"""The Redis store (issue 11) against a real redis-server started here, and the embedded store
through the same behaviour tests.

Every redis-server runs on a free loopback port with its own temp dir and is stopped by pid.
Without the binary (``apt-get install redis-server``) or the ``coredis`` package the Redis
cases are skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from logplexd.config import ConfigError, load_settings
from logplexd.router import attach_registry
from logplexd.router.registry import Registry
from logplexd.store import (
    ChannelAdded,
    ChannelExists,
    ChannelNotFound,
    ChannelRecord,
    ChannelRemoved,
    ChannelUpdated,
    CredentialExists,
    CredentialRecord,
    DrainAdded,
    DrainExists,
    DrainLimitReached,
    DrainNotFound,
    DrainRemoved,
    DrainUpdated,
    EmbeddedStore,
    RedisStore,
    StoreError,
    StoreUnavailable,
    TokenAdded,
    TokenRemoved,
    open_store,
)
from logplexd.store._redis_client import parse_redis_url
from tests.helpers.api import FakeRegistry
from tests.helpers.redis import (
    REDIS_SERVER,
    RedisCluster,
    RedisServer,
    bulk_strings,
    eventually,
    module_cluster,
    needs_redis,
    running,
)
from tests.helpers.store import populate, state_of

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One cluster for the tests of this module that do not stop it: each test keeps to
    its own key prefix (a cluster takes about 2 s to form)."""
    yield from module_cluster(tmp_path_factory)


class Shared:
    """One Redis or a Redis Cluster seen by one test: a URL and a prefix of its own."""

    def __init__(self, server: RedisServer | RedisCluster) -> None:
        self.server = server
        self.url = server.url
        self.prefix = f"t{next(_prefixes)}"

    def running(self, **options: Any) -> contextlib.AbstractAsyncContextManager[RedisStore]:
        options.setdefault("prefix", self.prefix)
        return running(self.url, **options)

    def key(self, name: str) -> str:
        return f"{self.prefix}:{{cfg}}:{name}"

    def command(self, *args: str) -> bytes:
        return self.server.command(*args)

    def stored_keys(self) -> list[bytes]:
        return [k for k in self.server.stored_keys() if k.startswith(f"{self.prefix}:".encode())]


@pytest.fixture(params=["single", "cluster"])
def shared(request: pytest.FixtureRequest) -> Shared:
    """The test runs on one Redis and on a Redis Cluster (shared by the module)."""
    name = "redis_server" if request.param == "single" else "shared_cluster"
    return Shared(request.getfixturevalue(name))


# -- both backends through the same behaviour tests -----------------------------------------


class Backend:
    """Opens "the" store of one backend; opening again is a restart (reload from storage)."""

    def __init__(self, kind: str, tmp_path: Path, redis: Shared | None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.redis = redis

    @contextlib.asynccontextmanager
    async def open(self, **options: Any) -> AsyncIterator[Any]:
        if self.redis is None:
            store = open_store(str(self.tmp_path / "data"), **options)
            try:
                yield store
            finally:
                store.close()
        else:
            async with self.redis.running(**options) as store:
                yield store


@pytest.fixture(params=["embedded", "redis", "cluster"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The embedded store, one Redis, a Redis Cluster: the same behaviour from each."""
    if request.param == "embedded":
        yield Backend("embedded", tmp_path, None)
        return
    name = "redis_server" if request.param == "redis" else "shared_cluster"
    yield Backend(request.param, tmp_path, Shared(request.getfixturevalue(name)))


async def test_everything_survives_reopen(backend: Backend) -> None:
    async with backend.open() as store:
        await populate(store)
        session = await store.create_session({"channel_id": "app-1", "num": "5"})
        before = state_of(store)
        order = [t.name for t in store.tokens_of("1")]
    async with backend.open() as store:
        assert state_of(store) == before
        assert [t.name for t in store.tokens_of("1")] == order == ["app", "web"]
        assert store.session(session.id) == session
        assert [t.name for t in store.tokens_of("app-1")] == ["b", "c"]
        channel, _ = await store.create_channel()
        assert channel.name == "2"
        drain = await store.create_drain("app-1", "syslog://other", max_drains=6)
        assert drain.id == 4


async def test_ids_are_not_reused_after_delete(backend: Backend) -> None:
    async with backend.open() as store:
        first, _ = await store.create_channel()
        drain = await store.create_drain(first.name, "syslog://a", max_drains=6)
        await store.delete_channel(first.name)
    async with backend.open() as store:
        second, _ = await store.create_channel()
        await store.put_channel("x", [])
        again = await store.create_drain("x", "syslog://a", max_drains=6)
        assert (second.name, again.id) == ("2", drain.id + 1)


async def test_v2_ids_skip_names_taken_by_v3(backend: Backend) -> None:
    async with backend.open() as store:
        await store.put_channel("1", [])
        await store.put_channel("2", [])
        channel, _ = await store.create_channel()
        assert channel.name == "3"


async def test_store_errors(backend: Backend) -> None:
    async with backend.open() as store:
        await store.put_channel("a", [])
        with pytest.raises(ChannelExists):
            await store.create_channel("a")
        with pytest.raises(ChannelNotFound):
            await store.create_token("nope", "t")
        with pytest.raises(ChannelNotFound):
            await store.create_drain("nope", None, max_drains=6)
        drain = await store.create_drain("a", "syslog://x", max_drains=1)
        with pytest.raises(DrainLimitReached):
            await store.create_drain("a", "syslog://y", max_drains=1)
        with pytest.raises(DrainExists):
            await store.create_drain("a", "SYSLOG://X:601", max_drains=6)
        with pytest.raises(DrainNotFound):
            await store.update_drain("b", drain.id, "syslog://z", max_drains=6)
        assert await store.delete_drain("b", drain.id) is None
        assert not await store.delete_channel("b")
        credential = CredentialRecord("X", "h", ("full_api",))
        await store.add_credential(credential)
        with pytest.raises(CredentialExists):
            await store.add_credential(credential)
        assert await store.revoke_credential("X") and not await store.revoke_credential("X")
        with pytest.raises(StoreError):
            await store.create_session({"bad": object()})


async def test_expired_sessions_are_dropped(backend: Backend) -> None:
    now = [1000.0]
    async with backend.open(clock=lambda: now[0]) as store:
        old = await store.create_session({"channel_id": "a"}, ttl=10)
        fresh = await store.create_session({"channel_id": "a"}, ttl=100)
        now[0] += 50
        assert store.session(old.id) is None and store.session(fresh.id) is not None
        assert store.expire_sessions() == 1
    async with backend.open(clock=lambda: now[0]) as store:
        assert store.session(old.id) is None and store.session(fresh.id) == fresh
        assert await store.delete_session(fresh.id)
        assert not await store.delete_session(fresh.id)


async def test_the_same_writes_give_the_same_events(backend: Backend) -> None:
    async with backend.open() as store:
        events: list[Any] = []
        store.subscribe(events.append)
        channel, tokens = await store.create_channel(label="l", token_names=["a"])
        await store.put_channel(channel.name, ["b"])
        reservation = await store.create_drain(channel.name, None, max_drains=6)
        await store.update_drain(channel.name, reservation.id, "syslog://h", max_drains=6)
        await store.create_drain(channel.name, "https://x.example/", max_drains=6)
        await store.update_drain(channel.name, reservation.id, "syslog://h", max_drains=6)
        await store.create_token(channel.name, "c")
        await store.delete_drain(channel.name, reservation.id)
        await store.create_session({"channel_id": channel.name})
        await store.delete_channel(channel.name)
    shapes = [(type(e).__name__, getattr(getattr(e, "drain", None), "url", None)) for e in events]
    assert shapes == [
        ("ChannelAdded", None),
        ("TokenAdded", None),
        ("TokenRemoved", None),
        ("TokenAdded", None),
        ("DrainAdded", None),
        ("DrainUpdated", "syslog://h"),
        ("DrainAdded", "https://x.example/"),
        ("TokenAdded", None),
        ("DrainRemoved", "syslog://h"),
        ("DrainRemoved", "https://x.example/"),
        ("TokenRemoved", None),
        ("TokenRemoved", None),
        ("ChannelRemoved", None),
    ]
    assert events[0] == ChannelAdded(channel) and events[1] == TokenAdded(tokens[0])


async def test_concurrent_writes_all_commit_and_publish(backend: Backend) -> None:
    async with backend.open() as store:
        events: list[Any] = []
        store.subscribe(events.append)
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(store.put_channel, f"c{i:02}", [])
        added = [e.channel.name for e in events if isinstance(e, ChannelAdded)]
        assert sorted(added) == [f"c{i:02}" for i in range(50)]
    async with backend.open() as store:
        assert len(list(store.channels())) == 50


async def test_events_follow_commit_order(backend: Backend) -> None:
    async with backend.open() as store:
        await store.put_channel("a", [])
        events: list[Any] = []
        store.subscribe(events.append)

        async def add_then_remove(i: int) -> None:
            drain = await store.create_drain("a", f"syslog://x{i}", max_drains=6)
            await store.delete_drain("a", drain.id)

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(add_then_remove, i)
        live: set[int] = set()
        for event in events:
            if isinstance(event, DrainAdded):
                live.add(event.drain.id)
            else:
                live.remove(event.drain.id)
        assert live == set() and len(events) == 10


async def test_registry_follows_the_store(backend: Backend) -> None:
    async with backend.open() as store:
        await store.put_channel("before", ["t"])
        registry = FakeRegistry()
        detach = attach_registry(store, registry)
        assert set(registry.channels) == {"before"}
        put = await store.put_channel("after", ["x", "y"])
        assert registry.channels["after"] == {t.id: t.name for t in put.tokens}
        await store.put_channel("after", ["y"])
        assert list(registry.channels["after"].values()) == ["y"]
        await store.delete_channel("before")
        assert "before" not in registry.channels
        detach()
        await store.put_channel("ignored", [])
        assert "ignored" not in registry.channels


async def test_a_channel_overflow_mode_is_stored_published_and_reloaded(backend: Backend) -> None:
    def modes(registry: Registry) -> dict[str, str | None]:
        return {name: channel.overflow for name, channel in registry.channels.items()}

    async with backend.open() as store:
        registry = Registry()
        attach_registry(store, registry)
        events: list[Any] = []
        store.subscribe(events.append)
        await store.put_channel("quiet", ["a"], overflow="drop")
        await store.put_channel("loud", ["b"])
        await store.put_channel("loud", ["b"], overflow="pushback")
        await store.put_channel("quiet", ["a"], overflow="drop")  # unchanged: no event
        await store.put_channel("plain", [], overflow="drop")
        await store.put_channel("plain", [])  # back to the daemon's drain_overflow
        with pytest.raises(ValueError):
            await store.put_channel("bad", [], overflow="block")
        assert store.channel("bad") is None
        assert [e for e in events if isinstance(e, ChannelUpdated)] == [
            ChannelUpdated(ChannelRecord("loud", overflow="pushback"), ChannelRecord("loud")),
            ChannelUpdated(ChannelRecord("plain"), ChannelRecord("plain", overflow="drop")),
        ]
        expected = {"quiet": "drop", "loud": "pushback", "plain": None}
        assert modes(registry) == expected
        before = state_of(store)
    async with backend.open() as store:
        assert state_of(store) == before
        assert {c.name: c.overflow for c in store.channels()} == expected
        registry = Registry()
        attach_registry(store, registry)
        assert modes(registry) == expected


async def test_a_failing_subscriber_does_not_break_writes(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    async with backend.open() as store:

        def broken(event: object) -> None:
            raise RuntimeError("subscriber bug")

        seen: list[Any] = []
        store.subscribe(broken)
        store.subscribe(seen.append)
        await store.put_channel("a", ["t"])
        assert [type(e) for e in seen] == [ChannelAdded, TokenAdded]
        assert "subscriber failed" in caplog.text


async def test_cancelled_writer_still_commits(backend: Backend) -> None:
    async with backend.open() as store:
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.put_channel("a", [])
    async with backend.open() as store:
        assert [c.name for c in store.channels()] == ["a"]


# -- Redis only: several nodes --------------------------------------------------------------


@needs_redis
async def test_two_nodes_see_each_others_changes_within_a_second(shared: Shared) -> None:
    async with shared.running(node_id="a") as a, shared.running(node_id="b") as b:
        registry = Registry()
        attach_registry(b, registry)
        seen_by_b: list[Any] = []
        b.subscribe(seen_by_b.append)

        put = await a.put_channel("app", ["web"])
        await eventually(lambda: registry.channel_of_token(put.tokens[0].id) is not None)
        drain = await a.create_drain("app", "syslog://h.example", max_drains=6)
        await eventually(lambda: b.drain(drain.id) == drain)
        updated = await b.update_drain("app", drain.id, "syslog://g.example", max_drains=6)
        await eventually(lambda: a.drain(drain.id) == updated)
        session = await b.create_session({"channel_id": "app"})
        await eventually(lambda: a.session(session.id) == session)
        await a.delete_channel("app")
        await eventually(lambda: registry.channel("app") is None and b.channel("app") is None)
        assert [type(e) for e in seen_by_b] == [
            ChannelAdded,
            TokenAdded,
            DrainAdded,
            DrainUpdated,
            DrainRemoved,
            TokenRemoved,
            ChannelRemoved,
        ]
        assert state_of(a) == state_of(b)


@needs_redis
async def test_channels_stored_without_an_overflow_mode_load_unchanged(shared: Shared) -> None:
    # A channel as logplexd wrote it before channels had an overflow mode: [label, flags].
    old = msgpack.packb(["legacy", ["no_tail"]], use_bin_type=True)
    shared.command("HSET", shared.key("channels"), "old", old)
    async with shared.running(node_id="a") as a, shared.running(node_id="b") as b:
        assert a.channel("old") == ChannelRecord("old", "legacy", ("no_tail",))
        registry = Registry()
        attach_registry(b, registry)
        await a.put_channel("plain", ["t"])
        # Without a mode a channel is written exactly as before, so older nodes read it.
        plain = shared.command("HGET", shared.key("channels"), "plain")
        assert bulk_strings(plain) == [msgpack.packb([None, []], use_bin_type=True)]
        # Setting one keeps the label and flags, and reaches the other node's routing index.
        await a.put_channel("old", [], overflow="drop")
        expected = ChannelRecord("old", "legacy", ("no_tail",), "drop")
        await eventually(lambda: b.channel("old") == expected)
        live = registry.channel("old")
        assert live is not None and live.overflow == "drop"
    async with shared.running() as c:
        assert c.channel("old") == expected and c.channel("plain") == ChannelRecord("plain")


@needs_redis
async def test_conflicting_writes_on_two_nodes_are_decided_by_redis(shared: Shared) -> None:
    async with shared.running() as a, shared.running() as b:
        await a.put_channel("app", [])
        await eventually(lambda: b.channel("app") is not None)
        results: dict[str, list[Any]] = {"name": [], "v2": [], "limit": []}

        async def attempt(key: str, write: Callable[[], Any]) -> None:
            try:
                results[key].append(await write())
            except StoreError as exc:
                results[key].append(exc)

        async with trio.open_nursery() as nursery:
            for node in (a, b):
                nursery.start_soon(attempt, "name", lambda n=node: n.create_channel("x"))
                for _ in range(5):
                    nursery.start_soon(attempt, "v2", lambda n=node: n.create_channel())
                for i in range(2):
                    nursery.start_soon(
                        attempt,
                        "limit",
                        lambda n=node, i=i: n.create_drain(
                            "app", f"syslog://{n.node_id}-{i}", max_drains=3
                        ),
                    )
        assert sum(isinstance(r, ChannelExists) for r in results["name"]) == 1
        v2_names = sorted(int(channel.name) for channel, _ in results["v2"])
        assert v2_names == list(range(1, 11))
        assert sum(isinstance(r, DrainLimitReached) for r in results["limit"]) == 1
        drain_ids = sorted(r.id for r in results["limit"] if not isinstance(r, StoreError))
        assert drain_ids == [1, 2, 3]
        await eventually(lambda: state_of(a) == state_of(b))


@needs_redis
async def test_a_new_node_loads_everything_and_keys_share_one_hash_tag(shared: Shared) -> None:
    async with shared.running() as a:
        await populate(a)
        session = await a.create_session({"channel_id": "app-1"})
        async with shared.running() as c:
            assert state_of(c) == state_of(a)
            assert c.session(session.id) == session
            assert c.applied_version == a.applied_version != "0-0"
    keys = shared.stored_keys()
    assert keys and all(key.startswith(shared.key("").encode()) for key in keys)
    assert shared.command("GET", shared.key("channel_index")) == b"$1\r\n1\r\n"
    assert shared.command("GET", shared.key("drain_index")) == b"$1\r\n3\r\n"


@needs_redis
async def test_redis_restart_refuses_writes_then_recovers_without_losing_changes(
    redis_any: RedisServer | RedisCluster,
) -> None:
    """On a cluster only the master holding the configuration slot is killed and restarted
    (the others keep serving): what the nodes see is the same."""
    async with (
        running(redis_any.url, node_id="a") as a,
        running(redis_any.url, node_id="b") as b,
    ):
        seen_by_b: list[Any] = []
        b.subscribe(seen_by_b.append)
        await a.put_channel("kept", ["t"])
        await eventually(lambda: b.channel("kept") is not None)

        victim = redis_any
        if isinstance(redis_any, RedisCluster):
            victim = redis_any.server_of("logplex:{cfg}:version")
        victim.kill()  # SIGKILL; the AOF (fsync always) has every acknowledged write
        await eventually(lambda: a.failure is not None and b.failure is not None, 5)
        assert "unreachable" in (a.failure or "") or "Redis" in (a.failure or "")
        with pytest.raises(StoreUnavailable):
            await a.put_channel("lost", [])

        victim.start()
        with trio.fail_after(10):
            await a.connected.wait()
            await b.connected.wait()
        assert a.failure is None and b.failure is None
        assert [c.name for c in a.channels()] == ["kept"]
        # Writes work again on both nodes, and changes still flow between them.
        await b.put_channel("after", [])
        await eventually(lambda: a.channel("after") is not None)
        await a.delete_channel("kept")
        await eventually(lambda: b.channel("kept") is None)
        assert [type(e) for e in seen_by_b][-3:] == [ChannelAdded, TokenRemoved, ChannelRemoved]


@needs_redis
async def test_changes_missed_while_disconnected_arrive_as_events(tmp_path: Path) -> None:
    """A Redis that comes back with other contents (a failover to a lagging replica, a
    flushed instance): every node replaces its memory and says what changed."""
    assert REDIS_SERVER is not None
    server = RedisServer(tmp_path, persistent=False)
    server.start()
    try:
        async with running(server.url) as a:
            registry = FakeRegistry()
            attach_registry(a, registry)
            await a.put_channel("gone", ["t"])
            await a.create_drain("gone", "syslog://h", max_drains=6)
            events: list[Any] = []
            a.subscribe(events.append)
            server.kill()
            server.start()  # empty: nothing was persisted
            with trio.fail_after(5):
                while a.rebuilds < 2 or a.failure is not None:
                    await trio.sleep(0.01)
            assert list(a.channels()) == [] and registry.channels == {}
            assert [type(e) for e in events] == [DrainRemoved, TokenRemoved, ChannelRemoved]
            channel, _ = await a.create_channel()
            assert channel.name == "1"
    finally:
        server.kill()


@needs_redis
@pytest.mark.parametrize("kind", ["single", "cluster"])
async def test_unreachable_at_start_then_reached(tmp_path: Path, kind: str) -> None:
    server = RedisServer(tmp_path) if kind == "single" else RedisCluster(tmp_path)
    async with running(server.url) as store:
        assert store.failure is not None and not store.connected.is_set()
        with pytest.raises(StoreUnavailable):
            await store.put_channel("a", [])
        await trio.to_thread.run_sync(server.start)
        try:
            with trio.fail_after(10):
                await store.connected.wait()
            await store.put_channel("a", [])
            assert store.channel("a") is not None
        finally:
            server.kill()


@needs_redis
async def test_a_write_whose_reply_is_lost_counts_as_done(shared: Shared) -> None:
    async with shared.running() as a, shared.running() as b:
        # Node b commits a change but "loses" the reply: its memory is behind.
        original = b._apply_entry
        dropped: list[str] = []

        def lose_own(entry_id: str, ops: list[Any], rid: str | None = None) -> None:
            if rid is None and not dropped:
                dropped.append(entry_id)
                return
            original(entry_id, ops, rid)

        b._apply_entry = lose_own  # type: ignore[method-assign]
        await b.put_channel("x", [])
        assert dropped
        await eventually(lambda: b.channel("x") is not None and a.channel("x") is not None)


@needs_redis
async def test_session_sweep_removes_expired_sessions_from_redis(shared: Shared) -> None:
    now = [1000.0]
    async with shared.running(clock=lambda: now[0]) as a:
        await a.create_session({"channel_id": "a"}, ttl=10)  # expires
        fresh = await a.create_session({"channel_id": "a"}, ttl=100)
        now[0] += 50
        assert await a.sweep_expired_sessions() == 1
        assert await a.sweep_expired_sessions() == 0
        assert bulk_strings(shared.command("HKEYS", shared.key("sessions"))) == [fresh.id.encode()]


# -- opening and configuration ----------------------------------------------------------------


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    embedded = open_store(str(tmp_path / "d"), None, node_id="n")
    assert isinstance(embedded, EmbeddedStore)
    embedded.close()
    store = open_store(str(tmp_path / "e"), "redis://:secret@127.0.0.1:7000/3", node_id="n")
    assert isinstance(store, RedisStore) and store.node_id == "n"
    assert store.failure is not None  # nothing is loaded before maintain runs
    cluster = open_store(str(tmp_path / "f"), "redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert isinstance(cluster, RedisStore) and cluster.failure is not None
    for bad in ("memcached://x:1", "redis://:secret@h:1/x", "redis+cluster://:secret@h:1/2"):
        with pytest.raises(StoreError) as info:
            open_store(str(tmp_path), bad)
        assert "secret" not in str(info.value) and "invalid store URL" in str(info.value)


def test_redis_url_parsing() -> None:
    url = parse_redis_url("redis://user:p%40ss@h.example:7000/2")
    assert (url.cluster, url.nodes, url.db, url.username, url.password) == (
        False,
        (("h.example", 7000),),
        2,
        "user",
        "p@ss",
    )
    assert parse_redis_url("redis://h").nodes == (("h", 6379),)
    cluster = parse_redis_url("redis+cluster://:pw@a:7000,b,[::1]:7002")
    assert (cluster.cluster, cluster.nodes, cluster.db, cluster.password) == (
        True,
        (("a", 7000), ("b", 6379), ("::1", 7002)),
        0,
        "pw",
    )
    assert cluster.describe() == "cluster a:7000,b:6379,::1:7002"  # no password in logs
    assert parse_redis_url("redis+cluster://a:1/0").nodes == (("a", 1),)
    local = parse_redis_url("unix://:p%40ss@/run/redis/redis.sock?db=3")
    assert (local.cluster, local.socket_path, local.nodes, local.db, local.password) == (
        False,
        "/run/redis/redis.sock",
        (("/run/redis/redis.sock", 0),),
        3,
        "p@ss",
    )
    assert local.describe() == "unix:/run/redis/redis.sock/3"  # no password in logs
    assert parse_redis_url("UNIX:///tmp/r%20s.sock").socket_path == "/tmp/r s.sock"
    assert parse_redis_url("unix:///tmp/r.sock").db == 0
    assert parse_redis_url("redis://h:1/0").socket_path is None
    for bad in (
        "unix://localhost/tmp/r.sock",  # a path, not a host
        "unix://relative.sock",
        "unix:///",
        "unix:///tmp/dir/",
        "unix:///tmp/r.sock?db=x",
        "unix:///tmp/r.sock?timeout=1",
        "unix:///tmp/r.sock?db=1&db=2",
        "unix:///tmp/r.sock#x",
    ):
        with pytest.raises(StoreError, match="invalid store URL"):
            parse_redis_url(bad)
    with pytest.raises(StoreError) as info:
        parse_redis_url("unix://u:hunter2@/tmp/r.sock?db=1&password=hunter2")
    assert "hunter2" not in str(info.value) and "unix://u:***@/tmp/r.sock?..." in str(info.value)
    for bad in (
        "http://h:1",
        "redis://:1",
        "redis://h:1/db",
        "redis://h:1/0?x=1",
        "redis://h:0",
        "redis://h:65536",
        "redis://a:1,b:2",  # several hosts only for a cluster
        "redis+cluster://a:1/1",  # a cluster has only database 0
        "redis+cluster://a:1,,b:2",
        "redis+cluster://a:x",
        "rediss://h:1",
    ):
        with pytest.raises(StoreError):
            parse_redis_url(bad)


def test_open_redis_gives_the_right_client() -> None:
    import coredis

    from logplexd.store._redis_client import open_redis

    single = open_redis("redis://127.0.0.1:1/0", client_name="x")
    assert type(single) is coredis.Redis
    # client_name is a single-Redis option: dropped for a cluster, not an error.
    cluster = open_redis("redis+cluster://127.0.0.1:1,127.0.0.1:2", client_name="x")
    assert type(cluster) is coredis.RedisCluster
    with pytest.raises(StoreError):
        open_redis("tcp://127.0.0.1:1")
    local = open_redis("unix:///tmp/no-such-redis.sock?db=2", client_name="x")
    assert type(local) is coredis.Redis
    pool = local.connection_pool
    assert pool.connection_class is coredis.connection.UnixDomainSocketConnection
    assert str(pool.location) == "/tmp/no-such-redis.sock" and pool.connection_kwargs["db"] == 2


def test_store_settings() -> None:
    settings = load_settings(
        env={"LOGPLEXD_STORE_URL": "redis://127.0.0.1:6379/1", "LOGPLEXD_NODE_ID": "n1"}
    )
    assert (settings.store_url, settings.resolved_node_id()) == ("redis://127.0.0.1:6379/1", "n1")
    default = load_settings(env={})
    assert default.store_url is None
    assert default.resolved_node_id() == f"{socket.gethostname()}:{default.api_addr.port}"
    cluster = load_settings(env={"LOGPLEXD_STORE_URL": "redis+cluster://a:1,b:2"})
    assert cluster.store_url == "redis+cluster://a:1,b:2"
    local = load_settings(env={"LOGPLEXD_STORE_URL": "unix:///run/redis.sock?db=1"})
    assert local.store_url == "unix:///run/redis.sock?db=1"
    for bad in (
        "redis://:hunter2@h:1/x",
        "redis+cluster://:hunter2@a:1/5",
        "unix://:hunter2@host/run/redis.sock",
        "unix:///run/redis.sock?password=hunter2",  # redis-py takes it; refused, not echoed
        "redis://h:1/0?password=hunter2",
    ):
        with pytest.raises(ConfigError) as info:
            load_settings(env={"LOGPLEXD_STORE_URL": bad})
        assert "hunter2" not in str(info.value)
        assert "unix:///PATH/TO/redis.sock?db=DB" in str(info.value)  # what it may be
    with pytest.raises(ConfigError):
        load_settings(env={"LOGPLEXD_NODE_ID": "a b"})


@needs_redis
async def test_a_node_behind_the_trimmed_change_stream_reloads(
    shared: Shared, monkeypatch: pytest.MonkeyPatch
) -> None:
    from logplexd.store import redis_store

    monkeypatch.setattr(redis_store, "CHANGES_MAXLEN", 5)
    monkeypatch.setattr(redis_store, "READ_BATCH", 10)
    async with shared.running() as a, shared.running() as b:
        await a.put_channel("first", [])
        await eventually(lambda: b.channel("first") is not None)
        # Node b stalls before its next read while a writes enough for Redis to trim
        # (approximate trimming drops whole nodes of 100 entries).
        client = b._client
        assert client is not None
        release = trio.Event()
        real_xread = client.xread

        async def stalled_xread(*args: Any, **kwargs: Any) -> Any:
            await release.wait()
            return await real_xread(*args, **kwargs)

        client.xread = stalled_xread  # type: ignore[method-assign]
        await a.put_channel("nudge", [])  # b's pending read returns, the next one stalls
        for i in range(300):
            await a.put_channel(f"c{i}", [])
        assert b.channel("c0") is None
        release.set()
        await eventually(lambda: state_of(b) == state_of(a), 5)
        assert b.rebuilds == 2


@needs_redis
async def test_a_configuration_of_many_scan_pages_loads_whole(
    shared: Shared, monkeypatch: pytest.MonkeyPatch
) -> None:
    from logplexd.store import redis_store

    async with shared.running() as a:
        # More than 128 fields: Redis then keeps a real hash table and HSCAN pages it.
        for i in range(70):
            await a.put_channel(f"c{i:02}", ["web", "worker"])
            if i % 3 == 0:
                await a.create_drain(f"c{i:02}", f"syslog://h{i}.example", max_drains=6)
        await a.add_credential(CredentialRecord("K" * 32, "h", ("full_api",), "ops"))
        session = await a.create_session({"channel_id": "c01"})
        monkeypatch.setattr(redis_store, "SCAN_COUNT", 10)
        pages: list[int] = []
        real_pages = redis_store._hash_pages

        async def counted(client: Any, key: str) -> Any:
            async for page in real_pages(client, key):
                pages.append(len(page))
                yield page

        monkeypatch.setattr(redis_store, "_hash_pages", counted)
        async with shared.running() as b:
            assert state_of(b) == state_of(a)
            assert len(list(b.channels())) == 70 and len(list(b.tokens())) == 140
            assert b.session(session.id) == session
            assert [t.name for t in b.tokens_of("c07")] == ["web", "worker"]
        # Five hashes; the tokens' one (140 fields, a real hash table) took several pages.
        assert len(pages) > 5 and sum(pages) >= 70 + 140 + 24 + 1 + 1
