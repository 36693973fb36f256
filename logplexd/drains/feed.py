"""A drain's view of its channel: a ring cursor, the messages taken but not yet settled, loss.

Sans-IO apart from ``wait_for_data``: the delivery adapters ask for a payload, try to
deliver it, then report the outcome with ``delivered`` or ``dropped``. Nothing is copied per
drain except the one batch being delivered, so a drain's memory is bounded by the batch
size whatever the channel's traffic; a drain that falls behind is lapped by the ring and
the ring reports exactly how many messages it missed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ..backlog import DrainBacklog
from ..native import (
    Batch,
    ChannelRing,
    octet_frames,
    octet_frames_from_ring,
    octet_frames_upto,
    parse_body,
)
from ..router import Channel, Registry, linger_limit

# How often a drain whose channel does not exist (yet, or any more) looks for it again.
CHANNEL_POLL_SECONDS = 1.0


# Only a drain whose last write was smaller than this lingers (see wait_for_data).
LINGER_ONLY_BELOW_BYTES = 64 * 1024

# Messages copied from the ring to the disk backlog per ring read.
SPILL_READ_MESSAGES = 16384
# Frames in a disk backlog were ring frames: never longer than this.
SPILL_MAX_FRAME = 65000


def spill_share(channel: Channel) -> int:
    """Unread messages past which a drain moves its backlog to disk: half of what the
    ring holds, by count or (at the ring's average message size) by bytes, whichever is
    less, so that the ring cannot lap the drain before the copy."""
    ring = channel.ring
    share = ring.max_messages // 2
    held = len(ring)
    # An empty ring says nothing of message sizes: assume the largest frame until it does.
    average = max(1, ring.nbytes // held) if held else SPILL_MAX_FRAME
    share = min(share, ring.max_bytes // 2 // average)
    return max(1, share)


@dataclass(slots=True)
class LossTracker:
    """Messages this drain never delivered (lapped or dropped) since the last L10 went out."""

    count: int = 0
    since: float = 0.0

    def add(self, n: int, now: float) -> None:
        if n <= 0:
            return
        if self.count == 0:
            self.since = now
        self.count += n

    def settle(self, announced: int) -> None:
        # Only what the delivered notice announced is cleared; later losses stay counted.
        self.count = max(0, self.count - announced)


@dataclass(slots=True)
class DrainCounters:
    delivered: int = 0
    dropped: int = 0
    retried: int = 0
    lost: int = 0
    # Times a syslog receiver was judged slow (it took nothing of a pending write for
    # ``slow_write_after``): from then until it catches up it holds no input.
    judged_slow: int = 0
    last_error: str | None = None
    last_error_at: float | None = None


@dataclass(slots=True, eq=False)
class Payload:
    """One write (syslog) or one request body (HTTP), cached so retries send the same bytes."""

    data: bytes
    # Channel messages in ``data``; an L10 frame at its head is not one of them.
    messages: int
    # The count the L10 frame at the head announces (0: no L10 frame).
    loss_announced: int
    # The batch its messages came from and the index just past them. None: they were
    # encoded where they lie in the ring (``ring_span``, the sequences they span; the
    # cursor is already past them) and nothing of them is pending, until
    # ``DrainFeed.keep_unsettled`` takes them as the pending batch.
    batch: Batch | None
    end_index: int
    # HTTP only: the Frame-Id, and how many attempts have been made.
    frame_id: str = ""
    attempts: int = 0
    # HTTP only: a stale keep-alive connection gets one free retry per payload.
    free_retry_used: bool = False
    # Sent again whole as it was (its messages went neither back to be read again nor to
    # the disk backlog, which holds what came after them): ``DrainFeed.keep_unsettled``.
    resent: bool = False
    ring_span: tuple[int, int] | None = None

    @property
    def frames(self) -> int:
        return self.messages + (1 if self.loss_announced else 0)


@dataclass(slots=True)
class Refilled:
    """What a ``RingRefill`` gives a lapped drain: messages the ring let go (``batch``, None
    for none), the ring position to read on from, and how many are gone for good."""

    batch: Batch | None
    cursor: int
    lost: int


class RingRefill(Protocol):
    """Where a drain that its channel's ring lapped reads what the ring let go, instead of
    losing it (Redis mode: the channel's stream, which keeps ``channel_buffer_messages``
    while the ring is a smaller cache; ``cluster.StreamRefill``)."""

    @property
    def reading(self) -> bool:
        """The drain is past the ring's tail: its next messages come from ``take``."""

    @property
    def waiting(self) -> bool:
        """A read for it is under way (the feed has nothing to deliver until then: it is
        kicked when the read is done)."""

    def take(self, cursor: int, ring: ChannelRing) -> Refilled | None:
        """The next messages of a drain at ``cursor``, a position ``ring`` has let go (or
        that ``reading`` says to take from here); None: a read is under way. Without a
        batch, ``reading`` is over: the drain reads the ring from the cursor given."""


Encoder = Callable[[Batch, int, int], tuple[bytes, int, int]]
# (ring, cursor, max_messages, max_bytes) -> (data, count, next_cursor, lost): an encoder
# that reads the ring in place (``syslog_frames_from_ring``).
RingEncoder = Callable[[ChannelRing, int, int, int], tuple[bytes, int, int, int]]
LossNotice = Callable[[int, float, float], bytes]


@dataclass(eq=False)
class DrainFeed:
    registry: Registry
    channel_name: str
    wall_clock: Callable[[], float] = time.time
    channel: Channel | None = None
    cursor: int = 0
    loss: LossTracker = field(default_factory=LossTracker)
    counters: DrainCounters = field(default_factory=DrainCounters)
    # The batch being delivered and the index of its first unsettled message.
    pending: Batch | None = None
    pending_start: int = 0
    # The payload an adapter built and has not settled yet (HTTP retries reuse it).
    cached: Payload | None = None
    # Size of the last payload built: a drain that just sent a big one is busy, not quiet.
    last_payload_bytes: int = 0
    # Called after each payload is settled (delivered or dropped): Redis mode stores the
    # drain's checkpoint from there (cluster/drains.py).
    on_settled: list[Callable[[], None]] = field(default_factory=list)
    # Set by ``begin_flush``: deliver up to this sequence of this channel, then stop.
    _flush_until: tuple[Channel | None, int] | None = None
    _wait_scope: trio.CancelScope | None = None
    # The drain's disk backlog (None: spilling is off, as in Redis mode). While it is
    # ``active`` the drain reads from it; the ring is copied into it (``spill``).
    disk: DrainBacklog | None = None
    # The disk backlog has been written to by this feed (or was active when attached):
    # until then the hot path does not look at it (with 1,000 drains, touching each one's
    # backlog on every write cost ~3 % of the CPU).
    _disk_used: bool = False
    # The pending batch came from the backlog: the backlog sequence of its first message.
    _pending_disk_seq: int | None = None
    # The ring sequence just past the pending batch when it came from the ring.
    _ring_batch_end: int = 0
    # What a previous process lost (only in memory when it ended): announced after the
    # first batch read back from disk, so that batch goes out as it did before (same
    # bytes, same HTTP Frame-Id) and a receiver can drop the duplicate.
    _prior_lost: int = 0
    # Losses of a previous process go out at once, alone if nothing else is to be sent.
    _announce_now: bool = False
    _mirrored: Channel | None = None
    # Where the drain reads what its ring lapped (None: nowhere, it is lost and told by an
    # L10, as on one node without a disk backlog). Given by ``refill_from``.
    _refill: RingRefill | None = None
    # A payload encoded in place whose write the drain's task is finishing, kept by
    # ``keep_unsettled`` without a copy (there is a ``refill``), and the ring position of its
    # first message: read again from there unless it is settled.
    _unsettled: Payload | None = None
    _unsettled_first: int = 0
    # The disk backlog took what came after that payload (its write stalled, the ring let
    # its messages go): should its write fail, it is sent again whole (``_resend``), first.
    _unsettled_past: bool = False
    _resend: Payload | None = None
    # Called for each chunk ``spill`` copies from the ring to the disk backlog, with the
    # ring position of its first message, its backlog sequence and its count: Redis mode
    # maps the backlog to stream sequences from there, for the drain's checkpoint.
    on_spilled: list[Callable[[int, int, int], None]] = field(default_factory=list)
    # The same for a chunk copied from what the ``refill`` gave (the ring had let it go):
    # the index of its first message in the batch the refill gave last, its backlog
    # sequence and its count.
    on_spilled_refill: list[Callable[[int, int, int], None]] = field(default_factory=list)
    # Redis mode, a drain with a disk backlog: called with the loss it owes an L10 for
    # (count, since) wherever one node's ledger would record it (``_record``), so that a
    # start after a kill -9 tells a loss noted after the last checkpoint too
    # (``cluster/_journal.py``).
    on_owed: list[Callable[[int, float], None]] = field(default_factory=list)
    # The receiver left a write unfinished for its patience (judged slow) and has not
    # caught up since: set by the delivery adapter (``note_receiver_slow``).
    receiver_slow: bool = False
    # Called when the receiver is judged slow (the drain's spill task may start).
    on_receiver_slow: list[Callable[[], None]] = field(default_factory=list)
    # Called when a receiver judged slow caught up.
    on_receiver_caught_up: list[Callable[[], None]] = field(default_factory=list)
    _kicked: trio.Event | None = None
    # Part of a batch read from the refill for the disk that the writer's queue had no room
    # for: (the batch, its first message not queued).
    _carry: tuple[Batch, int] | None = None
    # The pending batch was read from the ring (``_ring_batch_end`` is where it ends).
    _pending_ring: bool = False

    def __post_init__(self) -> None:
        # A new drain starts at the channel's present: it never replays history.
        self.channel = self.registry.channel(self.channel_name)
        self.cursor = self.channel.ring.head if self.channel is not None else 0

    def resume_at(self, position: int, first: Batch | None = None) -> None:
        """Read the channel's ring from ``position`` on, after ``first`` if given.

        For a drain that takes over from another node: ``position`` is where its checkpoint
        falls in this node's ring, and ``first`` the messages between the checkpoint and
        that position, read from elsewhere (the channel's stream), which go out first.
        """
        self.cursor = position
        if first is not None and len(first):
            self.pending, self.pending_start, self._pending_ring = first, 0, False

    def refill_from(self, source: RingRefill) -> None:
        """Read what the ring laps from ``source`` instead of losing it (Redis mode: the
        channel's stream, ``cluster.StreamRefill``)."""
        self._refill = source

    @property
    def refill(self) -> RingRefill | None:
        return self._refill

    @property
    def refilling(self) -> bool:
        """The drain reads what its ring let go from the ``refill`` (Redis mode): a spill
        copies that from the refill first (``spill``)."""
        refill, channel = self._refill, self.channel
        if refill is None or channel is None:
            return False
        return self._refilling(refill, channel.ring)

    def _refilling(self, refill: RingRefill, ring: ChannelRing) -> bool:
        """The next messages come from ``refill``: the ring has lapped the cursor, or the
        drain is still reading what it let go."""
        return refill.reading or ring.tail > self.cursor

    # -- the channel --------------------------------------------------------------------
    def current_channel(self) -> Channel | None:
        """Follow the registry: a channel replaced under the same name is read from its start."""
        latest = self.registry.channel(self.channel_name)
        if latest is not None and latest is not self.channel:
            self.channel = latest
            self.cursor = latest.ring.tail
            self.pending = None
            self._unsettled = self._resend = None
            self._carry = None
            self._mirror()
        # A removed channel is kept until its backlog is read; nothing new will arrive in it.
        return self.channel

    @property
    def pending_messages(self) -> int:
        return 0 if self.pending is None else len(self.pending) - self.pending_start

    def _read_limit(self, channel: Channel) -> int:
        head = channel.ring.head
        if self._flush_until is None:
            return head
        flush_channel, flush_head = self._flush_until
        return min(head, flush_head) if flush_channel is channel else self.cursor

    @property
    def backlog(self) -> int:
        """Messages in the channel's ring this drain has not read yet (what it can still get),
        a write being finished of messages not copied out of the ring included."""
        channel = self.channel
        if channel is None:
            return 0
        ring = channel.ring
        start = self._unsettled_first if self._unsettled is not None else self.cursor
        return max(0, ring.head - max(start, ring.tail))

    @property
    def lapped(self) -> int:
        """Messages the ring dropped before this drain read them, not yet counted as lost."""
        channel = self.channel
        if channel is None:
            return 0
        return max(0, channel.ring.tail - self.cursor)

    def has_data(self) -> bool:
        if (
            self.pending_messages > 0
            or self.cached is not None
            or self._unsettled is not None
            or self._resend is not None
        ):
            return True
        if self.owes_notice and self._flush_until is None:
            return True
        refill = self._refill
        if refill is not None and refill.waiting:
            return False
        backlog = self.disk
        if self._disk_used and backlog is not None and backlog.active:
            return backlog.readable
        if self._carry is not None:
            return True
        channel = self.current_channel()
        return channel is not None and self._read_limit(channel) > self.cursor

    # -- waiting ------------------------------------------------------------------------
    async def wait_for_data(self, linger: float = 0.0, linger_messages: int = 0) -> bool:
        """Block until there is something to deliver; False once a flush has nothing left.

        With ``linger``, a small backlog (under ``linger_messages``) waits that long for
        more before it is sent: a drain of a quiet channel then writes a few times a second
        instead of once per routed batch, which is what lets thousands of drains share a core.
        """
        while not self.has_data():
            if self._flush_until is not None:
                return False
            with trio.CancelScope() as self._wait_scope:
                channel = self.channel
                if channel is None or self.registry.channel(self.channel_name) is not channel:
                    await trio.sleep(CHANNEL_POLL_SECONDS)
                else:
                    await channel.wait_appended()
            self._wait_scope = None
        channel = self.channel
        if channel is not None:
            linger_messages = linger_limit(channel.ring, linger_messages)
        if (
            linger > 0
            and self.last_payload_bytes < LINGER_ONLY_BELOW_BYTES
            and self._flush_until is None
            and self.cached is None
            and self.pending_messages == 0
            and self.backlog < linger_messages
            and not self.spilling
        ):
            assert channel is not None
            with trio.CancelScope() as self._wait_scope, trio.move_on_after(linger):
                # A burst ends the wait at once: lingering must never cost a lapped ring
                # nor reach the mark that holds the channel's inputs (``linger_limit``).
                await channel.wait_head(max(self.cursor, channel.ring.tail) + linger_messages)
            self._wait_scope = None
        return True

    async def wait_for(self, event: trio.Event) -> None:
        """Wait for ``event``, or until ``kick`` (the drain pump parks a drain with this)."""
        with trio.CancelScope() as self._wait_scope:
            await event.wait()
        self._wait_scope = None

    def kick(self) -> None:
        """Wake ``wait_for_data`` or ``wait_for`` to look again (flush, removal, URL change),
        and ``wait_kicked`` (a refill's read is done)."""
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        kicked, self._kicked = self._kicked, None
        if kicked is not None:
            kicked.set()

    async def wait_kicked(self) -> None:
        """Until the next ``kick`` (the drain's spill task: one waiter)."""
        kicked = self._kicked = trio.Event()
        await kicked.wait()

    def begin_flush(self) -> None:
        channel = self.current_channel()
        self._flush_until = (channel, channel.ring.head if channel is not None else 0)
        self.kick()

    @property
    def flushing(self) -> bool:
        return self._flush_until is not None

    # -- taking and settling ------------------------------------------------------------
    def _rewind_unsettled(self) -> None:
        """A payload kept by ``keep_unsettled`` without a copy was not settled (its write
        failed): its messages are read again, from the ring or, where it let them go, from
        the ``refill``."""
        payload = self._unsettled
        if payload is not None:
            if self._unsettled_past:
                payload.resent = True
                self._resend = payload
            else:
                self.cursor = min(self.cursor, self._unsettled_first)
            self._unsettled, self._unsettled_past = None, False

    def _take(self, max_messages: int, max_bytes: int) -> bool:
        self._rewind_unsettled()
        if self.pending_messages > 0:
            return True
        self.pending, self._pending_disk_seq, self._pending_ring = None, None, False
        backlog = self.disk
        if self._disk_used and backlog is not None and backlog.active:
            return self._take_disk(backlog)
        if self._carry is not None:
            # The disk is read: what the spill could not queue of its last refill read.
            (self.pending, self.pending_start), self._carry = self._carry, None
            return True
        channel = self.current_channel()
        if channel is None:
            return False
        limit = self._read_limit(channel)
        if limit <= self.cursor:
            return False
        refill = self._refill
        if refill is not None and self._refilling(refill, channel.ring):
            got = refill.take(self.cursor, channel.ring)
            if got is None:
                return False  # kicked once the read is done
            self.cursor = got.cursor
            if got.lost:
                self.loss.add(got.lost, self.wall_clock())
                self.counters.lost += got.lost
            if got.batch is not None and len(got.batch):
                self.pending, self.pending_start = got.batch, 0
                self._record()
                return True
            # Back in the ring (or the stream could not be read: the ring counts the lapped).
            if limit <= self.cursor:
                self._record()
                return False
        batch, cursor, lost = channel.ring.read(
            self.cursor, min(max_messages, limit - self.cursor), max_bytes
        )
        self.cursor = cursor
        if lost:
            self.loss.add(lost, self.wall_clock())
            self.counters.lost += lost
        if len(batch) == 0:
            self._record()
            return False
        self.pending, self.pending_start = batch, 0
        self._ring_batch_end, self._pending_ring = cursor, True
        self._record()
        return True

    def _take_disk(self, backlog: DrainBacklog) -> bool:
        start = backlog.read_seq
        # One record at a time: a batch then has the same bounds in every process, so a
        # batch re-sent after a restart has the same bytes (and HTTP Frame-Id) as before.
        payloads, first, count, lost = backlog.read(1)
        if lost:
            self.loss.add(lost, self.wall_clock())
            self.counters.lost += lost
            # Gone and counted: nothing below the first readable message is owed. The
            # notice goes out now, alone if no message follows (the end of a backlog).
            backlog.ack(first if payloads else backlog.read_seq)
            self._announce_now = True
            self._record()
        if not payloads:
            if self._prior_lost:
                # What the previous process held only in memory came after its backlog:
                # announced once a backlog payload is delivered (``_settle``), or now when
                # none is left to deliver (every chunk it had queued was lost with it).
                self.loss.add(self._prior_lost, self.wall_clock())
                self.counters.lost += self._prior_lost
                self._prior_lost = 0
                self._announce_now = True
                self._record()
            return False
        batch = parse_body(b"".join(payloads), SPILL_MAX_FRAME)
        skip = max(0, start - first)
        if skip >= len(batch):
            backlog.ack(first + count)
            return False
        self.pending, self.pending_start = batch, skip
        self._pending_disk_seq = first
        return True

    def build_payload(
        self,
        encode: Encoder,
        loss_notice: LossNotice,
        *,
        max_messages: int,
        max_bytes: int,
        encode_ring: RingEncoder | None = None,
    ) -> Payload | None:
        """Encode the next messages (up to ``max_bytes``), after an L10 notice if any were lost.

        Returns None when there is nothing deliverable (frames the drain formats cannot
        express are skipped, as the original does). With ``encode_ring``, messages with
        nothing pending before them are encoded where they lie in the ring: the caller
        settles the payload, or calls ``keep_unsettled``, before the ring can move on.
        """
        self.cached = None
        self._rewind_unsettled()
        resend = self._resend
        if resend is not None:
            self._resend = None
            self.cached = resend
            self.last_payload_bytes = len(resend.data)
            return resend
        if encode_ring is not None and self.pending_messages == 0:
            payload = self._payload_in_place(encode_ring, loss_notice, max_messages, max_bytes)
            if payload is not None:
                return payload
        while self._take(max_messages, max_bytes):
            batch, start = self.pending, self.pending_start
            assert batch is not None
            data, n, end = encode(batch, start, max_bytes)
            if n == 0:
                self.pending_start = end
                continue
            return self._payload(loss_notice, data, n, batch, end)
        if self._announce_now and self.loss.count:
            # Nothing to send with it: the notice goes alone.
            return self._payload(loss_notice, b"", 0, Batch(), 0)
        return None

    def _payload(
        self,
        loss_notice: LossNotice,
        data: bytes,
        n: int,
        batch: Batch | None,
        end: int,
        ring_span: tuple[int, int] | None = None,
    ) -> Payload:
        """The payload of ``n`` encoded messages, after an L10 if any were lost (cached)."""
        announced = self.loss.count
        if announced:
            data = loss_notice(announced, self.loss.since, self.wall_clock()) + data
        self.cached = Payload(data, n, announced, batch, end, ring_span=ring_span)
        self.last_payload_bytes = len(data)
        return self.cached

    def _payload_in_place(
        self, encode_ring: RingEncoder, loss_notice: LossNotice, max_messages: int, max_bytes: int
    ) -> Payload | None:
        """``build_payload`` straight from the ring: no batch copied out first (with 1,000
        channels the copy was as costly as the encoding). None: nothing there, or the
        drain reads its disk backlog first (the batch path does that)."""
        backlog = self.disk
        if self._disk_used and backlog is not None and backlog.active:
            return None
        channel = self.current_channel()
        if channel is None:
            return None
        ring = channel.ring
        refill = self._refill
        if refill is not None and self._refilling(refill, ring):
            return None  # lapped: the batch path reads what the ring let go
        limit = self._read_limit(channel)
        self.pending, self._pending_disk_seq = None, None
        while limit > self.cursor:
            start = self.cursor
            data, n, end, lost = encode_ring(
                ring, start, min(max_messages, limit - start), max_bytes
            )
            self.cursor = end
            if lost:
                self.loss.add(lost, self.wall_clock())
                self.counters.lost += lost
            if n == 0:
                self._record()  # passed over: nothing in it to deliver
                continue
            first = start + lost
            if lost:
                self._record(ring_settled=first)
            return self._payload(loss_notice, data, n, None, end, ring_span=(first, end))
        return None

    def keep_unsettled(self, payload: Payload, *, lapped_ok: bool = False) -> int:
        """``payload`` was encoded in place and is not delivered yet (a partial write, an
        error): its messages become the pending batch, as if taken from the ring, so they
        are kept when the ring moves on and are sent again on the next connection. Called
        before anything is routed to the ring after ``build_payload``, unless
        ``lapped_ok`` (the drain pump's threaded writes: the loop routes while the worker
        writes): then those the ring has evicted meanwhile are counted lost, for the next
        L10, and the rest are kept. Returns how many were lost so. With a ``refill`` (Redis
        mode) nothing is copied and none is lost: unless the payload is settled, it is read
        again from where it began, from the ring or, what the ring let go, from the refill;
        a threaded write the ring lapped meanwhile returns how many it had let go all the
        same (the caller gives the connection up: the rest is sent again whole)."""
        span = payload.ring_span
        if payload.batch is not None or span is None or self.channel is None:
            return 0
        first, end = span
        if payload.resent:
            # Its messages are neither in the ring's reach nor on the disk: only its bytes.
            self._unsettled, self._unsettled_first, self._unsettled_past = payload, first, True
            return 0
        ring = self.channel.ring
        # The disk backlog went active while it was written (``spill``: only from the
        # cursor, past the payload): should it fail, it is sent again whole, first.
        past = self._refill is not None and self.spilling
        if lapped_ok and self._refill is not None and first < ring.tail and not past:
            self.cursor = first
            payload.batch, payload.end_index = Batch(), 0
            self.pending, self.pending_start, self._pending_disk_seq = None, 0, None
            self._record()
            return int(ring.tail) - first
        if self._refill is not None:
            # Nothing copied: should the write fail, its messages are read again, from the
            # ring or (what it let go meanwhile) from the refill. A flush of a Redis-mode
            # node lands at once and its first write is often partial: the copy was made
            # for most messages (9.0 M of 10 M at 1.5 M msgs/s on one channel).
            self._unsettled, self._unsettled_first, self._unsettled_past = payload, first, past
            return 0
        kept = end - max(first, ring.tail) if lapped_ok else end - first
        if kept > 0:
            batch, cursor, lost = ring.read(first, kept, 1 << 62)
        else:  # all of them evicted meanwhile
            batch, cursor, lost = Batch(), end, end - first
        if cursor != end or (lost and not lapped_ok):
            raise RuntimeError("keep_unsettled: the ring moved since the payload was built")
        if lost:
            self.loss.add(lost, self.wall_clock())
            self.counters.lost += lost
        payload.batch, payload.end_index = batch, len(batch)
        self.pending, self.pending_start, self._pending_disk_seq = batch, 0, None
        self._ring_batch_end, self._pending_ring = end, True
        self._record()
        return lost

    def _copy_unsettled(self, ring: ChannelRing) -> None:
        """The payload ``keep_unsettled`` kept without a copy becomes the pending batch,
        copied from the ring (all of it is still there: else the spill goes past it)."""
        payload, first = self._unsettled, self._unsettled_first
        assert payload is not None and payload.ring_span is not None
        end = payload.ring_span[1]
        batch, cursor, lost = ring.read(first, end - first, 1 << 62)
        if cursor != end or lost:
            raise RuntimeError("spill: the ring moved under a write being finished")
        self._unsettled = None
        payload.batch, payload.end_index = batch, len(batch)
        self.pending, self.pending_start, self._pending_disk_seq = batch, 0, None
        self._ring_batch_end, self._pending_ring = end, True

    def _settle(self, payload: Payload) -> None:
        if self._unsettled is payload:
            self._unsettled = None
        if payload.batch is not None and self.pending is payload.batch:
            self.pending_start = max(self.pending_start, payload.end_index)
            backlog = self.disk
            if backlog is not None and self._pending_disk_seq is not None:
                backlog.ack(self._pending_disk_seq + payload.end_index)
                if self._prior_lost:
                    self.loss.add(self._prior_lost, self.wall_clock())
                    self.counters.lost += self._prior_lost
                    self._prior_lost = 0
                    self._announce_now = True
        if self.cached is payload:
            self.cached = None

    def delivered(self, payload: Payload) -> None:
        self._settle(payload)
        self.counters.delivered += payload.messages
        self.loss.settle(payload.loss_announced)
        if self.loss.count == 0:
            self._announce_now = False
        self._record()
        for hook in self.on_settled:
            hook()

    def dropped(self, payload: Payload) -> None:
        """The payload is given up: its messages are counted, and announced by the next L10."""
        self._settle(payload)
        self.counters.dropped += payload.messages
        self.loss.add(payload.messages, self.wall_clock())
        self._record()
        for hook in self.on_settled:
            hook()

    def note_lost(self, count: int, since: float) -> None:
        """Messages lost before they reached this drain's ring (Redis mode: trimmed from the
        channel's stream, or dropped by a node's outbound buffer): counted, and announced
        now, by an L10 notice alone if nothing else comes (a loss can be the last thing
        that happened on a channel: left for the next message, it went untold)."""
        self.loss.add(count, since)
        self.counters.lost += count
        self._announce_now = True
        self._record()
        self.kick()

    def note_receiver_slow(self, slow: bool) -> None:
        """The delivery adapter judged the receiver slow (True), or it caught up (False)."""
        was, self.receiver_slow = self.receiver_slow, slow
        if slow != was:
            for hook in self.on_receiver_slow if slow else self.on_receiver_caught_up:
                hook()

    def drop_unsettled_write(self) -> None:
        """The connection that was writing the payload ``keep_unsettled`` kept without a
        copy is gone (the drain failed): it will be read again from its first message, so
        nothing after it may go to the disk before it."""
        self._rewind_unsettled()

    def note_error(self, message: str) -> None:
        self.counters.last_error = message
        self.counters.last_error_at = self.wall_clock()

    # -- the disk backlog ---------------------------------------------------------------
    def attach_backlog(self, backlog: DrainBacklog) -> None:
        """Spill to ``backlog`` past the in-memory share; read back what it holds first."""
        self.disk = backlog
        self._disk_used = backlog.active
        backlog.on_written = self.kick
        self._mirror()
        if backlog.prior_lost:
            if backlog.active:
                self._prior_lost = backlog.prior_lost
            else:
                self.note_lost(backlog.prior_lost, self.wall_clock())
                self._announce_now = True
            backlog.prior_lost = 0
        self._record()

    def detach_backlog(self) -> DrainBacklog | None:
        backlog, self.disk = self.disk, None
        if backlog is not None:
            backlog.on_written = None
            self._unmirror(backlog)
        return backlog

    def _mirror(self) -> None:
        """Have the channel's ring write its head into the ledger (kill -9 accounting)."""
        backlog, channel = self.disk, self.channel
        if backlog is None or channel is None or channel is self._mirrored:
            return
        if backlog.store.ephemeral:
            return  # Redis mode: a restart resumes from the checkpoint, not from here
        self._unmirror(backlog)
        channel.ring.mirror_head(backlog.store.ledger.channel_head(self.channel_name))
        self._mirrored = channel

    def _unmirror(self, backlog: DrainBacklog) -> None:
        channel, self._mirrored = self._mirrored, None
        if channel is not None and backlog.store.ledger.release_channel(self.channel_name):
            channel.ring.mirror_head(None)

    def _record(self, *, ring_settled: int | None = None) -> None:
        """Store in the ledger what a kill -9 now would lose: messages neither delivered nor
        handed to the backlog (from ``ring_settled`` on), and losses not yet announced."""
        backlog = self.disk
        if backlog is None or backlog.closed:
            # Closed (the daemon is ending): its slot says what was settled before, and the
            # next start counts the rest as lost; never fewer than were.
            return
        if backlog.store.ephemeral:
            # Redis mode: the checkpoint is the position, and batches read from the stream
            # have no ring position to store; the loss owed goes to the journal.
            for hook in self.on_owed:
                hook(self.loss.count, self.loss.since)
            return
        entry = backlog.entry
        if ring_settled is not None:
            entry.ring_settled = ring_settled
        elif self.pending is not None and self._pending_disk_seq is None:
            entry.ring_settled = self._ring_batch_end - self.pending_messages
        else:
            entry.ring_settled = self.cursor
        entry.unannounced = self.loss.count
        entry.store()

    @property
    def owes_notice(self) -> bool:
        """An L10 is to go out now, alone if need be (losses of a previous process)."""
        return self._announce_now and self.loss.count > 0

    @property
    def reading_disk(self) -> bool:
        """The batch being delivered was read back from the disk backlog."""
        return self._pending_disk_seq is not None

    @property
    def disk_settled(self) -> int:
        """The backlog sequence just past the last message of the disk backlog that was
        settled (delivered, or dropped and counted); 0 without a backlog."""
        backlog = self.disk
        if backlog is None:
            return 0
        if self._pending_disk_seq is not None:
            return self._pending_disk_seq + self.pending_start
        return backlog.entry.spill_acked

    @property
    def ring_batch_settled(self) -> int | None:
        """While a batch read from the ring is being delivered: the ring position just past
        its last settled message (None: nothing of such a batch is pending)."""
        if self.pending is None or not self._pending_ring or not self.pending_messages:
            return None
        return self._ring_batch_end - self.pending_messages

    @property
    def spilling(self) -> bool:
        return self._disk_used and self.disk is not None and self.disk.active

    def spill(self, *, force: bool = False) -> int:
        """Copy the ring's unread messages to the disk backlog once they pass the drain's
        share (``force``: whatever their number); returns how many were copied.

        Once the backlog is active everything new goes there, in order, until the drain
        has read it all back. Stops early when the writer's queue is full: the ring may
        then lap the drain, which is counted as ever.
        """
        backlog = self.disk
        channel = self.current_channel()
        if backlog is None or channel is None:
            return 0
        ring = channel.ring
        refill = self._refill
        lapped = refill is not None and self._refilling(refill, ring)
        if not lapped and backlog.store.refusing and not force:
            # The disk takes nothing now: the ring keeps what follows (the drain reads the
            # disk to its end, then the ring from here), as it would without a backlog.
            return 0
        if (
            not force
            and not lapped
            and not backlog.active
            and ring.head - max(self.cursor, ring.tail) < spill_share(channel)
        ):
            return 0
        if self._unsettled is not None:
            if self._unsettled_first < ring.tail or self._unsettled_past:
                # A write being finished of messages the ring let go: what follows goes to
                # the disk, and should the write fail, it is sent again whole, first.
                self._unsettled_past = True
            else:
                # Messages left in the ring: they go first, so they are copied out of it as
                # on one node (``keep_unsettled``), not to the disk.
                self._copy_unsettled(ring)
        copied = 0
        if refill is not None and lapped:
            # Lapped (Redis mode): what the ring let go is read from the stream and goes
            # to the disk first, then the ring from where the stream reached it.
            copied = self._spill_refill(refill, backlog, ring)
            if self._refilling(refill, ring):
                return copied
        now = self.wall_clock()
        if (
            not backlog.active
            and self._refill is None
            and self.pending is not None
            and self._pending_disk_seq is None
            and self.pending_messages > 0
        ):
            # (With a ``refill`` the batch stays in memory, delivered before the disk as
            # anything pending is: a restart resumes from the checkpoint, not the disk.)
            # The batch being delivered from the ring goes first, so the disk holds every
            # undelivered message in order; it keeps being delivered from memory, and its
            # delivery acknowledges it on disk too.
            batch, start = self.pending, self.pending_start
            first = backlog.queued_end
            self._disk_used = True
            if not backlog.enqueue(len(batch) - start, octet_frames(batch, start), now):
                return 0
            self._pending_disk_seq = first - start
            backlog.read_seq = backlog.queued_end
        while True:
            # Encoded where the messages lie in the ring: no batch copied out first.
            data, n, cursor, lost = octet_frames_from_ring(
                ring, self.cursor, SPILL_READ_MESSAGES, backlog.store.settings.chunk_bytes
            )
            if lost:
                self.loss.add(lost, now)
                self.counters.lost += lost
            if n == 0:
                self.cursor = cursor
                break
            first = backlog.queued_end
            self._disk_used = True
            if not backlog.enqueue(n, data, now):
                self.cursor = cursor - n
                break
            for hook in self.on_spilled:
                hook(cursor - n, first, n)
            self.cursor = cursor
            copied += n
        self._record()
        if copied:
            self.kick()
        return copied

    def _spill_refill(self, refill: RingRefill, backlog: DrainBacklog, ring: ChannelRing) -> int:
        """Copy what ``refill`` gives (the messages the ring let go, read from the stream) to
        the disk backlog, until it has nothing ready or the drain is back in the ring."""
        copied = self._enqueue_carry(backlog)
        while self._carry is None:
            got = refill.take(self.cursor, ring)
            if got is None:
                break  # a read is under way: ``kick`` says when it is done
            self.cursor = got.cursor
            if got.lost:
                self.loss.add(got.lost, self.wall_clock())
                self.counters.lost += got.lost
            if got.batch is None or not len(got.batch):
                break  # back in the ring
            self._carry = (got.batch, 0)
            copied += self._enqueue_carry(backlog)
        if copied:
            self.kick()
        return copied

    def _enqueue_carry(self, backlog: DrainBacklog) -> int:
        """Queue the batch read from the refill for the disk, in chunks; what the writer's
        queue has no room for stays (``_take`` delivers it once the disk is read, before
        anything else is taken from the refill)."""
        carry = self._carry
        if carry is None:
            return 0
        batch, start = carry
        total, copied = len(batch), 0
        chunk_bytes = backlog.store.settings.chunk_bytes
        now = self.wall_clock()
        while start < total:
            data, n, _ = octet_frames_upto(batch, start, total, chunk_bytes)  # n >= 1
            first = backlog.queued_end
            self._disk_used = True
            if not backlog.enqueue(n, data, now):
                self._carry = (batch, start)
                return copied
            for hook in self.on_spilled_refill:
                hook(start, first, n)
            start += n
            copied += n
        self._carry = None
        return copied

    def spill_rest(self) -> int:
        """At shutdown: move everything undelivered that is only in memory to the backlog
        (a batch taken from the ring and not delivered first: see ``spill``)."""
        if self.disk is None:
            return 0
        return self.spill(force=True)
