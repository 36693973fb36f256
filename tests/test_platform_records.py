"""Platform records (accounts, apps, drain timestamps) in the store: the embedded store, one
Redis and a Redis Cluster through the same tests; the import of an earlier version's
``platform.lpj``; ``logplexd accounts`` offline, through a running daemon and on Redis."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from logplexd import cli
from logplexd.daemon import Daemon
from logplexd.store import (
    ACCOUNTS_SOCKET,
    PLATFORM_JOURNAL,
    AccountExists,
    App,
    AppNameTaken,
    DrainMeta,
    EmbeddedStore,
    Store,
    StoreCorrupt,
    call_accounts_socket,
    hash_api_token,
    migrate_platform_journal,
    open_store,
    serve_accounts_socket,
)
from logplexd.store import files as store_files
from logplexd.store.embedded import JOURNAL_FILE
from tests.helpers.daemon import settings_for
from tests.helpers.http import request
from tests.helpers.redis import RedisCluster, RedisServer, module_cluster, running

pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py: the CLI tests below

V3 = ("Accept", "application/vnd.heroku+json; version=3")
_prefixes = itertools.count()


def app(name: str, **changes: object) -> App:
    fields: dict[str, object] = {
        "id": f"id-{name}",
        "name": name,
        "owner_id": "o",
        "owner_email": "o@example.com",
        "region_id": "r",
        "region_name": "us",
        "stack_id": "s",
        "stack_name": "cedar",
        "maintenance": False,
        "created_at": "2012-01-01T12:00:00Z",
        "updated_at": "2012-01-01T12:00:00Z",
    }
    fields.update(changes)
    return App(**fields)  # type: ignore[arg-type]


def records_of(store: Store) -> dict[str, Any]:
    """Every Platform record the store holds, in a stable order."""
    return {
        "accounts": sorted(store.accounts(), key=lambda a: a.id),
        "apps": sorted(store.apps(), key=lambda a: a.id),
        "drain_meta": sorted(
            (m for d in store.drains() if (m := store.drain_meta(d.id)) is not None),
            key=lambda m: m.drain_id,
        ),
    }


class Backend:
    """Opens "the" store of one backend; opening it again is a restart."""

    def __init__(self, kind: str, tmp_path: Path, server: RedisServer | RedisCluster | None):
        self.kind = kind
        self.data_dir = tmp_path / "data"
        self.server = server
        self.prefix = f"p{next(_prefixes)}"

    @contextlib.asynccontextmanager
    async def open(self, **options: Any) -> AsyncIterator[Store]:
        if self.server is None:
            store = open_store(str(self.data_dir))
            try:
                yield store
            finally:
                store.close()
        else:
            async with running(self.server.url, prefix=self.prefix, **options) as redis:
                yield redis

    def stored(self) -> bytes:
        """Every byte the backend keeps, to check what never reaches it."""
        if self.server is None:
            return b"".join(p.read_bytes() for p in self.data_dir.iterdir() if p.is_file())
        parts = []
        for name in ("accounts", "apps", "drain_meta"):
            parts.append(self.server.command("HGETALL", f"{self.prefix}:{{cfg}}:{name}"))
        return b"".join(parts)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One cluster for this module's tests (about 2 s to form): each keeps to its prefix."""
    yield from module_cluster(tmp_path_factory)


@pytest.fixture(params=["embedded", "redis", "cluster"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "embedded":
        yield Backend("embedded", tmp_path, None)
        return
    name = "redis_server" if request.param == "redis" else "shared_cluster"
    yield Backend(request.param, tmp_path, request.getfixturevalue(name))


# -- the store's operations -----------------------------------------------------------------------


async def test_platform_records_in_the_store(backend: Backend) -> None:
    async with backend.open() as store:
        account, token = await store.create_account("Dev@Example.com")
        assert store.account_by_token(token) == account == store.account(account.id)
        assert store.account_by_email("dev@example.COM") == account
        assert account.token_matches(token) and not account.token_matches(token + "x")
        with pytest.raises(AccountExists):
            await store.create_account("dev@example.com")

        await store.create_channel("one", token_names=["app"])
        await store.put_app(app("one"))
        assert store.app("id-one") == store.app_by_name("one") == store.app_by_channel("one")
        with pytest.raises(AppNameTaken):
            await store.put_app(app("one", id="other", channel="elsewhere"))
        with pytest.raises(AppNameTaken):  # another app's channel
            await store.put_app(app("two", id="other", channel="one"))
        # A rename is one write of the record: the channel stays.
        await store.put_app(app("renamed", id="id-one", channel="one"))
        assert store.app_by_name("one") is None
        assert store.app_by_name("renamed") == store.app_by_channel("one")

        kept = await store.create_drain("one", "syslog://h.example:1", max_drains=5)
        gone = await store.create_drain("one", "syslog://h.example:2", max_drains=5)
        await store.put_drain_meta(DrainMeta(kept.id, "id-one", "t1", "t2"))
        await store.put_drain_meta(DrainMeta(gone.id, "id-one", "t3", "t4"))
        # A drain's timestamps go with it, whichever API deletes it.
        await store.delete_drain("one", gone.id)
        assert store.drain_meta(gone.id) is None and store.drain_meta(kept.id) is not None

        await store.create_channel("doomed", token_names=["app"])
        await store.put_app(app("doomed"))
        doomed_drain = await store.create_drain("doomed", "syslog://h.example:3", max_drains=5)
        await store.put_drain_meta(DrainMeta(doomed_drain.id, "id-doomed", "t5", "t6"))
        before = records_of(store)

    async with backend.open() as store:  # a restart: everything was durable
        assert records_of(store) == before
        assert store.account_by_token(token) == account
        assert store.app_by_channel("one") == app("renamed", id="id-one", channel="one")
        # Deleting an app takes its channel, tokens, drains and timestamps in one change.
        deleted = await store.delete_app("id-doomed")
        assert deleted is not None and deleted.name == "doomed"
        assert store.channel("doomed") is None and store.drain(doomed_drain.id) is None
        assert store.drain_meta(doomed_drain.id) is None and store.app("id-doomed") is None
        assert await store.delete_app("id-doomed") is None
        assert await store.delete_account("DEV@example.com")
        assert not await store.delete_account("dev@example.com")
        after = records_of(store)
        if isinstance(store, EmbeddedStore):
            await store.compact()  # the records go into the snapshot

    async with backend.open() as store:
        assert records_of(store) == after
        assert store.account_by_token(token) is None
        assert [a.name for a in store.apps()] == ["renamed"]
    # Only the token's hash is kept.
    stored = backend.stored()
    assert token.encode() not in stored


@pytest.fixture(params=["redis", "cluster"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """One Redis, a Redis Cluster: stores several nodes share."""
    name = "redis_server" if request.param == "redis" else "shared_cluster"
    return Backend(request.param, tmp_path, request.getfixturevalue(name))


async def test_an_account_made_on_one_node_authenticates_on_another_at_once(
    shared: Backend,
) -> None:
    """(One embedded store has one process: test_accounts_cli_through_the_daemon.)"""
    backend = shared
    async with backend.open(node_id="a") as a, backend.open(node_id="b") as b:
        account, token = await a.create_account("dev@example.com")
        # What the Platform API does with a token it does not know: catch up, then look.
        await b.refresh()
        assert b.account_by_token(token) == account
        await a.create_channel("shared", token_names=["app"])
        await a.put_app(app("shared", owner_id=account.id))
        await b.refresh()
        assert b.app_by_name("shared") == a.app_by_name("shared")
        await b.put_app(app("moved", id="id-shared", channel="shared"))
        await a.refresh()
        assert a.app_by_name("moved") is not None and a.app_by_name("shared") is None
        assert records_of(a) == records_of(b)


async def test_platform_keys_share_the_configuration_slot(shared_cluster: RedisCluster) -> None:
    """Redis Cluster: a change touching an app, its channel and the change stream is one
    atomic step only within one hash slot; the Platform hashes carry the ``{cfg}`` tag."""
    redis_cluster = shared_cluster
    async with running(redis_cluster.url, prefix="slots") as store:
        await store.create_account("dev@example.com")
        await store.create_channel("one", token_names=["app"])
        await store.put_app(app("one"))
        drain = await store.create_drain("one", "syslog://h.example:1", max_drains=5)
        await store.put_drain_meta(DrainMeta(drain.id, "id-one", "t1", "t2"))
        await store.delete_app("id-one")  # channel, drain, timestamps and app together
        await store.put_drain_meta(DrainMeta(drain.id, "id-one", "t1", "t2"))  # drain gone
        assert store.drain_meta(drain.id) is None
        await store.create_channel("two", token_names=["app"])
        await store.put_app(app("two"))
        drain = await store.create_drain("two", "syslog://h.example:1", max_drains=5)
        await store.put_drain_meta(DrainMeta(drain.id, "id-two", "t1", "t2"))
    stored = [k for k in redis_cluster.stored_keys() if k.startswith(b"slots:")]
    for name in (b"accounts", b"apps", b"drain_meta"):
        assert b"slots:{cfg}:" + name in stored
    assert {redis_cluster.keyslot(key) for key in stored} == {
        redis_cluster.keyslot("slots:{cfg}:version")
    }


# -- the import of platform.lpj -------------------------------------------------------------------


def write_legacy(path: Path, *transactions: list[list[Any]], torn: bool = False) -> None:
    """A ``platform.lpj`` as earlier versions wrote it: one framed record per transaction."""
    data = store_files.header(store_files.JOURNAL_MAGIC)
    for ops in transactions:
        data += store_files.frame(msgpack.packb(ops, use_bin_type=True))
    if torn:
        data += store_files.frame(msgpack.packb([["a", "x"]], use_bin_type=True))[:-3]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    (path.parent / "platform.lock").write_bytes(b"")


def legacy_account(name: str) -> tuple[list[Any], str]:
    """The operation of an account ``name``@example.com, and its API token."""
    token = f"00000000-0000-4000-8000-{name:0>12}"[:36]
    return ["A", f"acct-{name}", f"{name}@example.com", hash_api_token(token), "c", "u"], token


async def test_platform_journal_is_imported_once(backend: Backend) -> None:
    legacy = backend.data_dir / PLATFORM_JOURNAL
    dev, token = legacy_account("dev")
    old = app("old", owner_id="acct-dev")
    write_legacy(
        legacy,
        [dev, legacy_account("gone")[0]],
        [["P", old.to_record()], ["P", app("dropped").to_record()], ["R", 7, "id-old", "a", "b"]],
        [["p", "id-dropped"], ["a", "acct-gone"]],
        # Before apps could be renamed their records had no "channel".
        [["P", {k: v for k, v in app("legacy").to_record().items() if k != "channel"}]],
        torn=True,  # a writer that crashed mid-append: never acknowledged
    )
    saved = legacy.read_bytes()
    async with backend.open() as store:
        report = await migrate_platform_journal(store, backend.data_dir)
        assert report is not None and (report.accounts, report.apps) == (1, 2)
        assert report.drain_meta == 1 and report.skipped == []
        assert store.account_by_token(token) is not None
        assert store.account_by_email("dev@example.com") is not None
        assert store.account_by_email("gone@example.com") is None
        assert store.app_by_name("old") == old and store.app_by_name("dropped") is None
        assert store.app_by_channel("legacy") == app("legacy")
        assert store.drain_meta(7) == DrainMeta(7, "id-old", "a", "b")
        before = records_of(store)
        assert not legacy.exists() and not (backend.data_dir / "platform.lock").exists()
        assert (backend.data_dir / "platform.lpj.migrated").read_bytes() == saved
        # Nothing left to import.
        assert await migrate_platform_journal(store, backend.data_dir) is None
        # A crash before the rename: the same file again changes nothing.
        legacy.write_bytes(saved)
        again = await migrate_platform_journal(store, backend.data_dir)
        assert again is not None and (again.accounts, again.apps, again.drain_meta) == (0, 0, 0)
        assert records_of(store) == before
        assert (backend.data_dir / "platform.lpj.migrated.1").exists()
    async with backend.open() as store:
        assert records_of(store)["apps"] == before["apps"]


async def test_a_second_nodes_journal_keeps_what_the_store_has(tmp_path: Path) -> None:
    """Two nodes that each kept their own records: the second import keeps the first's
    app where names clash, and gives its apps to the account already holding the email."""
    store = open_store(str(tmp_path / "data"))
    try:
        first, _ = await store.create_account("dev@example.com")
        await store.put_app(app("taken", owner_id=first.id))
        dev, _ = legacy_account("dev")  # the same email, another id and token
        write_legacy(
            tmp_path / "data" / PLATFORM_JOURNAL,
            [
                dev,
                ["P", app("taken", id="other-taken", owner_id="acct-dev").to_record()],
                ["P", app("mine", owner_id="acct-dev").to_record()],
                ["R", 3, "other-taken", "a", "b"],
            ],
        )
        report = await migrate_platform_journal(store, tmp_path / "data")
        assert report is not None and (report.accounts, report.apps, report.drain_meta) == (0, 1, 0)
        assert len(report.skipped) == 2
        assert store.app_by_name("taken") == app("taken", owner_id=first.id)
        mine = store.app_by_name("mine")
        assert mine is not None and (mine.owner_id, mine.owner_email) == (first.id, first.email)
        assert [a.id for a in store.accounts()] == [first.id]
    finally:
        store.close()


async def test_an_unreadable_platform_journal_is_left_alone(tmp_path: Path) -> None:
    legacy = tmp_path / "data" / PLATFORM_JOURNAL
    store = open_store(str(tmp_path / "data"))
    try:
        legacy.write_bytes(b"something else entirely")
        with pytest.raises(StoreCorrupt):
            await migrate_platform_journal(store, tmp_path / "data")
        write_legacy(legacy, [["C", "a channel?", None, []]])
        with pytest.raises(StoreCorrupt):
            await migrate_platform_journal(store, tmp_path / "data")
        assert legacy.exists() and list(store.apps()) == []
    finally:
        store.close()


async def test_a_daemon_imports_platform_journal_on_start(tmp_path: Path) -> None:
    dev, token = legacy_account("dev")
    write_legacy(
        tmp_path / "data" / PLATFORM_JOURNAL,
        [dev, ["P", app("kept", owner_id="acct-dev", owner_email="dev@example.com").to_record()]],
    )
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        auth = [V3, ("Authorization", f"Bearer {token}")]
        status, _, body = await request(ports.api, "GET", "/apps/kept", headers=auth, auth=None)
        assert status == 200, body
        assert json.loads(body)["owner"] == {"email": "dev@example.com", "id": "acct-dev"}
        nursery.cancel_scope.cancel()
    assert (tmp_path / "data" / "platform.lpj.migrated").exists()
    assert not (tmp_path / "data" / PLATFORM_JOURNAL).exists()


# -- logplexd accounts ----------------------------------------------------------------------------

CREATED = re.compile(
    r"id: (?P<id>[0-9a-f-]{36})\nemail: dev@example\.com\napi token: (?P<token>[0-9a-f-]{36})\n"
)


def test_accounts_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    assert cli.main(["accounts", "create", "dev@example.com", "--data-dir", data]) == 0
    match = CREATED.fullmatch(capsys.readouterr().out)
    assert match is not None
    store = open_store(data)
    account = store.account_by_token(match["token"])
    store.close()
    assert account is not None and account.id == match["id"]

    assert cli.main(["accounts", "create", "dev@example.com", "--data-dir", data]) == 1
    assert "exists" in capsys.readouterr().err
    assert cli.main(["accounts", "create", "not-an-email", "--data-dir", data]) == 2
    capsys.readouterr()

    assert cli.main(["accounts", "list", "--data-dir", data]) == 0
    listed = capsys.readouterr().out
    assert listed.split()[:2] == [match["id"], "dev@example.com"]
    assert match["token"] not in listed

    assert cli.main(["accounts", "delete", "dev@example.com", "--data-dir", data]) == 0
    assert cli.main(["accounts", "delete", "dev@example.com", "--data-dir", data]) == 1
    assert cli.main(["accounts", "list", "--data-dir", str(tmp_path / "missing")]) == 1
    assert not (tmp_path / "missing").exists()


def test_accounts_cli_imports_platform_journal_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev, _ = legacy_account("dev")
    write_legacy(tmp_path / "data" / PLATFORM_JOURNAL, [dev])
    data = str(tmp_path / "data")
    assert cli.main(["accounts", "create", "dev@example.com", "--data-dir", data]) == 1
    assert "exists" in capsys.readouterr().err
    assert cli.main(["accounts", "list", "--data-dir", data]) == 0
    assert capsys.readouterr().out.split()[:2] == ["acct-dev", "dev@example.com"]


def test_accounts_cli_uses_configured_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOGPLEXD_DATA_DIR", str(tmp_path / "from-env"))
    assert cli.main(["accounts", "create", "env@example.com"]) == 0
    store = open_store(str(tmp_path / "from-env"))
    assert store.account_by_email("env@example.com") is not None
    store.close()
    assert (tmp_path / "from-env" / JOURNAL_FILE).exists()


async def test_accounts_cli_through_the_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While the daemon holds the data dir, the commands go through it: the account works
    at once, and so does its deletion."""
    daemon = Daemon(settings_for(tmp_path))
    data = str(tmp_path / "data")
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        with trio.fail_after(10):
            code = await trio.to_thread.run_sync(
                cli.main, ["accounts", "create", "dev@example.com", "--data-dir", data]
            )
            assert code == 0
            match = CREATED.fullmatch(capsys.readouterr().out)
            assert match is not None
            auth = [V3, ("Authorization", f"Bearer {match['token']}")]
            status, _, body = await request(ports.api, "GET", "/account", headers=auth, auth=None)
            assert status == 200 and json.loads(body)["id"] == match["id"]
            args = ["accounts", "list", "--data-dir", data]
            assert await trio.to_thread.run_sync(cli.main, args) == 0
            assert capsys.readouterr().out.split()[:2] == [match["id"], "dev@example.com"]
            args = ["accounts", "create", "dev@example.com", "--data-dir", data]
            assert await trio.to_thread.run_sync(cli.main, args) == 1
            assert "exists" in capsys.readouterr().err
            args = ["accounts", "delete", "dev@example.com", "--data-dir", data]
            assert await trio.to_thread.run_sync(cli.main, args) == 0
            status, _, _ = await request(ports.api, "GET", "/account", headers=auth, auth=None)
            assert status == 401
        nursery.cancel_scope.cancel()
    # The daemon took its socket away; the store is the data dir's again.
    assert not (tmp_path / "data" / ACCOUNTS_SOCKET).exists()
    args = ["accounts", "list", "--data-dir", data]
    assert await trio.to_thread.run_sync(cli.main, args) == 0


async def test_accounts_cli_on_redis(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["accounts", "create", "dev@example.com", "--store-url", redis_server.url]
    args += ["--data-dir", str(tmp_path / "unused")]
    with trio.fail_after(20):
        assert await trio.to_thread.run_sync(cli.main, args) == 0
        match = CREATED.fullmatch(capsys.readouterr().out)
        assert match is not None
        async with running(redis_server.url) as store:
            account = store.account_by_token(match["token"])
            assert account is not None and account.id == match["id"]
        assert await trio.to_thread.run_sync(cli.main, args) == 1
        assert "exists" in capsys.readouterr().err
    # Nothing went to the data dir.
    assert not (tmp_path / "unused" / JOURNAL_FILE).exists()


async def test_accounts_socket(tmp_path: Path) -> None:
    # A data dir whose socket path is longer than a Unix socket address may be.
    data = tmp_path / ("d" * 60) / ("e" * 60)
    store = open_store(str(data))
    try:
        async with trio.open_nursery() as nursery:
            path = await nursery.start(serve_accounts_socket, store, data)
            assert path is not None and len(path) > 108
            assert os.stat(path).st_mode & 0o777 == 0o600
            # Where no socket can be made the daemon goes on without one.
            (tmp_path / "a-file").write_bytes(b"")
            assert await nursery.start(serve_accounts_socket, store, tmp_path / "a-file") is None

            def call(request: dict[str, Any]) -> dict[str, Any] | None:
                return call_accounts_socket(data, request, timeout=5)

            with trio.fail_after(10):
                created = await trio.to_thread.run_sync(
                    call, {"op": "create", "email": "a@example.com"}
                )
                assert created is not None and created["ok"] and created["email"] == "a@example.com"
                assert store.account_by_token(created["token"]) is not None
                for bad in ({"op": "drop"}, {"op": "create"}, {"op": "create", "email": 5}):
                    reply = await trio.to_thread.run_sync(call, bad)
                    assert reply is not None and reply["error"] == "bad_request"
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    assert not os.path.exists(path)
    assert call_accounts_socket(data, {"op": "list"}) is None
