"""The Redis store (issue 11) against a real redis-server started here, and the embedded store
through the same behaviour tests.

Every redis-server runs on a free loopback port with its own temp dir and is stopped by pid.
Without the binary (``apt-get install redis-server``) or the ``coredis`` package the Redis
cases are skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from logplexd.config import ConfigError, load_settings
from logplexd.registry import Registry
from logplexd.store import (
    ChannelAdded,
    ChannelExists,
    ChannelNotFound,
    ChannelRemoved,
    Credential,
    CredentialExists,
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
    attach_registry,
    open_store,
)
from logplexd.store.redis_store import parse_redis_url
from tests.test_api_support import FakeRegistry
from tests.test_store import populate, state_of

REDIS_SERVER = shutil.which("redis-server")
try:
    import coredis  # noqa: F401
except ImportError:  # pragma: no cover - coredis is a dependency
    HAVE_COREDIS = False
else:
    HAVE_COREDIS = True

needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None or not HAVE_COREDIS,
    reason="needs redis-server (apt-get install redis-server) and coredis",
)

# Everything a test waits for is bounded; changes must reach other nodes within this.
PROPAGATION = 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on loopback, started and stopped by pid."""

    def __init__(self, base: Path, *, persistent: bool = False) -> None:
        self.port = _free_port()
        self.dir = base / f"redis-{self.port}"
        self.dir.mkdir()
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.dir), "--save", "", "--daemonize", "no"]
        args += ["--logfile", str(self.dir / "redis.log")]
        if self.persistent:
            # Every acknowledged write is on disk before the reply: nothing is lost by kill -9.
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                self.kill()
                raise RuntimeError(f"redis-server did not start:\n{log}")
            time.sleep(0.01)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def command(self, *args: str) -> bytes:
        """One command in inline form (no spaces in arguments); the raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(" ".join(args).encode() + b"\r\n")
            return sock.recv(1 << 16)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None or not HAVE_COREDIS:
        pytest.skip("needs redis-server (apt-get install redis-server) and coredis")
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextlib.asynccontextmanager
async def running(url: str, **options: Any) -> AsyncIterator[RedisStore]:
    """A RedisStore with its background task, as the daemon runs it."""
    store = RedisStore(url, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.maintain)
        try:
            yield store
        finally:
            nursery.cancel_scope.cancel()
            store.close()


async def eventually(check: Callable[[], object], timeout: float = PROPAGATION) -> None:
    """Poll ``check`` until true, failing after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.005)


# -- both backends through the same behaviour tests -----------------------------------------


class Backend:
    """Opens "the" store of one backend; opening again is a restart (reload from storage)."""

    def __init__(self, kind: str, tmp_path: Path, server: RedisServer | None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.server = server

    @contextlib.asynccontextmanager
    async def open(self, **options: Any) -> AsyncIterator[Any]:
        if self.server is None:
            store = open_store(str(self.tmp_path / "data"), **options)
            try:
                yield store
            finally:
                store.close()
        else:
            async with running(self.server.url, **options) as store:
                yield store


@pytest.fixture(params=["embedded", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "embedded":
        yield Backend("embedded", tmp_path, None)
        return
    server = request.getfixturevalue("redis_server")
    yield Backend("redis", tmp_path, server)


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
        credential = Credential("X", "h", ("full_api",))
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
async def test_two_nodes_see_each_others_changes_within_a_second(
    redis_server: RedisServer,
) -> None:
    async with (
        running(redis_server.url, node_id="a") as a,
        running(redis_server.url, node_id="b") as b,
    ):
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
async def test_conflicting_writes_on_two_nodes_are_decided_by_redis(
    redis_server: RedisServer,
) -> None:
    async with running(redis_server.url) as a, running(redis_server.url) as b:
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
async def test_a_new_node_loads_everything_and_keys_share_one_hash_tag(
    redis_server: RedisServer,
) -> None:
    async with running(redis_server.url) as a:
        await populate(a)
        session = await a.create_session({"channel_id": "app-1"})
        async with running(redis_server.url) as c:
            assert state_of(c) == state_of(a)
            assert c.session(session.id) == session
            assert c.applied_version == a.applied_version != "0-0"
    keys = [k for k in redis_server.command("KEYS", "*").split(b"\r\n") if k[:1] not in b"*$"]
    assert keys and all(b"logplex:{cfg}:" in key for key in keys)
    assert redis_server.command("GET", "logplex:{cfg}:channel_index").endswith(b"\r\n1\r\n")
    assert redis_server.command("GET", "logplex:{cfg}:drain_index").endswith(b"\r\n3\r\n")


@needs_redis
async def test_redis_restart_refuses_writes_then_recovers_without_losing_changes(
    redis_server: RedisServer,
) -> None:
    async with (
        running(redis_server.url, node_id="a") as a,
        running(redis_server.url, node_id="b") as b,
    ):
        seen_by_b: list[Any] = []
        b.subscribe(seen_by_b.append)
        await a.put_channel("kept", ["t"])
        await eventually(lambda: b.channel("kept") is not None)

        redis_server.kill()  # SIGKILL; the AOF (fsync always) has every acknowledged write
        await eventually(lambda: a.failure is not None and b.failure is not None, 5)
        assert "unreachable" in (a.failure or "")
        with pytest.raises(StoreUnavailable):
            await a.put_channel("lost", [])

        redis_server.start()
        with trio.fail_after(5):
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
async def test_unreachable_at_start_then_reached(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    async with running(server.url) as store:
        assert store.failure is not None and not store.connected.is_set()
        with pytest.raises(StoreUnavailable):
            await store.put_channel("a", [])
        server.start()
        try:
            with trio.fail_after(5):
                await store.connected.wait()
            await store.put_channel("a", [])
            assert store.channel("a") is not None
        finally:
            server.kill()


@needs_redis
async def test_a_write_whose_reply_is_lost_counts_as_done(redis_server: RedisServer) -> None:
    async with running(redis_server.url) as a, running(redis_server.url) as b:
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
async def test_session_sweep_removes_expired_sessions_from_redis(
    redis_server: RedisServer,
) -> None:
    now = [1000.0]
    async with running(redis_server.url, clock=lambda: now[0]) as a:
        old = await a.create_session({"channel_id": "a"}, ttl=10)
        fresh = await a.create_session({"channel_id": "a"}, ttl=100)
        now[0] += 50
        assert await a.sweep_expired_sessions() == 1
        assert await a.sweep_expired_sessions() == 0
        reply = redis_server.command("HKEYS", "logplex:{cfg}:sessions")
        assert fresh.id.encode() in reply and old.id.encode() not in reply


# -- opening and configuration ----------------------------------------------------------------


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    embedded = open_store(str(tmp_path / "d"), None, node_id="n")
    assert isinstance(embedded, EmbeddedStore)
    embedded.close()
    store = open_store(str(tmp_path / "e"), "redis://:secret@127.0.0.1:7000/3", node_id="n")
    assert isinstance(store, RedisStore) and store.node_id == "n"
    assert store.failure is not None  # nothing is loaded before maintain runs
    with pytest.raises(StoreError) as info:
        open_store(str(tmp_path), "memcached://x:1")
    assert "secret" not in str(info.value)
    with pytest.raises(StoreError):
        open_store(str(tmp_path), "redis://h:1/x")


def test_redis_url_parsing() -> None:
    url = parse_redis_url("redis://user:p%40ss@h.example:7000/2")
    assert (url.host, url.port, url.db, url.username, url.password) == (
        "h.example",
        7000,
        2,
        "user",
        "p@ss",
    )
    assert parse_redis_url("redis://h").port == 6379
    for bad in ("http://h:1", "redis://:1", "redis://h:1/db", "redis://h:1/0?x=1"):
        with pytest.raises(ValueError):
            parse_redis_url(bad)


def test_store_settings() -> None:
    settings = load_settings(
        env={"LOGPLEXD_STORE_URL": "redis://127.0.0.1:6379/1", "LOGPLEXD_NODE_ID": "n1"}
    )
    assert (settings.store_url, settings.resolved_node_id()) == ("redis://127.0.0.1:6379/1", "n1")
    default = load_settings(env={})
    assert default.store_url is None
    assert default.resolved_node_id() == f"{socket.gethostname()}:{default.api_addr.port}"
    with pytest.raises(ConfigError, match="not supported yet"):
        load_settings(env={"LOGPLEXD_STORE_URL": "redis+cluster://a:1,b:2"})
    with pytest.raises(ConfigError) as info:
        load_settings(env={"LOGPLEXD_STORE_URL": "redis://:hunter2@h:1/x"})
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError):
        load_settings(env={"LOGPLEXD_NODE_ID": "a b"})


@needs_redis
async def test_a_node_behind_the_trimmed_change_stream_reloads(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from logplexd.store import redis_store

    monkeypatch.setattr(redis_store, "CHANGES_MAXLEN", 5)
    monkeypatch.setattr(redis_store, "READ_BATCH", 10)
    async with running(redis_server.url) as a, running(redis_server.url) as b:
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
