"""``UnsentLedger``: what a Redis-mode node routed and Redis never stored, counted across a
``kill -9``. The ledger's file is read back by a second ledger on the same directory, as
the next process would: the first one is simply dropped, as a killed process is."""

from __future__ import annotations

from pathlib import Path

from logplexd.cluster import UNANSWERED, UnsentLedger
from logplexd.native import ChannelRing, parse_body
from tests.helpers.redis import RedisServer


def batch(n: int):
    raw = b""
    for i in range(n):
        msg = f"<134>1 2024-01-01T00:00:00Z host t.app web.1 - - m{i}".encode()
        raw += b"%d %s" % (len(msg), msg)
    return parse_body(raw)


def staging(ledger: UnsentLedger, name: str, now: float = 100.0):
    """A staging ring mirrored into ``name``'s slot; the slot and what the previous
    process lost of the channel (messages, since)."""
    slot, lost, since = ledger.slot(name, now)
    assert slot is not None
    ring = ChannelRing(1000, 1 << 20)
    ring.mirror_head(slot.head)
    return ring, slot, lost, since


def reopened(tmp_path: Path) -> UnsentLedger:
    ledger = UnsentLedger(tmp_path)
    ledger.open()
    return ledger


def test_what_was_routed_and_not_stored_is_counted_by_the_next_process(tmp_path: Path) -> None:
    ledger = UnsentLedger(tmp_path)
    assert ledger.open() == (0, 0)
    ring, slot, lost, _ = staging(ledger, "app")
    assert lost == 0
    ring.append_batch(batch(10))
    slot.account(4, now=101.5)  # a write stored 4 of them
    quiet, _, _, _ = staging(ledger, "quiet")
    quiet.append_batch(batch(3))

    after = UnsentLedger(tmp_path)
    assert after.open() == (6 + 3, 2)
    _, _, lost, since = staging(after, "app")
    assert (lost, since) == (6, 101.5)
    _, _, lost, since = staging(after, "quiet")
    assert (lost, since) == (3, 100.0)  # never stored anything: since its slot was made
    _, _, lost, _ = staging(after, "new")
    assert lost == 0


def test_a_loss_not_told_yet_is_carried_to_the_next_start(tmp_path: Path) -> None:
    """The next process writes the loss as a marker; killed again before the marker is in
    Redis, the start after tells it still, with what was unwritten meanwhile."""
    first = UnsentLedger(tmp_path)
    first.open()
    ring, _, _, _ = staging(first, "app")
    ring.append_batch(batch(6))

    second = reopened(tmp_path)
    ring, slot, lost, _ = staging(second, "app", now=200.0)
    assert lost == 6 and slot.carried == 6
    ring.append_batch(batch(3))
    slot.account(2, now=201.0)  # a marker told 2 of the 6 (one joined with newer losses
    # would tell more: what an earlier run lost is taken first)
    assert (slot.carried, slot.accounted) == (4, 0)

    third = reopened(tmp_path)
    _, _, lost, since = staging(third, "app")
    assert (lost, since) == (4 + 3, 201.0)


def test_nothing_is_counted_for_what_was_stored_or_a_deleted_channel(tmp_path: Path) -> None:
    ledger = UnsentLedger(tmp_path)
    ledger.open()
    ring, slot, _, _ = staging(ledger, "stored")
    ring.append_batch(batch(5))
    slot.account(5, now=101.0)
    ring, slot, _, _ = staging(ledger, "gone")
    ring.append_batch(batch(5))
    ring.mirror_head(None)
    ledger.release(slot)
    reused, slot, _, _ = staging(ledger, "reused")  # takes the freed slot
    reused.append_batch(batch(2))
    slot.account(2, now=102.0)

    after = UnsentLedger(tmp_path)
    assert after.open() == (0, 0)
    for name in ("stored", "gone", "reused"):
        assert staging(after, name)[2] == 0


def test_past_its_capacity_a_channel_goes_untracked(tmp_path: Path) -> None:
    ledger = UnsentLedger(tmp_path, max_channels=1)
    ledger.open()
    ring, _, _, _ = staging(ledger, "one")
    ring.append_batch(batch(2))
    slot, lost, _ = ledger.slot("two", 100.0)
    assert slot is None and lost == 0

    after = UnsentLedger(tmp_path, max_channels=1)
    assert after.open() == (2, 1)


def test_a_count_stays_until_its_channel_takes_it_over_or_is_gone(tmp_path: Path) -> None:
    """A process killed before its channels were loaded (Redis unreachable at its start)
    leaves the count where it was; once the store has loaded every channel, what belongs to
    none (deleted meanwhile) is let go."""
    first = UnsentLedger(tmp_path)
    first.open()
    for name, n in (("app", 4), ("deleted", 7)):
        ring, _, _, _ = staging(first, name)
        ring.append_batch(batch(n))

    assert UnsentLedger(tmp_path).open() == (11, 2)  # killed before loading any channel
    second = UnsentLedger(tmp_path)
    assert second.open() == (11, 2)
    ring, slot, lost, _ = staging(second, "app")
    assert lost == 4
    ring.append_batch(batch(1))
    assert second.forget_unclaimed() == 1  # "deleted" is no channel any more
    ring, slot, lost, _ = staging(second, "other")  # may take its slot now
    assert lost == 0

    third = UnsentLedger(tmp_path)
    assert third.open() == (4 + 1, 1)
    assert staging(third, "app")[2] == 5
    assert staging(third, "deleted")[2] == 0


def test_a_slot_keeps_where_its_last_answered_write_ended_for_the_next_process(
    tmp_path: Path,
) -> None:
    """``after``: the id of the last entry of the channel's last answered write, kept for
    the next process, whether the channel had anything unwritten or not (its next write
    may be the one a kill takes the reply of); not known for a slot no write was answered
    for, nor once a channel is let go."""
    ledger = UnsentLedger(tmp_path)
    ledger.open()
    ring, slot, _, _ = staging(ledger, "app")
    assert slot.after is None
    ring.append_batch(batch(10))
    slot.account(4, now=101.0, through=(4, 0))
    slot.account(2, now=102.0, through=(6, 1))
    ring, slot, _, _ = staging(ledger, "caught-up")
    ring.append_batch(batch(3))
    slot.account(3, now=101.0, through=(90, 0))
    ring, slot, _, _ = staging(ledger, "gone")
    slot.account(0, now=101.0, through=(7, 0))

    after = UnsentLedger(tmp_path)
    assert after.open() == (4, 1)
    _, slot, lost, _ = staging(after, "app")
    assert (lost, slot.after) == (4, (6, 1))
    _, slot, lost, _ = staging(after, "caught-up")
    assert (lost, slot.after) == (0, (90, 0))
    assert after.forget_unclaimed() == 0  # "gone" had nothing unwritten: nothing to say
    _, slot, _, _ = staging(after, "new")  # may take "gone"'s slot
    assert slot.after is None

    again = UnsentLedger(tmp_path)
    again.open()
    assert staging(again, "caught-up")[1].after == (90, 0)


def test_a_ledger_an_older_version_wrote_is_read_with_no_ids(tmp_path: Path) -> None:
    """The ids lie after the slots: a file without them (as an older version left it) keeps
    its counts, told whole."""
    ledger = UnsentLedger(tmp_path)
    ledger.open()
    ring, _, _, _ = staging(ledger, "app")
    ring.append_batch(batch(5))
    path = tmp_path / "redis-unsent.bin"
    with path.open("r+b") as file:
        # Version 1's layout: a 64-byte header, then 48-byte slots, and nothing after.
        file.truncate(64 + ledger.max_channels * 48)
    after = UnsentLedger(tmp_path)
    assert after.open() == (5, 1)
    assert staging(after, "app")[1].after is None


def unanswered(server: RedisServer, stream: str, after: str, budget: int) -> list[bytes]:
    """``UNANSWERED`` for node A, one channel: [messages, id] as RESP lines."""
    reply = server.command(
        "EVAL", UNANSWERED.text, "1", stream, "A", str(budget), "1", stream, after
    )
    return [line for line in reply.split(b"\r\n") if line and line[:1] not in b"*$"]


def test_what_a_killed_writer_stored_is_its_one_run_of_entries_past_the_id(
    redis_server: RedisServer,
) -> None:
    """Past ``after``, the run of this node's entries (its last write: one call, one run)
    is summed, its messages and what its loss markers told; other nodes' entries before the
    run are passed over, and the first one after it ends the look. Nothing past the budget
    is looked at; a stream that is not there has nothing."""
    stream = "logplex:{ch:app}:log"
    entries = [
        ("5-0", "A", ("n", "5", "f", "x")),  # the last answered write
        ("8-0", "B", ("n", "3", "f", "x")),
        ("12-0", "A", ("n", "4", "f", "x")),  # the write in flight at the kill: 4 + 3 + 3
        ("12-1", "A", ("n", "0", "lost", "3", "since", "1.0")),
        ("15-0", "A", ("n", "3", "f", "x")),
        ("17-0", "B", ("n", "2", "f", "x")),
        ("20-0", "A", ("n", "3", "f", "x")),  # not the killed process's (after B's)
    ]
    for entry_id, node, fields in entries:
        redis_server.command("XADD", stream, entry_id, *fields, "node", node)
    assert unanswered(redis_server, stream, "5-0", 64) == [b":10", b"15-0"]
    assert unanswered(redis_server, stream, "5-0", 2) == [b":4", b"12-0"]
    assert unanswered(redis_server, stream, "17-0", 64) == [b":3", b"20-0"]
    assert unanswered(redis_server, stream, "20-0", 64) == [b":0"]
    assert unanswered(redis_server, "logplex:{ch:none}:log", "5-0", 64) == [b":0"]
