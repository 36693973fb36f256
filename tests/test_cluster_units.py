"""Sans-IO cores of the data plane across nodes: the outbound buffer, the drain lease, the
writer's linger."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from logplexd.cluster import (
    COLLECT_SKIPS,
    FLUSH_INTERVAL,
    HOLD_KEEPS,
    REPORT_HEARTBEAT,
    ChannelPushback,
    ClusterRegistry,
    DataPlane,
    Follow,
    Keys,
    SpilledSeqs,
    SpillJournal,
    flush_linger,
    report_due,
    slot_of,
    take_journaled,
)
from logplexd.cluster.buffer import Entry, Flush, OutboundBuffer
from logplexd.cluster.lease import (
    DEFAULT_TTL,
    SAFETY_MARGIN,
    TRANSITIONS,
    Lease,
    LeaseEvent,
    LeaseState,
    Liveness,
    next_state,
    renew_interval,
)
from logplexd.native import ChannelRing, octet_frames, parse_body, parse_frames
from logplexd.router import ROUND_SHARE, Channel, look_interval
from tests.helpers.syslog import frame

# Where ChannelPushback holds a channel with a keep of 1,000 (the tests' keep).
MARK = HOLD_KEEPS * 1000


# -- the outbound buffer ------------------------------------------------------------------------
def test_buffer_takes_everything_grouped_per_channel_in_order() -> None:
    buf = OutboundBuffer(max_messages=100, max_bytes=10_000)
    buf.push("a", b"A1", 1, now=1.0)
    buf.push("b", b"B1", 2, now=1.0)
    buf.push("a", b"A2", 3, now=1.0)
    assert (buf.messages, buf.nbytes) == (6, 6)
    flush = buf.take()
    assert flush.entries == {"a": [(b"A1A2", 4, None)], "b": [(b"B1", 2, None)]}
    assert flush.messages == 6 and not flush.losses
    assert not buf and (buf.messages, buf.nbytes) == (0, 0)


def test_buffer_joins_a_channel_s_blobs_up_to_entry_max_messages_and_counts_queued() -> None:
    buf = OutboundBuffer(max_messages=100, max_bytes=10_000)
    for i in range(5):
        buf.push("a", b"A%d" % i, 3, now=1.0)
    buf.push("b", b"B", 1, now=1.0)
    assert buf.queued == {"a": 15, "b": 1}
    flush = buf.take(entry_max_messages=7)
    # 3 + 3 = 6 fits, a third would make 9 > 7: an entry never holds more than 7.
    assert flush.entries == {
        "a": [(b"A0A1", 6, None), (b"A2A3", 6, None), (b"A4", 3, None)],
        "b": [(b"B", 1, None)],
    }
    assert buf.queued == {}
    buf.restore(flush, now=2.0)  # given back: queued again
    assert buf.queued == {"a": 15, "b": 1}


def test_buffer_drops_oldest_when_full_and_counts_per_channel() -> None:
    buf = OutboundBuffer(max_messages=5, max_bytes=10_000)
    buf.push("a", b"a" * 10, 3, now=10.0)
    buf.push("b", b"b" * 10, 2, now=11.0)
    buf.push("a", b"c" * 10, 2, now=12.0)  # 7 > 5: the oldest entry (3 of "a") goes
    assert buf.messages == 4 and buf.dropped == 3
    flush = buf.take()
    assert flush.losses["a"].count == 3 and flush.losses["a"].since == 12.0
    assert flush.entries == {"b": [(b"b" * 10, 2, None)], "a": [(b"c" * 10, 2, None)]}
    # Losses are handed over once.
    assert not buf.take()


def test_buffer_byte_bound() -> None:
    buf = OutboundBuffer(max_messages=1000, max_bytes=25)
    for i in range(5):
        buf.push("a", bytes([65 + i]) * 10, 1, now=float(i))
    assert buf.nbytes <= 25 and buf.messages == 2 and buf.dropped == 3


def test_restore_puts_a_failed_flush_back_in_front_and_rebounds() -> None:
    buf = OutboundBuffer(max_messages=4, max_bytes=10_000)
    buf.push("a", b"1", 2, now=1.0)
    buf.lose("a", 5, now=0.5)
    flush = buf.take()
    buf.push("a", b"2", 2, now=2.0)
    buf.restore(flush, now=3.0)
    again = buf.take()
    assert again.entries == {"a": [(b"12", 4, None)]}
    assert again.losses["a"].count == 5 and again.losses["a"].since == 0.5
    # Restoring past the bound drops the oldest (the restored entry) and counts it.
    buf.push("a", b"3", 3, now=4.0)
    buf.restore(again, now=5.0)
    assert buf.messages == 3 and buf.take().losses["a"].count == 5 + 4
    assert buf.dropped == 5 + 4


def test_a_previous_process_s_loss_keeps_what_is_to_be_looked_at_through_a_restore() -> None:
    """A loss the ledger found (``after``: where the killed process's last write may lie)
    joins this process's own losses of the channel; the part to look at stays apart, also
    when a failed flush is given back."""
    buf = OutboundBuffer(max_messages=4, max_bytes=10_000)
    buf.lose("a", 6, now=0.5, after=(40, 0))
    buf.push("a", b"1", 3, now=1.0)
    buf.push("a", b"2", 3, now=1.0)  # 6 > 4: the oldest (3) goes
    flush = buf.take()
    loss = flush.losses["a"]
    assert (loss.count, loss.prior, loss.after, loss.since) == (9, 6, (40, 0), 0.5)
    buf.lose("a", 2, now=2.0)
    buf.restore(flush, now=3.0)
    loss = buf.take().losses["a"]
    assert (loss.count, loss.prior, loss.after) == (11, 6, (40, 0))


def test_a_flush_takes_at_most_half_the_buffer_s_byte_bound() -> None:
    """Enough to bring a buffer that holds its inputs (half full) under the quarter that
    releases them in one round trip; never the whole of a full buffer."""
    mib = 1024 * 1024
    buf = OutboundBuffer(max_messages=10_000, max_bytes=8 * mib)
    for i in range(7):
        buf.push("a", bytes([65 + i]) * (mib - 100), 1, now=1.0)
    assert buf.filled() > 0.75
    flush = buf.take(entry_max=2 * mib)
    assert flush.messages == 4 and buf.messages == 3 and buf.filled() < 0.5
    assert [n for _, n, _ in flush.entries["a"]] == [2, 2]
    small = OutboundBuffer(max_messages=10, max_bytes=1000)
    small.push("a", b"x" * 600, 1, now=1.0)
    small.push("a", b"y" * 300, 1, now=1.0)
    assert small.take().messages == 2  # never under one stream entry's worth (1 MB)
    huge = OutboundBuffer(max_messages=10_000, max_bytes=1024 * mib)
    blob = bytes(mib - 100)  # one object pushed 72 times: 72 MB counted, 1 MB held
    for _ in range(72):
        huge.push("a", blob, 1, now=1.0)
    assert huge.take(entry_max=1).messages == 64  # at most 64 MB whatever the bound


def test_a_flush_that_may_have_run_is_sent_again_as_the_same_entries() -> None:
    """Given back after its reply was lost (``regroup=False``), a flush's entries are
    joined again exactly as before and never with newer ones: if it had run, Redis finds
    the same stream entries (``PROPOSE``) instead of a different cut of the messages."""
    buf = OutboundBuffer(max_messages=100, max_bytes=10_000)
    buf.push("a", b"1", 2, now=1.0)
    buf.push("a", b"2", 2, now=1.0)
    buf.push("b", b"x", 1, now=1.0)
    buf.push("a", b"3", 2, now=1.0)
    flush = buf.take(entry_max_messages=4)
    assert flush.entries["a"] == [(b"12", 4, None), (b"3", 2, None)]
    buf.push("a", b"4", 1, now=2.0)
    buf.restore(flush, now=3.0, regroup=False)
    again = buf.take(entry_max_messages=4)
    assert again.entries == {
        "a": [(b"12", 4, None), (b"3", 2, None), (b"4", 1, None)],
        "b": [(b"x", 1, None)],
    }
    # Lost again with a newer entry in it: each keeps its own cut.
    buf.push("a", b"5", 1, now=4.0)
    buf.restore(again, now=5.0, regroup=False)
    third = buf.take(entry_max_messages=4)
    assert third.entries["a"] == [
        (b"12", 4, None),
        (b"3", 2, None),
        (b"4", 1, None),
        (b"5", 1, None),
    ]
    # Given back by Redis's answer instead, entries are joined as usual.
    buf.restore(third, now=6.0)
    buf.push("c", b"y", 1, now=7.0)
    assert buf.take(entry_max_messages=100).entries["a"] == [(b"12345", 8, None)]


def test_entries_redis_answered_for_come_back_whole_up_to_twice_the_bound() -> None:
    """A flush Redis answered but did not take (a reader behind, a refusal) comes back
    whole while the buffer is under twice its bound (the inputs are held meanwhile); past
    that the oldest go, counted, as for any overflow."""
    buf = OutboundBuffer(max_messages=4, max_bytes=10_000)
    buf.push("a", b"1", 3, now=1.0)
    flush = buf.take()
    buf.push("a", b"2", 3, now=2.0)  # routed while the flush was in flight
    buf.restore(flush, now=3.0, slack=2)
    buf.push("a", b"4", 1, now=3.5)  # and a push then drops nothing either (7 <= 8)
    assert buf.messages == 7 and buf.dropped == 0
    # A flush takes at most the bound's messages (one entry at least): given back, it and
    # what was routed meanwhile fit in twice the bound.
    assert buf.take().entries == {"a": [(b"1", 3, None)]}
    assert buf.take().entries == {"a": [(b"24", 4, None)]}
    buf.push("a", b"3", 3, now=4.0)
    big = Flush()
    big.taken = [Entry("a", b"0", 6)]
    big.messages = 6
    big.nbytes = 1
    buf.restore(big, now=5.0, slack=2)
    assert buf.messages == 3 and buf.dropped == 6  # 9 > 8: the oldest went


def test_flush_is_bounded_and_entries_split() -> None:
    buf = OutboundBuffer()
    for _ in range(10):
        buf.push("a", b"x" * 100, 1, now=0.0)
    flush = buf.take(max_bytes=350, entry_max=200)
    assert flush.messages == 3
    assert [n for _, n, _ in flush.entries["a"]] == [2, 1]
    assert buf.messages == 7


def test_kept_batches_count_twice_and_reach_the_flush_only_when_all_were_kept() -> None:
    buf = OutboundBuffer(max_messages=100, max_bytes=10_000)
    first, second = object(), object()
    buf.push("a", b"A1", 1, now=1.0, kept=first)
    buf.push("a", b"A2", 1, now=1.0, kept=second)
    buf.push("b", b"B1", 1, now=1.0, kept=first)
    buf.push("b", b"B2", 1, now=1.0)  # not kept: the joined entry has no batches
    assert buf.nbytes == 2 * 2 + 2 * 2 + 2 * 2 + 2
    assert buf.filled() == 4 / 100  # the larger share: messages
    flush = buf.take()
    assert flush.entries == {"a": [(b"A1A2", 2, [first, second])], "b": [(b"B1B2", 2, None)]}
    assert buf.nbytes == 0 and buf.filled() == 0.0


def test_buffer_needs_room() -> None:
    with pytest.raises(ValueError):
        OutboundBuffer(max_messages=0)


# -- the lease ----------------------------------------------------------------------------------
def test_transition_table_is_complete() -> None:
    for state in LeaseState:
        for event in LeaseEvent:
            assert (state, event) in TRANSITIONS
    assert next_state(LeaseState.STANDBY, LeaseEvent.ACQUIRED) is LeaseState.OWNER
    assert next_state(LeaseState.OWNER, LeaseEvent.LOST) is LeaseState.STANDBY
    assert next_state(LeaseState.OWNER, LeaseEvent.EXPIRED) is LeaseState.STANDBY


def test_a_lease_is_tried_while_free_or_held_by_a_dead_holder() -> None:
    lease = Lease()
    assert lease.wants(set())  # holder not known: try it
    assert lease.apply(LeaseEvent.HELD_ELSEWHERE, "n2/b") == (
        LeaseState.STANDBY,
        LeaseState.STANDBY,
    )
    assert lease.holder == "n2/b"
    assert not lease.wants(set()) and not lease.wants({"n3/c"})  # n2/b is alive
    assert lease.wants({"n2/b"})
    assert lease.apply(LeaseEvent.ACQUIRED, "n1/a") == (LeaseState.STANDBY, LeaseState.OWNER)
    assert not lease.wants({"n1/a", "n2/b"})  # ours: nothing to try
    assert lease.apply(LeaseEvent.LOST) == (LeaseState.OWNER, LeaseState.STANDBY)
    assert lease.holder is None and lease.wants(set())


def test_liveness_is_valid_from_the_send_time_of_the_last_confirmed_renewal() -> None:
    live = Liveness("n1", ttl=10.0)
    assert live.ttl_ms == 10_000 and not live.confirmed and not live.valid(0.0)
    assert live.holder.startswith("n1/")
    live.renewed(1.0)
    deadline = 1.0 + 10.0 * (1 - SAFETY_MARGIN)
    assert live.confirmed and live.valid_until == pytest.approx(deadline)
    # An old reply (sent earlier) never shortens it.
    live.renewed(0.5)
    assert live.valid_until == pytest.approx(deadline)
    # Redis silent: valid until the deadline measured from the last confirmed send.
    assert live.valid(deadline - 0.01) and not live.valid(deadline)


def test_a_liveness_key_found_gone_takes_a_new_incarnation() -> None:
    live = Liveness("n1", ttl=4.0)
    live.renewed(0.0)
    first = live.holder
    assert live.gone() == first
    # The old holder is dead for good: what it held may be taken over, by this node too.
    assert live.holder != first and live.holder.startswith("n1/")
    assert not live.confirmed and not live.valid(0.0)


def test_takeover_bound_is_under_fifteen_seconds_with_the_default() -> None:
    # A dead owner's liveness key expires at most TTL after its last renewal; a standby
    # node asks every renew interval.
    assert DEFAULT_TTL + renew_interval(DEFAULT_TTL) < 15.0


def test_release_gives_up_ownership() -> None:
    lease = Lease()
    lease.apply(LeaseEvent.ACQUIRED, "n1/a")
    assert lease.apply(LeaseEvent.RELEASE) == (LeaseState.OWNER, LeaseState.STANDBY)
    assert not lease.owned and lease.holder is None


# -- the wire format and the ring <-> stream map ------------------------------------------------
def _batch(*texts: str):
    return parse_frames(
        [f"<134>1 2024-01-01T00:00:00Z host app web.1 - - {t}".encode() for t in texts]
    )


def test_octet_frames_round_trip_keeps_every_frame_and_field() -> None:
    frames = [b"<134>1 t h app p - - hi", b"not syslog at all", b"<1>1 t h a p m [x\\]] m\n"]
    batch = parse_frames(frames)
    wire = octet_frames(batch)
    assert wire.startswith(b"23 <134>1 t h app p - - hi17 not syslog at all")
    again = parse_body(wire, 65000)
    assert again.frames() == frames and again.malformed == 0
    assert [again.fields(i) for i in range(3)] == [batch.fields(i) for i in range(3)]
    assert octet_frames(batch, 1, 2) == b"17 not syslog at all"
    assert octet_frames(parse_frames([])) == b""


def test_follow_maps_ring_positions_to_stream_sequences() -> None:
    channel = Channel("app", ChannelRing(100, 1 << 20))
    follow = Follow("app", "k", channel, (10, 0))
    assert follow.seq_at(0) == 10 and follow.position_after(10) == (0, 0)
    # A checkpoint older than where this node began following: the difference is lost.
    assert follow.position_after(7) == (0, 3)
    follow.append((13, 0), _batch("a", "b", "c"))  # sequences 11..13 at ring 0..2
    follow.append((13, 1), _batch())  # a loss marker: the sequence does not move
    follow.append((20, 0), _batch("d", "e"))  # 19..20 at ring 3..4: 14..18 were trimmed
    assert channel.ring.head == 5 and follow.last == (20, 0) and follow.last_seq == 20
    # Delivered through ring position p -> checkpoint sequence.
    assert [follow.seq_at(p) for p in range(6)] == [10, 11, 12, 13, 19, 20]
    # A checkpoint -> where to continue, and how many of the stream's messages are gone.
    assert follow.position_after(10) == (0, 0)
    assert follow.position_after(12) == (2, 0)
    assert follow.position_after(13) == (3, 5)
    assert follow.position_after(15) == (3, 3)
    assert follow.position_after(19) == (4, 0)
    assert follow.position_after(20) == (5, 0)
    assert follow.valid_messages() == 5


def test_a_position_is_reported_again_when_it_moved_far_or_at_the_heartbeat() -> None:
    """``report_due``: never reported, or moved by the step: now; moved less, or not at all
    but behind (a held reader, a drain behind what the node read): once REPORT_HEARTBEAT has
    passed; unmoved and not behind: never (its report goes stale)."""
    beat = REPORT_HEARTBEAT
    assert report_due(None, 5, 0.0, 10, False)
    assert report_due((5, 0.0), 15, 0.0, 10, False)  # moved by the step
    assert not report_due((5, 0.0), 14, beat / 2, 10, False)
    assert report_due((5, 0.0), 14, beat, 10, False)  # moved a little: at the heartbeat
    assert not report_due((5, 0.0), 5, beat * 10, 10, False)  # unmoved, not behind
    assert not report_due((5, 0.0), 5, beat / 2, 10, True)
    assert report_due((5, 0.0), 5, beat, 10, True)  # unmoved but behind: kept fresh


def test_follow_maps_a_run_of_entries_without_a_gap_with_one_point() -> None:
    """Entries that follow each other without a gap extend one line of the map, so a follow
    mapping READER_SLACK x keep back (a drain's budget) costs a point per gap, not per
    entry; the positions map as before."""
    channel = Channel("app", ChannelRing(1000, 1 << 20))
    follow = Follow("app", "k", channel, (0, 0), 4000)
    for k in range(100):  # 200 messages, entries of two, sequences 1..200 at ring 0..199
        follow.append((2 * k + 2, 0), _batch(f"a{k}", f"b{k}"))
    assert len(follow.heads) == 1
    follow.append((210, 0), _batch("c", "d"))  # 201..208 trimmed: 209..210 at ring 200..201
    follow.append((212, 0), _batch("e", "f"))
    assert len(follow.heads) == 2
    assert [follow.seq_at(p) for p in (0, 1, 2, 150, 199, 200, 201, 202, 203)] == [
        0, 1, 2, 150, 199, 200, 209, 210, 211,
    ]  # fmt: skip
    assert follow.position_after(0) == (0, 0)
    assert follow.position_after(150) == (150, 0)
    assert follow.position_after(200) == (200, 8)
    assert follow.position_after(205) == (200, 3)
    assert follow.position_after(210) == (202, 0)
    assert follow.position_after(212) == (204, 0)


def test_a_disk_backlogs_chunks_map_to_the_stream_sequences_their_ring_positions_had() -> None:
    """What a drain spilled from the ring (ring positions -> backlog sequences) gives its
    checkpoint: the stream sequence delivered through for a settled backlog position.
    Exact within a chunk that spans no gap of the stream; inside one that does, the
    sequence before the chunk (sent again by a new owner, never skipped)."""
    channel = Channel("app", ChannelRing(1000, 1 << 20))
    follow = Follow("app", "k", channel, (0, 0), 4000)
    follow.append((10, 0), _batch(*(f"a{i}" for i in range(10))))  # 1..10 at ring 0..9
    follow.append((25, 0), _batch(*(f"b{i}" for i in range(5))))  # 21..25 at ring 10..14
    follow.append((30, 0), _batch(*(f"c{i}" for i in range(5))))  # 26..30 at ring 15..19
    spilled = SpilledSeqs(follow)
    spilled.spilled(2, 100, 6)  # ring 2..7 (sequences 3..8) at backlog 100..105
    spilled.spilled(8, 106, 4)  # ring 8..11 (9, 10, 21, 22): across the gap
    spilled.spilled(12, 110, 8)  # ring 12..19 (23..30)
    assert spilled.delivered_through(100) == 2  # nothing of the backlog yet
    assert [spilled.delivered_through(b) for b in (101, 103, 106)] == [3, 5, 8]
    assert [spilled.delivered_through(b) for b in (107, 109)] == [8, 8]  # inside the gap's
    assert spilled.delivered_through(110) == 22
    assert [spilled.delivered_through(b) for b in (111, 118)] == [23, 30]
    # Chunks delivered past are let go; a position before the rest says the one before.
    assert len(spilled) == 1
    assert spilled.delivered_through(112) == 24


def _spilling(tmp_path: Path, state: tuple[int, int, float] | None) -> SpilledSeqs:
    """A drain's ``SpilledSeqs`` over a follow of 30 messages (ring 0..29, sequences 1..30),
    journaled under ``tmp_path`` (its backlogs' directory; drain 7) with ``state`` as the
    checkpoint it has in Redis."""
    channel = Channel("app", ChannelRing(1000, 1 << 20))
    follow = Follow("app", "k", channel, (0, 0), 4000)
    follow.append((30, 0), _batch(*(f"m{i}" for i in range(30))))
    journal = SpillJournal(tmp_path / "journal", 7, "app", lambda: state)
    return SpilledSeqs(follow, None, journal)


def test_a_spilled_chunk_is_journaled_with_the_checkpoint_redis_holds(tmp_path: Path) -> None:
    """What a killed process's next start resumes: every chunk noted, in order, the
    checkpoint Redis held when the journal began, then each checkpoint journaled before
    its store (should a store not land, the one before it counts as unchanged too), with
    the loss the drain owed then. Read once: the journals are removed."""
    spilled = _spilling(tmp_path, (2, 0, 0.0))
    spilled.spilled(2, 100, 6)  # sequences 3..8 at backlog 100..105
    spilled.spilled(8, 106, 4)  # 9..12
    spilled.note_checkpoint((5, 3, 17.5), holds_messages=True)
    spilled.spilled(12, 110, 8)  # 13..20
    carried = take_journaled(tmp_path)[7]
    assert carried.channel == "app"
    assert carried.chunks == ((100, 6, 2, 8), (106, 4, 8, 12), (110, 8, 12, 20))
    assert carried.resume_after == 20
    assert (carried.lost, carried.since) == (3, 17.5)
    assert [carried.resumable_from(c) for c in (5, 2, 4, 8)] == [True, True, False, False]
    assert take_journaled(tmp_path) == {}


def test_a_loss_noted_after_the_last_checkpoint_is_journaled(tmp_path: Path) -> None:
    """A drain whose receiver refuses stores no checkpoint (its delivery does not move): a
    loss noted meanwhile (the stream trimmed past it) is journaled as it changes, and the
    next process owes the last one, down to none once an L10 went out."""
    spilled = _spilling(tmp_path, (2, 0, 0.0))
    spilled.spilled(2, 100, 6)
    spilled.note_checkpoint((5, 3, 17.5), holds_messages=True)
    journal = spilled.journal
    assert journal is not None
    journal.owed(3, 17.5)  # unchanged since the checkpoint: no record
    size = (tmp_path / "journal" / "7").stat().st_size
    journal.owed(10, 17.5)
    assert (tmp_path / "journal" / "7").stat().st_size == size + 41
    spilled.spilled(8, 106, 4)
    carried = take_journaled(tmp_path)[7]
    assert (carried.lost, carried.since, carried.checkpoint) == (10, 17.5, 5)
    assert carried.chunks == ((100, 6, 2, 8), (106, 4, 8, 12))
    spilled = _spilling(tmp_path, (2, 4, 9.0))
    spilled.spilled(2, 100, 6)
    assert spilled.journal is not None
    spilled.journal.owed(0, 9.0)  # the L10 went out
    assert (take_journaled(tmp_path)[7].lost) == 0
    spilled = _spilling(tmp_path, (2, 0, 0.0))
    spilled.spilled(2, 100, 6)
    assert spilled.journal is not None
    spilled.journal.owed(-5, 9.0)  # as a damaged record would read
    assert take_journaled(tmp_path)[7].lost == 0


def test_a_journal_torn_by_a_crash_keeps_its_whole_records(tmp_path: Path) -> None:
    spilled = _spilling(tmp_path, (2, 0, 0.0))
    spilled.spilled(2, 100, 6)
    spilled.spilled(8, 106, 4)
    path = tmp_path / "journal" / "7"
    path.write_bytes(path.read_bytes()[:-5])  # the last record half written
    assert take_journaled(tmp_path)[7].chunks == ((100, 6, 2, 8),)


def test_a_journal_is_rewritten_with_what_is_undelivered_and_goes_once_nothing_is(
    tmp_path: Path,
) -> None:
    """A long spill keeps the journal bounded: past its slack it is rewritten with the
    chunks not delivered yet. A backlog that holds nothing any more has no journal (a kill
    then resumes from the checkpoint); the next chunk starts one."""
    spilled = _spilling(tmp_path, (0, 0, 0.0))
    path = tmp_path / "journal" / "7"
    for k in range(200):
        spilled.spilled(k % 20, 10 * k, 10)
        spilled.delivered_through(10 * k + 5)  # the older chunks are let go
        spilled.note_checkpoint((k, 0, 0.0), holds_messages=True)
    assert len(spilled) == 1
    assert path.stat().st_size < 100 * 41  # (200 chunks and 200 checkpoints: 16 KB)
    spilled.note_checkpoint((300, 0, 0.0), holds_messages=False)
    assert not path.exists()
    spilled.spilled(3, 5000, 2)
    carried = take_journaled(tmp_path)[7]
    assert carried.chunks[-1] == (5000, 2, 3, 5) and carried.checkpoint == 0


def test_a_resumed_backlog_keeps_only_the_chunks_on_disk(tmp_path: Path) -> None:
    """The chunks a killed process noted past what its disk writer wrote are left out: the
    stream is read on after the last chunk on disk, which has their messages."""
    spilled = _spilling(tmp_path, (2, 0, 0.0))
    for k in range(3):
        spilled.spilled(2 + 6 * k, 100 + 6 * k, 6)  # sequences 3..8, 9..14, 15..20
    carried = take_journaled(tmp_path)[7]
    assert carried.written_through(118) is carried
    trimmed = carried.written_through(112)
    assert trimmed is not None
    assert trimmed.chunks == carried.chunks[:2] and trimmed.resume_after == 14
    assert carried.written_through(109) is not None
    assert carried.written_through(105) is None  # no chunk whole on disk


def test_a_journal_that_is_not_one_resumes_nothing(tmp_path: Path) -> None:
    """Garbage, another version's file, a rewrite cut short (``.tmp``): nothing resumed,
    nothing raised, and the directory is gone after the read."""
    journal = tmp_path / "journal"
    journal.mkdir()
    (journal / "3").write_bytes(b"not a journal at all")
    (journal / "4").write_bytes(b"")
    (journal / "x").write_bytes(b"LPJ1")
    spilled = _spilling(tmp_path, (2, 0, 0.0))
    spilled.spilled(2, 100, 6)
    (journal / "7.tmp").write_bytes((journal / "7").read_bytes()[:10])
    assert list(take_journaled(tmp_path)) == [7]
    assert not journal.exists()


def test_no_journal_without_a_checkpoint_in_redis(tmp_path: Path) -> None:
    """A drain whose first checkpoint is not stored yet resumes from the stream after a
    kill, as before: nothing is journaled."""
    spilled = _spilling(tmp_path, None)
    spilled.spilled(2, 100, 6)
    assert not (tmp_path / "journal" / "7").exists()
    assert take_journaled(tmp_path) == {}


def test_keys_share_the_channel_hash_tag() -> None:
    keys = Keys("logplex")
    tags = {
        k.split("{", 1)[1].split("}", 1)[0]
        for k in (
            keys.stream("app"),
            keys.sequence("app"),
            keys.lease("app", 7),
            keys.checkpoint("app", 7),
        )
    }
    assert tags == {"ch:app"}
    assert keys.stream("app") == "logplex:{ch:app}:log"


def test_deferred_channel_stays_in_order_while_the_others_are_taken() -> None:
    buf = OutboundBuffer(max_messages=100, max_bytes=10_000)
    buf.push("a", b"A1", 1, now=0.0)
    buf.push("b", b"B1", 1, now=0.0)
    buf.lose("a", 2, now=0.0)
    buf.defer("a", until=5.0)
    assert buf.ready(now=1.0) and buf.next_due() == 5.0
    flush = buf.take(now=1.0)
    assert flush.entries == {"b": [(b"B1", 1, None)]} and not flush.losses
    assert not buf.ready(now=1.0) and buf.queued == {"a": 1} and buf.messages == 1
    buf.push("a", b"A2", 1, now=2.0)
    assert not buf.ready(now=4.9)
    assert buf.ready(now=5.0) and buf.next_due() is None
    flush = buf.take(now=5.0)
    assert flush.entries == {"a": [(b"A1A2", 2, None)]} and flush.losses["a"].count == 2
    assert not buf


def test_pushback_closes_one_gate_for_every_input_while_the_buffer_is_half_full() -> None:
    filled = [0.0]
    behind = {"a": 0, "b": 0}
    pushback = ChannelPushback(1000, behind.__getitem__, lambda: True, lambda: filled[0])
    hurried = []
    pushback.on_hold = lambda: hurried.append(1)
    a, b = Channel("a", ChannelRing(100, 1 << 20)), Channel("b", ChannelRing(100, 1 << 20))
    pushback.routed(a)
    assert not pushback.gate.closed and not a.held  # neither behind nor a full buffer
    filled[0] = 0.6
    pushback.routed(a)
    pushback.routed(b)
    # One gate, closed once, whatever the number of channels routed: no channel is held.
    assert pushback.gate.closed and pushback.holds == 1 and len(hurried) == 1
    assert not a.held and not b.held and not pushback.held
    filled[0] = 0.3
    pushback.progressed(["a"])
    assert pushback.gate.closed  # above a quarter: still closed
    filled[0] = 0.2
    pushback.progressed(["a"])
    assert not pushback.gate.closed


def test_the_gate_opens_once_the_writer_took_the_buffer() -> None:
    """Not at the flush's reply: the writer took it (``taken``), and what it left in the
    buffer is under a quarter."""
    filled = [0.6]
    pushback = ChannelPushback(1000, lambda name: 0, lambda: True, lambda: filled[0])
    pushback.routed(Channel("a", ChannelRing(100, 1 << 20)))
    assert pushback.gate.closed
    filled[0] = 0.3
    pushback.taken()
    assert pushback.gate.closed  # more than a quarter left: the next flush takes it
    filled[0] = 0.0
    pushback.taken()
    assert not pushback.gate.closed


def test_the_gate_counts_how_long_it_held_every_input() -> None:
    # What ``redis_inputs_gated_seconds_total`` reports: the closings so far, and the one
    # in progress; not the time it stood open.
    now, filled = [10.0], [0.6]
    pushback = ChannelPushback(
        1000, lambda name: 0, lambda: True, lambda: filled[0], clock=lambda: now[0]
    )
    gate = pushback.gate
    a = Channel("a", ChannelRing(100, 1 << 20))
    assert gate.closed_seconds == 0
    pushback.routed(a)  # closes at 10
    now[0] = 12.5
    assert gate.closed and gate.closed_seconds == 2.5
    filled[0] = 0.2
    pushback.progressed(["a"])  # opens at 12.5
    now[0] = 20.0
    assert not gate.closed and gate.closed_seconds == 2.5
    filled[0] = 0.6
    pushback.routed(a)  # closes at 20
    now[0] = 20.5
    pushback.routed(a)  # closed already: the closing goes on from 20
    now[0] = 21.0
    filled[0] = 0.1
    pushback.progressed([])
    assert not gate.closed and gate.closed_seconds == 3.5 and gate.closings == 2


def test_pushback_looks_at_every_held_channel_once_the_gate_opens() -> None:
    # A channel behind on its own, whose progress came while the buffer was over a
    # quarter full, is looked at when the gate opens, whichever channel progressed then.
    filled = [0.0]
    behind = {"a": 0, "b": MARK + 1}
    pushback = ChannelPushback(1000, behind.__getitem__, lambda: True, lambda: filled[0])
    b = Channel("b", ChannelRing(100, 1 << 20))
    pushback.routed(b)
    assert b.held and pushback.holds == 1
    filled[0] = 0.6
    pushback.routed(b)
    assert pushback.gate.closed and pushback.holds == 2
    behind["b"] = MARK // 2 + 100  # over half the hold mark: stays held
    filled[0] = 0.2
    pushback.progressed(["a"])
    assert not pushback.gate.closed and b.held
    behind["b"], filled[0] = MARK // 2 - 100, 0.3
    pushback.progressed(["b"])  # caught up while the buffer is over a quarter
    assert b.held
    filled[0] = 0.1
    pushback.progressed(["a"])
    assert not b.held and not pushback.held


def test_an_unreachable_redis_opens_the_gate_and_releases_every_channel() -> None:
    filled, reachable = [0.1], [True]
    behind = {"a": MARK + 1}
    pushback = ChannelPushback(1000, behind.__getitem__, lambda: reachable[0], lambda: filled[0])
    a = Channel("a", ChannelRing(100, 1 << 20))
    pushback.routed(a)
    assert a.held and not pushback.gate.closed
    filled[0] = 0.9
    pushback.routed(a)
    assert pushback.gate.closed
    reachable[0] = False
    pushback.progressed([])
    assert not pushback.gate.closed and not a.held
    pushback.routed(a)  # an outage is not this node being slow: nothing holds
    assert not pushback.gate.closed and not a.held


async def test_an_input_waiting_on_the_gate_goes_on_once_it_opens() -> None:
    filled = [0.6]
    pushback = ChannelPushback(1000, lambda name: 0, lambda: True, lambda: filled[0])
    pushback.routed(Channel("a", ChannelRing(100, 1 << 20)))
    woke: list[float] = []

    async def input_task() -> None:
        await pushback.gate.wait_released()
        woke.append(trio.current_time())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(input_task)
            nursery.start_soon(input_task)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            filled[0] = 0.3
            pushback.progressed(["a"])
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []  # over a quarter: still closed
            filled[0] = 0.1
            pushback.progressed(["a"])
    assert len(woke) == 2
    await pushback.gate.wait_released()  # open: returns at once


def test_pushback_releases_a_channel_whose_last_progress_came_while_the_buffer_was_full() -> None:
    # A channel held for being behind caught up in a progress call that came while the
    # buffer was over a quarter full (other channels' messages): nothing of its own comes
    # again to release it. Found by bench/soak.py --redis single: the channel's inputs
    # stayed held for good with the node caught up on it (behind 0, buffer empty).
    filled = [0.0]
    behind = {"a": 0, "b": 0}
    pushback = ChannelPushback(1000, behind.__getitem__, lambda: True, lambda: filled[0])
    a = Channel("a", ChannelRing(100, 1 << 20))
    behind["a"] = MARK
    pushback.routed(a)
    assert not a.held  # at the mark, not past it
    behind["a"] = MARK + 1
    pushback.routed(a)
    assert a.held
    behind["a"], filled[0] = 0, 0.3
    pushback.progressed(["a"])  # caught up, but the buffer is over a quarter full
    assert a.held
    filled[0] = 0.1
    pushback.progressed(["b"])  # the flush that drained it was another channel's
    assert not a.held and not pushback.held


def test_a_shard_beacon_lies_in_the_slot_it_is_named_for() -> None:
    # APPEND increments it from a script on the shard serving that slot, so the key must
    # hash there (CLUSTER KEYSLOT's rule, ``slot_of``).
    keys = Keys("P")
    for slot in (0, 1, 5461, 10923, 16383):
        assert slot_of(keys.beacon(slot)) == slot
    assert keys.beacon(0) != keys.beacon(1)


# -- the writer's linger after a flush --------------------------------------------------------
def _lingering_plane(routed: list[int], cpu: list[float]) -> DataPlane:
    # Never connects: only its writer's linger runs.
    plane = DataPlane("redis://127.0.0.1:1", node_id="n", keep_messages=1000)
    plane.collect_with(lambda: None, lambda: routed[0])
    plane.writer.cpu_clock = lambda: cpu[0]
    return plane


async def test_a_flush_linger_ends_once_a_look_finds_the_node_quiet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The first look finds nothing routed; the CPU clock is read over the second.
    writer = _lingering_plane([7], [0.0]).writer
    started = trio.current_time()
    await writer.linger(0.05)
    assert trio.current_time() - started == pytest.approx(2 * look_interval(0.05))
    assert writer.quiet_flushes == 1


async def _linger_beside(plane: DataPlane, step: Callable[[], None], every: float) -> float:
    """How long the writer's linger of 0.05 s lasted while another task calls ``step``
    every ``every`` seconds."""

    async def other() -> None:
        while True:
            step()
            await trio.sleep(every)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        started = trio.current_time()
        await plane.writer.linger(0.05)
        nursery.cancel_scope.cancel()
    return trio.current_time() - started


async def test_a_flush_linger_lasts_while_messages_are_routed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    routed = [0]
    plane = _lingering_plane(routed, [0.0])

    def ingest() -> None:
        routed[0] += 1

    assert await _linger_beside(plane, ingest, 0.001) == pytest.approx(0.05)
    assert plane.writer.quiet_flushes == 0


async def test_a_flush_linger_lasts_while_the_event_loop_is_busy_routing_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A drain's round or a long reply: nothing routed, yet the node is not idle.
    cpu = [0.0]
    plane = _lingering_plane([3], cpu)

    def busy() -> None:
        cpu[0] += 1.0  # more than any look's real span

    assert await _linger_beside(plane, busy, 0.0005) == pytest.approx(0.05)
    assert plane.writer.quiet_flushes == 0


async def test_a_flush_linger_without_a_routing_count_is_a_plain_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    writer = DataPlane("redis://127.0.0.1:1", node_id="n", keep_messages=1000).writer
    started = trio.current_time()
    await writer.linger(0.05)
    assert trio.current_time() - started == pytest.approx(0.05)


async def test_a_flush_linger_ends_when_the_pushback_holds_a_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Its inputs now wait for what the writer has: lingering for more only idles them.
    routed = [0]
    plane = _lingering_plane(routed, [0.0])
    plane.link.ok("probe")  # Redis answers: the pushback holds (it never does in an outage)
    channel = Channel("a", ChannelRing(100, 1 << 20))

    async def ingest() -> None:
        # As routing does: 100 messages buffered for the writer, then the pushback asked.
        while True:
            routed[0] += 100
            plane.enqueue("a", b"frames", 100)
            plane.pushback.routed(channel)
            if channel.held:
                return
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        nursery.start_soon(ingest)
        await plane.writer.linger(0.05)
        # Held once more than HOLD_KEEPS x keep waits for the writer: with a keep of 1,000,
        # the routed batch after MARK // 100, a millisecond apart.
        assert channel.held and plane.buffer.queued["a"] == MARK + 100
        assert trio.current_time() - started == pytest.approx(MARK // 100 * 0.001)
    assert plane.writer.quiet_flushes == 0


def test_the_writer_takes_no_flush_sooner_than_its_interval_after_the_last() -> None:
    # A cheap flush (little work) answered at once: it waits out the rest of the interval.
    assert flush_linger(0.0001, 0.001) == pytest.approx(FLUSH_INTERVAL - 0.001)
    # The interval already passed during the round trip: only the adaptive linger is left
    # (here under the millisecond the writer skips).
    assert flush_linger(0.0001, FLUSH_INTERVAL + 0.001) == pytest.approx(0.0001 / ROUND_SHARE)
    # A costly flush lingers for what its work asks, past the interval, up to the cap.
    assert flush_linger(0.004, 0.001) == pytest.approx(0.004 / ROUND_SHARE)
    assert flush_linger(1.0, 0.001) == pytest.approx(0.05)


# -- routing into a node whose outbound buffer is full -----------------------------------------
def _answering_plane(
    buffer: OutboundBuffer, names: tuple[str, ...] = ("a", "b")
) -> tuple[DataPlane, ClusterRegistry]:
    plane = DataPlane("redis://127.0.0.1:1", node_id="n", keep_messages=2048, buffer=buffer)
    plane.link.ok("probe")  # Redis answers: the pushback holds (it never does in an outage)
    registry = ClusterRegistry(plane, 100, 1 << 20, 2048)
    for name in names:
        registry.add_token(name, f"t.{name}", "web")
    return plane, registry


def _route_to(registry: ClusterRegistry, name: str, n: int) -> None:
    registry.route(parse_body(b"".join(frame(f"t.{name}", f"{name}-{i}") for i in range(n)), 10240))


_SMALL = tuple(f"s{i}" for i in range(20))


def test_a_collect_under_the_flush_bound_sends_every_channel_at_once() -> None:
    # 300 + 300 + 20 x 10 = 800 unsent, the buffer takes 750 (three quarters of 1,000).
    buffer = OutboundBuffer(max_messages=1000)
    plane, registry = _answering_plane(buffer, ("big1", "big2", *_SMALL))
    for name in _SMALL[:10]:
        _route_to(registry, name, 10)
    _route_to(registry, "big1", 300)
    _route_to(registry, "big2", 300)
    registry.collect()  # 700: all of it, in the order it was routed
    assert buffer.messages == 700 and set(buffer.queued) == {"big1", "big2", *_SMALL[:10]}


def test_a_saturated_collect_sends_the_fullest_and_leaves_the_few_for_a_later_flush() -> None:
    """Past what a flush takes, a channel with few unsent messages (under an eighth of what
    sends its ring at once, here a stream entry: 64 of 512 with keep 2,048) waits once the
    buffer is a quarter full, so a flush carries fewer, fuller channels; it waits at most
    COLLECT_SKIPS flushes in a row, and goes as soon as everything fits again."""
    buffer = OutboundBuffer(max_messages=1000)
    plane, registry = _answering_plane(buffer, ("big1", "big2", *_SMALL))
    for name in _SMALL:
        _route_to(registry, name, 10)
    for _ in range(COLLECT_SKIPS):
        _route_to(registry, "big1", 300)
        _route_to(registry, "big2", 300)
        registry.collect()  # 800 unsent: the two full channels alone
        assert buffer.messages == 600 and set(buffer.queued) == {"big1", "big2"}
        buffer.take()  # the flush
    _route_to(registry, "big1", 300)
    _route_to(registry, "big2", 300)
    registry.collect()  # they waited COLLECT_SKIPS flushes: they go now, up to 750
    assert buffer.messages == 750 and buffer.dropped == 0
    assert {"big1", "big2"} <= set(buffer.queued) and len(buffer.queued) == 2 + 15
    buffer.take()
    registry.collect()  # the 5 left, 50 messages: everything fits
    assert buffer.messages == 50 and len(buffer.queued) == 5
    assert set(buffer.queued) == set(_SMALL[15:])  # the last routed, left by the bound
    sent = parse_body(b"".join(entry.blob for entry in buffer.take().taken), 10240)
    assert sorted(sent.fields(i)["msg"] for i in range(len(sent)))[:3] == [
        b"s15-0",
        b"s15-1",
        b"s15-2",
    ]


def test_a_saturated_collect_counts_few_by_what_sends_a_ring_at_once_bytes_too() -> None:
    # 20 messages of 4 KB: a staging ring (4 MB) goes at once from 128 of them, so 20 are
    # not few (an eighth: 16); 20 of 100 bytes are (512 go at once: an eighth is 64).
    buffer = OutboundBuffer(max_messages=1000)
    plane, registry = _answering_plane(buffer, ("big1", "big2", "wide", *_SMALL))
    for name in _SMALL:
        _route_to(registry, name, 10)
    registry.route(parse_body(b"".join(frame("t.wide", "w" * 4000) for _ in range(20)), 10240))
    _route_to(registry, "big1", 300)
    _route_to(registry, "big2", 300)
    registry.collect()  # 820 unsent: the two full channels, and the wide one
    assert set(buffer.queued) == {"big1", "big2", "wide"} and buffer.messages == 620


def test_a_saturated_collect_fills_a_quarter_of_the_buffer_before_it_leaves_any_out() -> None:
    names = tuple(f"s{i}" for i in range(100))
    buffer = OutboundBuffer(max_messages=1000)
    plane, registry = _answering_plane(buffer, ("big", *names))
    for name in names:
        _route_to(registry, name, 10)
    _route_to(registry, "big", 100)
    registry.collect()  # 1,100 unsent: the fullest, then the few until a quarter (250)
    assert buffer.messages == 250 and buffer.queued["big"] == 100


def test_routing_while_the_outbound_gate_is_closed_reports_the_gate_alone() -> None:
    plane, registry = _answering_plane(OutboundBuffer(max_messages=100))
    gate = plane.pushback.gate
    a = registry.channel("a")
    assert a is not None
    body = parse_body(b"".join(frame("t.a", f"m{i}") for i in range(10)), 10240)
    assert registry.route(body).held == () and registry.waits_for(a) == ()
    registry.collect()  # 10 of 100: not half full
    assert not gate.closed
    registry.route(parse_body(b"".join(frame("t.b", f"m{i}") for i in range(60)), 10240))
    registry.collect()  # past half full: the gate closes, and no channel is held for it
    assert gate.closed and plane.pushback.holds == 1
    assert not a.held and not plane.pushback.held
    assert registry.route(body).held == (gate,)
    assert registry.route_to(body, a, "t.a").held == (gate,)
    assert registry.waits_for(a) == (gate,)  # POST /logs waits before it routes
    unknown = parse_body(frame("t.nobody", "m"), 10240)
    assert registry.route(unknown).held == ()  # fed nothing: nothing to wait for
    a.hold("drain")
    assert registry.route(body).held == (a, gate)


def test_routing_hands_the_writer_pieces_of_at_most_a_quarter_of_the_outbound_buffer() -> None:
    # Smaller than one stream entry (512 messages with keep 2,048): before, each piece was
    # pushed whole and the buffer dropped it at once.
    for buffer in (OutboundBuffer(max_messages=200), OutboundBuffer(max_bytes=64 * 1024)):
        plane, registry = _answering_plane(buffer)
        messages, nbytes = plane.piece_limits()
        texts = [f"{i:05d}-" + "x" * 100 for i in range(1000)]
        registry.route(parse_body(b"".join(frame("t.a", t) for t in texts), 10240))
        registry.collect()
        assert buffer.dropped == 0 and 0 < buffer.filled() < 1
        pieces = list(buffer._entries)
        assert pieces and all(
            piece.messages <= messages and len(piece.blob) <= buffer.max_bytes // 4
            for piece in pieces
        )
        got = parse_body(b"".join(piece.blob for piece in pieces), 10240)
        sent = [got.fields(i)["msg"] for i in range(len(got))]
        assert sent == [t.encode() for t in texts[: len(sent)]]
        assert nbytes > 0
