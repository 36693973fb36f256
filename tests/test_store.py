"""The embedded store: durability across reopen, torn tails, compaction, failure, events."""

from __future__ import annotations

import logging
import os
import struct

import pytest
import trio

from logplexd.store import (
    ChannelAdded,
    ChannelExists,
    ChannelNotFound,
    Credential,
    CredentialExists,
    DrainAdded,
    DrainExists,
    DrainLimitReached,
    DrainNotFound,
    StoreCorrupt,
    StoreLocked,
    StoreUnavailable,
    TokenAdded,
    attach_registry,
    files,
    open_store,
)
from logplexd.store.embedded import JOURNAL_FILE, SNAPSHOT_FILE
from tests.test_api_support import FakeRegistry


def state_of(store) -> dict:
    return {
        "channels": sorted(store.channels(), key=lambda c: c.name),
        "tokens": sorted(store.tokens(), key=lambda t: t.id),
        "drains": sorted(store.drains(), key=lambda d: d.id),
        "credentials": sorted(store.credentials(), key=lambda c: c.id),
    }


async def populate(store) -> None:
    await store.create_channel(label="legacy", token_names=["app", "web"])
    await store.put_channel("app-1", ["a", "b"])
    await store.create_drain("app-1", "syslog://h.example", max_drains=6)
    await store.create_drain("app-1", None, max_drains=6)
    await store.create_drain("1", "https://u:p@x.example/logs", max_drains=6)
    await store.add_credential(Credential("C" * 32, "scrypt$hash", ("full_api",), "ops"))
    await store.put_channel("app-1", ["b", "c"])


async def test_everything_survives_reopen(tmp_path):
    store = open_store(str(tmp_path))
    await populate(store)
    session = await store.create_session({"channel_id": "app-1", "num": "5"})
    before = state_of(store)
    store.close()

    reopened = open_store(str(tmp_path))
    assert state_of(reopened) == before
    assert reopened.session(session.id) == session
    assert [t.name for t in reopened.tokens_of("app-1")] == ["b", "c"]
    # Counters continue: ids are never reused.
    channel, _ = await reopened.create_channel()
    assert channel.name == "2"
    drain = await reopened.create_drain("app-1", "syslog://other", max_drains=6)
    assert drain.id == 4
    reopened.close()


async def test_ids_are_not_reused_after_delete(tmp_path):
    store = open_store(str(tmp_path))
    first, _ = await store.create_channel()
    drain = await store.create_drain(first.name, "syslog://a", max_drains=6)
    await store.delete_channel(first.name)
    store.close()
    store = open_store(str(tmp_path))
    second, _ = await store.create_channel()
    await store.put_channel("x", [])
    again = await store.create_drain("x", "syslog://a", max_drains=6)
    assert (second.name, again.id) == ("2", drain.id + 1)
    store.close()


def journal_path(tmp_path) -> str:
    return os.path.join(str(tmp_path), JOURNAL_FILE)


@pytest.mark.parametrize("cut", [1, 4, 7, 9, 20])
async def test_torn_last_record_is_ignored(tmp_path, caplog, cut):
    store = open_store(str(tmp_path))
    await store.put_channel("kept", ["t"])
    size_before = os.path.getsize(journal_path(tmp_path))
    await store.put_channel("torn", ["t1", "t2", "t3"])
    store.close()
    with open(journal_path(tmp_path), "r+b") as journal:
        journal.truncate(size_before + cut)

    with caplog.at_level(logging.WARNING, logger="logplexd.store"):
        store = open_store(str(tmp_path))
    assert "ignoring" in caplog.text and str(cut) in caplog.text
    assert [c.name for c in store.channels()] == ["kept"]
    # New writes go after the last good record, and are read back.
    await store.put_channel("after", [])
    store.close()
    store = open_store(str(tmp_path))
    assert sorted(c.name for c in store.channels()) == ["after", "kept"]
    store.close()


async def test_checksum_mismatch_in_last_record_is_ignored(tmp_path):
    store = open_store(str(tmp_path))
    await store.put_channel("kept", [])
    await store.put_channel("flipped", [])
    store.close()
    with open(journal_path(tmp_path), "r+b") as journal:
        journal.seek(-1, os.SEEK_END)
        last = journal.read(1)
        journal.seek(-1, os.SEEK_END)
        journal.write(bytes([last[0] ^ 0xFF]))
    store = open_store(str(tmp_path))
    assert [c.name for c in store.channels()] == ["kept"]
    store.close()


async def test_journal_with_a_torn_header_is_recreated(tmp_path):
    with open(journal_path(tmp_path), "wb") as journal:
        journal.write(files.JOURNAL_MAGIC[:5])
    store = open_store(str(tmp_path))
    await store.put_channel("a", [])
    store.close()
    store = open_store(str(tmp_path))
    assert [c.name for c in store.channels()] == ["a"]
    store.close()


async def test_compaction_round_trip(tmp_path):
    store = open_store(str(tmp_path))
    await populate(store)
    await store.delete_channel("1")
    before = state_of(store)
    await store.compact()
    assert store.journal_bytes == files.HEADER.size
    assert os.path.getsize(journal_path(tmp_path)) == files.HEADER.size
    await store.put_channel("after-compaction", ["z"])
    after = state_of(store)
    store.close()
    store = open_store(str(tmp_path))
    assert state_of(store) == after
    assert before["drains"] == [d for d in after["drains"]]
    store.close()


async def test_crash_between_snapshot_and_journal_reset(tmp_path):
    store = open_store(str(tmp_path))
    await populate(store)
    await store.delete_channel("1")
    expected = state_of(store)
    # The snapshot is written, the old journal is still there: replaying it is harmless.
    files.write_snapshot(os.path.join(str(tmp_path), SNAPSHOT_FILE), store._encode_snapshot())
    store.close()
    store = open_store(str(tmp_path))
    assert state_of(store) == expected
    store.close()


async def test_compacts_on_open_when_the_journal_is_big(tmp_path):
    store = open_store(str(tmp_path))
    for i in range(50):
        await store.put_channel(f"c{i}", ["t"])
    store.close()
    store = open_store(str(tmp_path), compact_min_bytes=100)
    assert store.journal_bytes == files.HEADER.size
    assert len(list(store.channels())) == 50
    store.close()


async def test_maintain_compacts_a_growing_journal(tmp_path):
    store = open_store(str(tmp_path), compact_min_bytes=100)
    for i in range(20):
        await store.put_channel(f"c{i}", [])
    assert store.journal_bytes > 100
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: store.maintain(interval=0.02, task_status=task_status)
        )
        with trio.fail_after(3):
            while store.journal_bytes != files.HEADER.size:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    store.close()


async def test_second_open_is_refused(tmp_path):
    store = open_store(str(tmp_path))
    with pytest.raises(StoreLocked):
        open_store(str(tmp_path))
    store.close()
    open_store(str(tmp_path)).close()


@pytest.mark.parametrize(
    "content",
    [b"NOTLOGPLEX" + bytes(10), struct.pack(">8sH6x", files.JOURNAL_MAGIC, 99)],
)
async def test_unreadable_journal_is_reported(tmp_path, content):
    with open(journal_path(tmp_path), "wb") as journal:
        journal.write(content)
    with pytest.raises(StoreCorrupt):
        open_store(str(tmp_path))
    # The lock was released on failure.
    os.unlink(journal_path(tmp_path))
    open_store(str(tmp_path)).close()


async def test_damaged_snapshot_is_reported(tmp_path):
    store = open_store(str(tmp_path))
    await populate(store)
    await store.compact()
    store.close()
    snapshot = os.path.join(str(tmp_path), SNAPSHOT_FILE)
    with open(snapshot, "r+b") as file:
        file.truncate(os.path.getsize(snapshot) - 3)
    with pytest.raises(StoreCorrupt):
        open_store(str(tmp_path))


async def test_expired_sessions_are_dropped(tmp_path):
    now = [1000.0]
    store = open_store(str(tmp_path), clock=lambda: now[0])
    old = await store.create_session({"channel_id": "a"}, ttl=10)
    fresh = await store.create_session({"channel_id": "a"}, ttl=100)
    now[0] += 50
    assert store.session(old.id) is None and store.session(fresh.id) is not None
    assert store.expire_sessions() == 1
    store.close()
    store = open_store(str(tmp_path), clock=lambda: now[0])
    assert store.session(old.id) is None and store.session(fresh.id) == fresh
    assert await store.delete_session(fresh.id)
    assert not await store.delete_session(fresh.id)
    store.close()


async def test_store_errors(tmp_path):
    store = open_store(str(tmp_path))
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
    store.close()


async def test_a_failed_write_stops_further_writes(tmp_path):
    store = open_store(str(tmp_path))
    await store.put_channel("a", [])
    os.close(store._journal_fd)  # the disk goes away
    store._journal_fd = os.open(os.devnull, os.O_RDONLY)
    with pytest.raises(StoreUnavailable):
        await store.put_channel("b", [])
    assert store.failure is not None
    with pytest.raises(StoreUnavailable):
        await store.put_channel("c", [])
    store.close()
    store = open_store(str(tmp_path))
    assert [c.name for c in store.channels()] == ["a"]
    store.close()


async def test_concurrent_writes_share_flushes_and_publish_in_order(tmp_path):
    store = open_store(str(tmp_path))
    events: list = []
    store.subscribe(events.append)
    flushes = 0
    original = store._flush_locked

    async def counting_flush() -> None:
        nonlocal flushes
        flushes += 1
        await original()

    store._flush_locked = counting_flush  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(store.put_channel, f"c{i:02}", [])
    assert flushes < 50
    added = [e.channel.name for e in events if isinstance(e, ChannelAdded)]
    assert sorted(added) == [f"c{i:02}" for i in range(50)]
    store.close()
    store = open_store(str(tmp_path))
    assert len(list(store.channels())) == 50
    store.close()


async def test_events_follow_commit_order_even_across_batches(tmp_path):
    store = open_store(str(tmp_path))
    await store.put_channel("a", [])
    events: list = []
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
    assert live == set()
    store.close()


async def test_registry_follows_the_store(tmp_path):
    store = open_store(str(tmp_path))
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
    store.close()


async def test_real_registry_loads(tmp_path):
    registry_module = pytest.importorskip("logplexd.registry")
    store = open_store(str(tmp_path))
    put = await store.put_channel("app", ["web"])
    registry = registry_module.Registry()
    attach_registry(store, registry)
    token = put.tokens[0]
    assert registry.channel_of_token(token.id).name == "app"
    await store.delete_channel("app")
    assert registry.channel("app") is None and registry.channel_of_token(token.id) is None
    store.close()


async def test_a_failing_subscriber_does_not_break_writes(tmp_path, caplog):
    store = open_store(str(tmp_path))

    def broken(event: object) -> None:
        raise RuntimeError("subscriber bug")

    seen: list = []
    store.subscribe(broken)
    store.subscribe(seen.append)
    await store.put_channel("a", ["t"])
    assert [type(e) for e in seen] == [ChannelAdded, TokenAdded]
    assert "subscriber failed" in caplog.text
    store.close()


async def test_cancelled_writer_still_commits(tmp_path):
    store = open_store(str(tmp_path))
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.put_channel("a", [])
    store.close()
    store = open_store(str(tmp_path))
    assert [c.name for c in store.channels()] == ["a"]
    store.close()
