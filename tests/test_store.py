"""The embedded store: torn tails, compaction, failure, batching.

The behaviour every backend shares (reopen, ids, errors, sessions, events, registry,
cancellation) is tested once for all of them, parametrized over embedded / Redis / Redis
Cluster, in tests/test_store_redis.py.
"""

from __future__ import annotations

import logging
import os
import struct

import msgpack
import pytest
import trio

from logplexd.router import attach_registry
from logplexd.store import (
    ChannelAdded,
    ChannelRecord,
    ChannelUpdated,
    DrainRecord,
    StoreCorrupt,
    StoreLocked,
    StoreUnavailable,
    TokenRecord,
    files,
    open_store,
)
from logplexd.store._state import State, difference
from logplexd.store.embedded import JOURNAL_FILE, SNAPSHOT_FILE
from tests.helpers.store import populate, state_of


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


async def test_real_registry_loads(tmp_path):
    registry_module = pytest.importorskip("logplexd.router.registry")
    store = open_store(str(tmp_path))
    put = await store.put_channel("app", ["web"])
    registry = registry_module.Registry()
    attach_registry(store, registry)
    token = put.tokens[0]
    assert registry.channel_of_token(token.id).name == "app"
    await store.delete_channel("app")
    assert registry.channel("app") is None and registry.channel_of_token(token.id) is None
    store.close()


# -- channel overflow modes (issue 18) -----------------------------------------------------------


def _pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _write_pre_overflow_data_dir(path: str) -> None:
    """A snapshot and a journal as logplexd wrote them before channels had an overflow
    mode: channel rows ``[name, label, flags]``, channel operations ``["C", name, label,
    flags]``."""
    snapshot = b"".join(
        [
            _pack({"channel": 1, "drain": 1}),
            _pack(["channels", 2]),
            _pack(["1", "legacy", ["no_tail"]]),
            _pack(["app", None, []]),
            _pack(["tokens", 1]),
            _pack(["t.x", "app", "web"]),
            _pack(["drains", 1]),
            _pack([1, "1", "d.x", "syslog://h.example"]),
            _pack(["credentials", 0]),
            _pack(["sessions", 0]),
        ]
    )
    files.write_snapshot(os.path.join(path, SNAPSHOT_FILE), snapshot)
    record = _pack([["C", "late", None, []], ["T", "t.y", "late", "app"]])
    with open(os.path.join(path, JOURNAL_FILE), "wb") as journal:
        journal.write(files.header(files.JOURNAL_MAGIC) + files.frame(record))


def _snapshot_rows(path: str, section: str) -> list:
    payload = files.read_snapshot(os.path.join(path, SNAPSHOT_FILE))
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(payload)
    next(unpacker)  # the counters
    for name, count in unpacker:
        rows = [next(unpacker) for _ in range(count)]
        if name == section:
            return rows
    raise AssertionError(f"no {section} section")


async def test_a_data_dir_from_before_overflow_modes_loads_unchanged(tmp_path):
    path = str(tmp_path)
    _write_pre_overflow_data_dir(path)
    store = open_store(path)
    assert sorted(store.channels(), key=lambda c: c.name) == [
        ChannelRecord("1", "legacy", ("no_tail",)),
        ChannelRecord("app"),
        ChannelRecord("late"),
    ]
    assert all(c.overflow is None for c in store.channels())
    assert store.tokens_of("app") == [TokenRecord("t.x", "app", "web")]
    assert store.drain(1) == DrainRecord(1, "1", "d.x", "syslog://h.example")
    # Setting a mode keeps the channel's label and flags; compaction and reopening keep it.
    await store.put_channel("1", [], overflow="drop")
    await store.compact()
    store.close()
    store = open_store(path)
    assert store.channel("1") == ChannelRecord("1", "legacy", ("no_tail",), "drop")
    assert store.channel("app") == ChannelRecord("app")
    store.close()
    # Channels without a mode keep the old row form, which older builds read.
    rows = sorted(_snapshot_rows(path, "channels"))
    assert rows == [["1", "legacy", ["no_tail"], "drop"], ["app", None, []], ["late", None, []]]


async def test_channel_operations_without_a_mode_keep_the_old_form(tmp_path):
    store = open_store(str(tmp_path))
    await store.put_channel("plain", [])
    await store.put_channel("quiet", [], overflow="pushback")
    store.close()
    scan = files.read_journal(journal_path(tmp_path))
    assert scan is not None
    ops = [op for record in scan.records for op in msgpack.unpackb(record, raw=False)]
    assert ops == [["C", "plain", None, []], ["C", "quiet", None, [], "pushback"]]


def test_a_reload_publishes_a_changed_overflow_mode():
    old, new = State(), State()
    old.channels["a"] = ChannelRecord("a")
    old.channels["b"] = ChannelRecord("b", overflow="drop")
    new.channels["a"] = ChannelRecord("a", overflow="drop")
    new.channels["b"] = ChannelRecord("b", overflow="drop")
    assert difference(old, new) == [
        ChannelUpdated(ChannelRecord("a", overflow="drop"), ChannelRecord("a"))
    ]
