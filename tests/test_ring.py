"""ChannelRing against a plain-Python model: bounds, eviction order, cursors and losses."""

import os
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logplexd.native import ChannelRing, parse_frames
from tests.helpers.syslog import message


def frame(i: int, size: int = 0) -> bytes:
    """Message ``i``, ``size`` bytes longer than the smallest (a ring holds messages)."""
    text = b"msg %d %s" % (i, b"x" * size)
    return message("t.a", text, pri=13, ts="2024-01-01T00:00:00Z", host="host", ps="web.1")


def test_keeps_exactly_max_messages_newest_first_out():
    ring = ChannelRing(5, 1 << 20)
    ring.append_batch(parse_frames([frame(i) for i in range(12)]))
    assert len(ring) == 5
    assert ring.last(100).frames() == [frame(i) for i in range(7, 12)]
    assert ring.last(2).frames() == [frame(10), frame(11)]
    assert (ring.tail, ring.head, ring.evicted) == (7, 12, 7)


def test_append_batch_from_an_index_appends_the_rest_of_the_batch():
    batch = parse_frames([frame(i) for i in range(5)])
    ring = ChannelRing(100, 1 << 20)
    assert ring.append_batch(batch, 3) == 2
    assert [bytes(f) for f in ring.last(10).frames()] == [frame(3), frame(4)]
    assert ring.append_batch(batch, 5) == 0 and ring.append_batch(batch, 9) == 0
    assert len(ring) == 2
    with pytest.raises(ValueError):
        ring.append_batch(batch, -1)


def test_byte_bound_evicts_oldest_and_never_exceeds_it():
    ring = ChannelRing(1000, 4096)
    for i in range(200):
        ring.append_batch(parse_frames([frame(i, size=i % 300)]))
        assert ring.nbytes <= 4096
        assert ring.allocated <= 4096 + 1000 * 64
    held = ring.last(1000).frames()
    assert held == [frame(i, size=i % 300) for i in range(200 - len(held), 200)]


def test_cursor_reads_in_pieces_and_reports_exact_loss():
    ring = ChannelRing(10, 1 << 20)
    ring.append_batch(parse_frames([frame(i) for i in range(4)]))
    batch, cursor, lost = ring.read(0, 3)
    assert batch.frames() == [frame(0), frame(1), frame(2)] and (cursor, lost) == (3, 0)
    ring.append_batch(parse_frames([frame(i) for i in range(4, 30)]))
    batch, cursor, lost = ring.read(cursor, 100)
    # The ring holds 20..29; the reader saw 0..2, so 3..19 (17 messages) were lost.
    assert lost == 17
    assert batch.frames() == [frame(i) for i in range(20, 30)]
    assert ring.read(cursor)[0].frames() == [] and ring.read(cursor)[2] == 0


def test_read_respects_max_bytes_but_returns_at_least_one():
    ring = ChannelRing(10, 1 << 20)
    ring.append_batch(parse_frames([frame(i, size=500) for i in range(3)]))
    batch, cursor, _ = ring.read(0, 10, max_bytes=10)
    assert len(batch) == 1 and cursor == 1
    batch, cursor, _ = ring.read(0, 10, max_bytes=1200)
    assert len(batch) == 2 and cursor == 2


def test_idle_ring_allocates_nothing_and_grows_on_demand():
    ring = ChannelRing(1500, 4 << 20)
    assert ring.allocated == 0
    ring.append_batch(parse_frames([frame(1)]))
    assert 0 < ring.allocated < 4096


def test_message_larger_than_the_byte_bound_is_rejected_and_counted():
    ring = ChannelRing(10, 256)
    ring.append_batch(parse_frames([frame(1, size=400), frame(2)]))
    assert ring.rejected == 1 and ring.last(5).frames() == [frame(2)]


def test_fields_survive_storage():
    ring = ChannelRing(3, 1 << 20)
    ring.append_batch(parse_frames([frame(7)]))
    fields = ring.last(1).fields(0)
    assert fields["app"] == b"t.a" and fields["procid"] == b"web.1" and fields["msg"] == b"msg 7 "


def test_append_range_copies_another_rings_messages_whole_or_refuses():
    source = ChannelRing(4, 1 << 20)
    source.append_batch(parse_frames([frame(i) for i in range(6)]))  # holds 2 to 5
    target = ChannelRing(10, 1 << 20)
    assert target.append_range(source, 3, 5) == 2
    last = target.last(10)
    assert [last.fields(k)["msg"] for k in range(len(last))] == [b"msg 3 ", b"msg 4 "]
    assert last.fields(0)["app"] == b"t.a" and last.fields(0)["procid"] == b"web.1"
    # A range the source no longer holds (lapped), or not yet, or its own messages: refused,
    # nothing appended.
    for start, end in ((1, 3), (4, 7), (5, 4)):
        with pytest.raises(ValueError, match="not in the ring"):
            target.append_range(source, start, end)
    with pytest.raises(ValueError, match="its own"):
        target.append_range(target, 0, 1)
    assert len(target) == 2 and target.append_range(source, 5, 5) == 0


@settings(max_examples=300, deadline=None)
@given(
    max_messages=st.integers(1, 70),
    max_bytes=st.integers(256, 12000),
    script=st.lists(
        st.tuples(st.lists(st.integers(0, 700), max_size=40), st.booleans()), max_size=30
    ),
)
def test_append_range_keeps_what_appending_one_by_one_keeps(max_messages, max_bytes, script):
    """Ranges of a staging ring appended to a readers' ring (Redis mode's own messages): the
    ring holds a suffix of every message appended, byte for byte with its fields, the
    newest always, within both bounds, exactly as many counted evicted as let go, and by
    bytes never less than half its byte bound when it lets one go. (Placing a run of
    messages at once was slower than one by one: bench/RESULTS.md, 2026-12-07 eighth.)"""
    source = ChannelRing(4096, 1 << 22)
    ring = ChannelRing(max_messages, max_bytes)
    model: list[bytes] = []
    for sizes, let_go in script:
        start = source.head
        frames = [frame(len(model) + k, n) for k, n in enumerate(sizes)]
        source.append_batch(parse_frames(frames))
        assert ring.append_range(source, start, source.head) == len(sizes)
        model.extend(frames)
        if let_go:
            source.discard(source.head)  # as the staging ring does once appended
        kept = [p for p in model if len(p) <= max_bytes]
        got = ring.last(max_messages).frames()
        assert got == kept[len(kept) - len(got) :]
        assert ring.head == len(kept) and ring.rejected == len(model) - len(kept)
        assert ring.tail == ring.evicted and len(got) == ring.head - ring.tail
        assert ring.nbytes == sum(map(len, got)) <= max_bytes and len(got) <= max_messages
        if kept:
            assert got and got[-1] == kept[-1]
        if len(got) < min(len(kept), max_messages):
            older = kept[len(kept) - len(got) - 1]
            assert sum(map(len, got)) + len(older) > max_bytes // 2
    last = ring.last(1)
    if len(last):
        assert last.fields(0)["app"] == b"t.a" and last.fields(0)["procid"] == b"web.1"


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(st.integers(0, 700), min_size=1, max_size=8)),
        st.tuples(st.just("read"), st.integers(0, 2), st.integers(1, 9)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
# Up to 70 messages and 12 kB: the slots double in place several times (8 -> 128) and the
# arena grows both in place and by laying payloads out again, wrapped or not.
@given(max_messages=st.integers(1, 70), max_bytes=st.integers(256, 12000), script=ops)
def test_matches_a_deque_model(max_messages, max_bytes, script):
    ring = ChannelRing(max_messages, max_bytes)
    model: deque[tuple[int, bytes]] = deque()  # (seq, payload) the ring must still hold
    head = 0
    cursors = [0, 0, 0]
    for op in script:
        if op[0] == "append":
            for size in op[1]:
                payload = frame(head, size)
                ring.append_batch(parse_frames([payload]))
                if len(payload) <= max_bytes:
                    model.append((head, payload))
                    head += 1
                    # Count bound is exact; the byte bound may evict earlier but never
                    # more than needed to respect it (checked below).
                    while len(model) > max_messages:
                        model.popleft()
        else:
            _, which, limit = op
            batch, nxt, lost = ring.read(cursors[which], limit)
            held = dict(model)
            frames = batch.frames()
            first = cursors[which] + lost
            assert frames == [held[s] for s in range(first, first + len(frames)) if s in held]
            assert nxt == first + len(frames)
            cursors[which] = nxt
        # What the ring holds is a suffix of the model, within both bounds.
        got = ring.last(max_messages).frames()
        suffix = [p for _, p in model][len(model) - len(got) :]
        assert got == suffix
        assert ring.nbytes == sum(map(len, got)) <= max_bytes
        assert len(got) <= max_messages
        # Eviction by bytes only happens when the newest message would not fit otherwise.
        if len(got) < len(model) and got:
            assert sum(map(len, got)) + len(suffix and model[-len(got) - 1][1]) > max_bytes // 2


def test_last_within_bytes_gives_the_newest_that_fit():
    from logplexd.native import parse_frames

    ring = ChannelRing(100, 1 << 20)
    frames = [b"<1>1 - h a - - " + (b"%d" % i) * 10 for i in range(20)]
    ring.append_batch(parse_frames(frames))
    size = len(frames[-1])
    assert ring.last(5, 3 * size).frames() == frames[-3:]
    assert ring.last(2, 3 * size).frames() == frames[-2:]  # n still bounds
    assert ring.last(5, 1).frames() == frames[-1:]  # at least the newest one
    assert ring.last(5, -1).frames() == frames[-5:]


def test_history_is_bounded_by_history_bytes_though_the_buffer_is_deeper():
    from logplexd.native import parse_frames
    from logplexd.router.registry import Registry

    registry = Registry(
        history_messages=1000, history_bytes=4096, buffer_messages=1000, buffer_bytes=1 << 20
    )
    channel = registry.ensure_channel("app")
    frames = [b"<1>1 - h a - - " + b"x" * 500 + b"%d" % i for i in range(100)]
    channel.ring.append_batch(parse_frames(frames))
    # The ring keeps all 100 (52 KB) for its readers; history shows what fits in 4 KB.
    assert len(channel.ring) == 100
    shown = registry.history(channel).frames()
    assert shown == frames[-len(shown) :] and sum(map(len, shown)) <= 4096
    assert len(shown) == 4096 // len(frames[-1])


def test_growing_keeps_every_message_whether_or_not_the_ring_has_wrapped():
    # Young: no eviction yet, so the slots and the arena grow in place (realloc).
    ring = ChannelRing(4096, 4 * 1024 * 1024)
    sent = [frame(i, (i * 37) % 300) for i in range(3000)]
    for payload in sent:
        ring.append_batch(parse_frames([payload]))
    assert ring.evicted == 0 and ring.last(4096).frames() == sent
    # Wrapped: large messages evicted by bytes first (the oldest held is no longer at slot
    # or offset 0), then small ones make the slots double twice and the arena grow.
    ring = ChannelRing(64, 8192)
    big = [frame(i, 900) for i in range(12)]
    small = [frame(100 + i, 0) for i in range(60)]
    for payload in big + small:
        ring.append_batch(parse_frames([payload]))
    held = ring.last(64).frames()
    assert held[-60:] == small
    assert held[:-60] == big[len(big) - (len(held) - 60) :]
    assert ring.nbytes == sum(map(len, held)) <= 8192


def test_reserved_storage_keeps_every_message_as_it_grows_wrapped_or_not():
    # Past its first heap blocks a ring's storage lies in its reservation: young, it grows
    # in place; wrapped with ever larger messages, it is laid out again in place (through a
    # copy). Either way the ring still holds exactly the newest ``max_messages`` in order.
    ring = ChannelRing(300, 8 * 1024 * 1024)
    model: deque[bytes] = deque(maxlen=300)
    for i in range(3000):
        payload = frame(i, 20 + i)  # 20 B to 3 kB: the arena grows from 2 kB to 1 MB
        ring.append_batch(parse_frames([payload]))
        model.append(payload)
        if i % 97 == 0:
            assert ring.last(300).frames() == list(model)
    assert ring.last(300).frames() == list(model) and ring.allocated > 512 * 1024
    young = ChannelRing(100_000, 64 * 1024 * 1024)
    sent = [frame(i, 100) for i in range(20_000)]  # 4 MB of slots and payload, unwrapped
    young.append_batch(parse_frames(sent))
    assert young.evicted == 0 and young.last(100_000).frames() == sent
    batch, cursor, lost = young.read(19_990, 100)
    assert (batch.frames(), cursor, lost) == (sent[19_990:], 20_000, 0)


def test_discard_lets_go_of_what_was_read_and_reuses_the_storage():
    ring = ChannelRing(4096, 4 * 1024 * 1024)
    sent = [frame(i, 100) for i in range(1000)]
    ring.append_batch(parse_frames(sent[:10]))
    assert ring.discard(4) == 4 and ring.tail == 4 and ring.evicted == 0
    assert ring.discard(2) == 0  # already gone
    assert ring.discard(10**9) == 6 and ring.tail == ring.head == 10 and len(ring) == 0
    # A reader from before the discard learns how many it missed, as for an eviction.
    ring.append_batch(parse_frames(sent[10:12]))
    batch, cursor, lost = ring.read(3)
    assert (lost, cursor, batch.frames()) == (7, 12, sent[10:12])
    # Appending and discarding what was read keeps the storage as large as what is held,
    # never as large as the ring may be: it wraps in place.
    ring.discard(ring.head)
    allocated = None
    for i in range(12, 1000, 8):
        ring.append_batch(parse_frames(sent[i : i + 8]))
        got, cursor, lost = ring.read(ring.tail, 100)
        assert not lost and got.frames() == sent[i : i + 8]
        ring.discard(cursor)
        if i == 100:
            allocated = ring.allocated
    assert allocated is not None and ring.allocated == allocated < 64 * 1024


def test_a_young_ring_is_on_the_heap_and_reserves_once_it_outgrows_it():
    ring = ChannelRing(16384, 16 << 20)
    sent = [frame(i, 100) for i in range(9)]
    ring.append_batch(parse_frames(sent[:8]))
    assert ring.reserved_bytes == 0  # eight records: a channel that says little costs little
    ring.append_batch(parse_frames(sent[8:]))
    assert ring.reserved_bytes >= 16 << 20
    assert ring.last(100).frames() == sent


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_reserved_storage_is_resident_only_where_the_ring_wrote():
    rings = [ChannelRing(16384, 16 << 20) for _ in range(200)]
    batch = parse_frames([frame(i, 60) for i in range(60)])  # ~8 kB a ring
    before = _resident_bytes()
    for ring in rings:
        ring.append_batch(batch)
    grown = _resident_bytes() - before
    assert sum(ring.reserved_bytes for ring in rings) >= 200 * (16 << 20)  # 3.2 GB reserved
    assert grown < 200 * 64 * 1024, grown  # what they hold, a few pages each
    assert all(ring.last(100).frames() == batch.frames() for ring in rings)


_REFUSED = """
import resource
from collections import deque
from logplexd.native import ChannelRing, parse_frames
from tests.helpers.syslog import message


def frame(i, size):
    text = b"msg %d %s" % (i, b"x" * size)
    return message("t.a", text, pri=13, ts="2024-01-01T00:00:00Z", host="host", ps="web.1")

# Less address space than one reservation: the ring must grow on the heap instead.
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + (256 << 20), resource.RLIM_INFINITY))
ring = ChannelRing(300, 1 << 30)
model = deque(maxlen=300)
for i in range(3000):
    payload = frame(i, 20 + i)
    ring.append_batch(parse_frames([payload]))
    model.append(payload)
assert ring.reserved_bytes == 0, ring.reserved_bytes
assert ring.last(300).frames() == list(model)
print("heap", ring.allocated)
"""


def test_a_ring_refused_its_reservation_grows_on_the_heap():
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", _REFUSED], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("heap ") and int(out.stdout.split()[1]) > 512 * 1024


def test_a_ring_deepens_up_to_its_ceiling_and_keeps_what_it_holds():
    ring = ChannelRing(4, 1 << 20, 16)
    assert (ring.max_messages, ring.ceiling_messages) == (4, 16)
    ring.append_batch(parse_frames([frame(i) for i in range(6)]))
    assert (ring.tail, ring.head) == (2, 6)  # 4 deep: the oldest two evicted
    assert ring.deepen(10) == 10
    ring.append_batch(parse_frames([frame(i) for i in range(6, 12)]))
    assert (ring.tail, ring.head) == (2, 12)  # 10 held, none evicted
    batch = ring.read(2, 100, 1 << 20)[0]
    assert [bytes(batch.frame(i)) for i in range(len(batch))] == [frame(i) for i in range(2, 12)]
    assert ring.deepen(100) == 16  # at most the ceiling
    assert ring.deepen(3) == 16  # never shallower
    with pytest.raises(ValueError):
        ChannelRing(8, 1 << 20, 4)


def test_under_strict_overcommit_rings_grow_on_the_heap(tmp_path):
    """Strict overcommit (vm.overcommit_memory = 2) counts a reservation whole against the
    commit limit: the daemon then has rings grow on the heap (``fit_overcommit``)."""
    from logplexd.daemon import fit_overcommit, strict_overcommit
    from logplexd.native import reserve_address_space

    assert strict_overcommit("2\n") and not strict_overcommit("0\n")
    assert not strict_overcommit("1")
    setting = tmp_path / "overcommit_memory"
    setting.write_text("0\n")
    assert not fit_overcommit(setting)
    assert not fit_overcommit(tmp_path / "missing")
    setting.write_text("2\n")
    try:
        assert fit_overcommit(setting)
        ring = ChannelRing(1000, 1 << 20)
        ring.append_batch(parse_frames([frame(i, 200) for i in range(500)]))
        assert ring.reserved_bytes == 0 and len(ring) == 500
        assert ring.last(1).frames() == [frame(499, 200)]
    finally:
        reserve_address_space(True)
    ring = ChannelRing(1000, 1 << 20)
    ring.append_batch(parse_frames([frame(i, 200) for i in range(500)]))
    assert ring.reserved_bytes > 0
