"""Following channels' streams into the local rings.

A node reads a channel's stream only while something local needs it: a tail session, a
session or log read that asked for it, an owned drain (``hold``/``release``, reference
counted). What it reads is appended to the channel's ``ChannelRing`` (the one the registry,
sessions and drains already use), so every node's messages reach local readers exactly
once, in stream order. On one Redis all followed streams are read by one blocking ``XREAD``
(a multi-key read is fine on one server). On Redis Cluster a command may not name keys of
two slots, so one blocking read would be needed per followed channel (one connection and
one round trip per channel and read: 1,900 round trips/s idle with 1,000 channels);
instead one reader polls: a pipeline of non-blocking single-key ``XREAD``s, one round trip
per shard, again at once while a stream has more than one read takes, every ``POLL_BUSY``
while it finds entries and every ``POLL_IDLE`` when it found none (that is the added
latency of a cross-node read on a cluster). A follow also keeps the map between ring
positions and stream sequences that drain checkpoints are written in.
"""

from __future__ import annotations

import bisect
import logging
from array import array
from collections.abc import Callable, Iterable
from typing import Any

import trio

from ..native import Batch, ChannelRing, parse_body
from ..router import Channel
from ._history import History
from ._link import (
    CALL_TIMEOUT,
    READ_BLOCK_MS,
    Backoff,
    Connection,
    error_replies,
    redis_errors,
)
from ._stream import (
    MAX_WIRE_FRAME,
    READER_SLACK,
    REPORT,
    TOPS,
    EntryBody,
    KeptRange,
    Keys,
    Malformed,
    Outgoing,
    StreamId,
    decode_entry,
    format_id,
    parse_id,
)

log = logging.getLogger("logplexd.cluster")

# Entries taken per stream per read (each up to ENTRY_MAX_BYTES).
READ_COUNT = 64
# Entries taken per read across every stream it names: the per-stream count shrinks as more
# streams are followed. With 1,000 busy streams at 64 each one reply was ~800,000 messages
# (~100 MB), and parsing it held the event loop (and every follower) for 6.5 s
# (bench/e2e c8-ch1000-d1-120 in Redis mode).
READ_ENTRIES = 512


def read_count(streams: int) -> int:
    """Entries per stream for one read of ``streams`` streams (``READ_ENTRIES`` in all)."""
    return max(1, min(READ_COUNT, READ_ENTRIES // max(1, streams)))


# Redis Cluster: the reader polls every followed stream this often while it finds entries,
# this often when the last poll found none, and this often once none found anything for
# QUIET_AFTER (two commands per shard each time: 3 shards at POLL_QUIET is 24 commands/s,
# within issue 21's 50 per idle node; the first entry after a quiet spell waits that long).
POLL_BUSY = 0.02
POLL_IDLE = 0.1
POLL_QUIET = 0.25
QUIET_AFTER = 2.0
# A poll looks at the top keys only of the shards whose beacon (``APPEND``'s change counter,
# one per shard) moved: an idle poll is one GET per shard however many channels are
# followed. Each poll also looks at this many follows in turn whatever the beacons say,
# so a write the beacons missed (a resharding this node's client has not seen) is found
# within (followed channels / SWEEP_SLICE) polls.
SWEEP_SLICE = 4
# One Redis: a follow added while the blocking read waits is read once that read has waited
# this long (it is ended early, ``CLIENT UNBLOCK``), not a whole READ_BLOCK_MS later. Not
# at once: 10,000 channels provisioned one after the other would each have every stream
# read again; this way at most four times a second, as when the read blocked 250 ms.
NEW_FOLLOW_WAIT = 0.25
# A reader wanting the stream position a follower has not reached waits at most this long.
CATCH_UP_WAIT = 2.0
# A followed channel this node wrote to within this window, and whose stream had no other
# node's entry within it, is "solo": the one blocking read leaves it out (this node's own
# writes would wake that read every time, only for entries the writer appended already,
# ``Followers.own_written``), and it is read without blocking every ``POLL_IDLE`` instead
# (not while this node writes it: ``_read_once``). Another node's entry found there makes it
# read by the blocking read again at once.
SOLO_WINDOW = 1.0
# Entries this node wrote while their follow's channel was held wait in memory (at most
# this many bytes of frames, all follows together) to be appended once it is released,
# instead of being read back from the stream. Past the bound they are read back. (With
# 1,000 busy channels held in turn, 32 MB was too little: reading back cost ~15 % more CPU.)
OWN_WAITING_BYTES = 128 * 1024 * 1024
# While a followed channel is held (its drains would take more than they have been given
# yet, see ``Channel.hold``), the others are read with this short a block, so that the held
# one is read again soon after it is released.
HELD_BLOCK_MS = 10

# A readers' ring holds at least this many of the largest entries its follow appended
# whole. Its consumers hold the channel a quarter of the ring behind (``high_water``) and the
# follow appends no entry while it is held, so a consumer is at most a quarter plus one
# entry behind: half a ring with two. A drain the ring laps anyway (a threaded write of the
# drain pump in flight meanwhile, a receiver that refuses data) reads on from the stream
# (``StreamRefill``); a tail is told by an L11. Four made the rings of 1,000 busy channels
# 2,100-6,000 messages deep after a flood (entries of up to ~1,500), two ~2,048-3,000.
RING_ENTRIES = 2

# How often a node reports how far it has read its followed streams (``REPORT``: the
# writers of every node keep that much in the stream for it, ``APPEND``): positions that
# moved far (``report_step``), at most this often; others that moved, and a held follow's
# unmoved position, again every REPORT_HEARTBEAT.
# An idle follow reports nothing (its position goes stale: it is caught up); a burst from
# another node is read and reported within this interval, so only a burst of more than
# ``keep`` messages (16,384) in it, over 800 k msgs/s on one channel, could outrun it.
REPORT_INTERVAL = 0.02
REPORT_HEARTBEAT = 0.5


def report_due(
    last: tuple[int, float] | None, position: int, now: float, step: int, behind: bool
) -> bool:
    """Whether a position reported as ``last`` (position, when; None: never) is reported
    again at ``now``: it moved by ``step`` or more, or REPORT_HEARTBEAT has passed since and
    it moved at all or is ``behind`` (its report must not go stale while it is)."""
    return (
        last is None
        or abs(position - last[0]) >= step
        or (now - last[1] >= REPORT_HEARTBEAT and (last[0] != position or behind))
    )


LossCallback = Callable[[str, int, float], None]


class Follow:
    """One followed channel: where its stream was read up to, and ring <-> stream positions.

    ``heads[k]`` is the ring head after the ``k``-th run of entries that followed each other
    without a gap was appended, and ``seqs[k]`` the stream sequence of that run's last
    message: a position inside a run maps linearly.
    """

    __slots__ = (
        "name",
        "key",
        "channel",
        "refs",
        "last",
        "last_seq",
        "start_head",
        "start_seq",
        "heads",
        "seqs",
        "advanced",
        "resolved",
        "own_at",
        "foreign_at",
        "written_through",
        "waiting",
        "own_due",
        "shard",
        "map_messages",
        "delivered",
        "_last_text",
        "_last_text_of",
    )

    def __init__(
        self,
        name: str,
        key: str,
        channel: Channel,
        after: StreamId | None,
        map_messages: int = 0,
    ) -> None:
        self.name = name
        self.key = key
        self.channel = channel
        self.refs = 0
        # None: start at the present once Redis answers (held while it was unreachable).
        self.resolved = after is not None
        self.last: StreamId = after if after is not None else (0, 0)
        self.last_seq = self.last[0]
        self.start_head = channel.ring.head
        self.start_seq = self.last_seq
        # Machine integers (16 bytes a point, not ~72 as Python ints in a list): one per
        # run of entries that follow each other without a gap (``append``), so at most one
        # per message of the last ``map_messages`` (or of the ring, if deeper) when every
        # message came after a gap. Kept past the ring's tail for as far back as the stream
        # keeps for a drain (READER_SLACK x keep): a drain the ring lapped reads on from
        # the stream (``StreamRefill``).
        self.map_messages = map_messages
        self.heads = array("q")
        self.seqs = array("q")
        # Set when the follow reads further, made only while a reader waits for that
        # (``wait_reached``): 1,000 busy channels append 1,000 times a flush.
        self.advanced: trio.Event | None = None
        # When this node last wrote entries here (``Followers.own_written``), when the
        # follower last read another node's entry, and the sequence through which this
        # node wrote the stream.
        self.own_at = -float("inf")
        self.foreign_at = -float("inf")
        self.written_through = 0
        # This node's entries written while the channel was held, not appended yet: runs
        # of consecutive entries, each with the id of the entry before it.
        self.waiting: list[tuple[StreamId, list[tuple[StreamId, Outgoing]]]] = []
        # Until when a read that found this node's own entries, ahead of the writer's
        # reply for them, leaves the follow to that reply (``Followers._apply``): 0, not.
        self.own_due = 0.0
        # Redis Cluster: the node under whose beacon this follow was last polled to its
        # top (None: poll it whatever the beacons say, ``Followers._changed``).
        self.shard: str | None = None
        # How far the slowest drain of the channel running on this node has delivered (the
        # stream sequence of its last settled message; -1: none runs here), kept by the
        # drain leases (``ClusterDrains``): no writer trims the stream past it, up to
        # READER_SLACK x keep behind (``Writer``, ``Followers._report``).
        self.delivered = -1
        self._last_text = ""
        self._last_text_of: StreamId | None = None

    def last_id(self) -> str:
        """``format_id(last)``, kept while ``last`` stays: a blocking read of 10,000 idle
        streams names each of them four times a second."""
        if self._last_text_of is not self.last:
            self._last_text_of = self.last
            self._last_text = format_id(self.last)
        return self._last_text

    def solo(self, now: float) -> bool:
        """Only this node wrote the stream lately and this follow has all of it
        (``SOLO_WINDOW``)."""
        return (
            now - self.own_at < SOLO_WINDOW
            and now - self.foreign_at >= SOLO_WINDOW
            and self.holds_own()
        )

    def holds_own(self) -> bool:
        """Whether every entry this node wrote here is appended, or waits in memory right
        after what is (``waiting``): nothing of its own is left to read from the stream."""
        if self.last_seq >= self.written_through:
            return True
        waiting = self.waiting
        return (
            bool(waiting)
            and waiting[0][0] == self.last
            and waiting[-1][1][-1][0][0] >= self.written_through
        )

    @property
    def ring(self) -> ChannelRing:
        return self.channel.ring

    def valid_messages(self) -> int:
        """Messages of the ring read since this follow began (older ones may have gaps)."""
        ring = self.ring
        return int(ring.head - max(ring.tail, self.start_head))

    def rewind(self) -> None:
        """Redis came back without this channel's stream: read the new one from its start."""
        self.last, self.last_seq = (0, 0), 0
        self.start_head, self.start_seq = int(self.ring.head), 0
        del self.heads[:], self.seqs[:]

    def append(
        self,
        entry_id: StreamId,
        batch: Batch,
        parts: list[KeptRange] | None = None,
        skip: int = 0,
    ) -> int:
        """Append the messages of entry ``entry_id``: ``batch`` but its first ``skip``, or
        every routed range of ``parts`` (one entry may join several); how many."""
        ring = self.ring
        got = 0
        if parts is not None:
            for part in parts:
                got += part.append_to(ring)
        elif len(batch) > skip:
            got = ring.append_batch(batch, skip)
        if got:
            head, seq = int(ring.head), entry_id[0]
            heads, seqs = self.heads, self.seqs
            if heads and head - heads[-1] == seq - seqs[-1]:
                # Right after the last entry, every message of it appended: one line maps
                # both, so the map grows only at a gap (trimmed before this node read it,
                # frames that would not parse), not with every entry.
                heads[-1], seqs[-1] = head, seq
            else:
                heads.append(head)
                seqs.append(seq)
            self.last_seq = seq
        self.last = entry_id
        # Forget positions older than the ring and the stream keep (amortised: in chunks).
        low = min(int(ring.tail), int(ring.head) - self.map_messages)
        if len(self.heads) > 64 and self.heads[32] < low:
            cut = bisect.bisect_left(self.heads, low)
            self.start_head, self.start_seq = self.heads[cut - 1], self.seqs[cut - 1]
            del self.heads[:cut], self.seqs[:cut]
        return got

    def seq_at(self, position: int) -> int:
        """Stream sequence of the last message before ring ``position``."""
        k = bisect.bisect_left(self.heads, position)
        if k == len(self.heads):
            return self.last_seq if self.heads else self.start_seq
        if k == 0 and position <= self.start_head:
            return self.start_seq
        return self.seqs[k] - (self.heads[k] - position)

    def position_after(self, seq: int) -> tuple[int, int]:
        """Ring position of the first message after sequence ``seq``, and how many messages
        between ``seq`` and that position the ring never got (trimmed before reading)."""
        k = bisect.bisect_right(self.seqs, seq)
        if k == len(self.seqs):
            # Past every entry read; with none read yet, what lies before the follow's start
            # was never read here (counted, as the ring would count a lapped reader).
            return int(self.ring.head), 0 if self.seqs else max(0, self.start_seq - seq)
        entry_start = self.heads[k - 1] if k else self.start_head
        entry_first_seq = self.seqs[k] - (self.heads[k] - entry_start) + 1
        if seq + 1 >= entry_first_seq:
            return self.heads[k] - (self.seqs[k] - seq), 0
        return entry_start, entry_first_seq - seq - 1

    # A bounded, best-effort wait (the reader then serves what is there), not a deadline a
    # caller would want to raise on: the bound is the follower's, hence the parameter.
    async def wait_reached(self, seq: int, timeout: float = CATCH_UP_WAIT) -> None:  # noqa: ASYNC109
        with trio.move_on_after(timeout):
            while self.last_seq < seq:
                if self.advanced is None:
                    self.advanced = trio.Event()
                await self.advanced.wait()


class Followers:
    """The followed channels and the task (a lane) reading their streams."""

    def __init__(
        self,
        connection: Connection,
        keys: Keys,
        history: History,
        malformed: Malformed,
        wall_clock: Callable[[], float],
        *,
        report_step: int = 1,
        keep_messages: int = 0,
    ) -> None:
        self.connection = connection
        self.keys = keys
        # How far back a follow maps ring positions to stream sequences (``Follow``).
        self.keep_messages = keep_messages
        # A position that moved at least this far is reported at the next REPORT_INTERVAL;
        # less, only once REPORT_HEARTBEAT has passed (the writers allow 4 x keep: an eighth
        # of keep more or less changes nothing, and 1,000 busy channels are not 50,000
        # reports a second).
        self.report_step = max(1, report_step)
        self.history = history
        self.malformed = malformed
        self.wall_clock = wall_clock
        self._nursery: trio.Nursery | None = None
        self._follows: dict[str, Follow] = {}
        # Set when a follow is added: the cluster reader, idle, polls at once. Cancelled
        # then: a lane's wait for its held channels' release (``_wait_released``).
        self._followed = trio.Event()
        self._released_waits: set[trio.CancelScope] = set()
        # Set when a follow has entries of this node's writer to read from the stream (they
        # could not be appended from the writer): a reader waiting for the next poll of
        # solo follows reads at once.
        self._read_wanted = trio.Event()
        self._next_poll = 0.0
        self._polled_at = -float("inf")  # when the last poll of the solo follows was sent
        # Redis Cluster: each shard's beacon as it was when its follows were last polled,
        # and where the sweep goes on (``_changed``).
        self._beacons: dict[str, bytes | None] = {}
        self._sweep_next = 0
        self._busy = False  # the last poll found entries
        # When a cluster poll last found entries (it polls less often once quiet).
        self._found_at = 0.0
        # Per followed channel, the position last reported and when (``_report``); the
        # channels no longer followed whose report is to be withdrawn.
        self._reported: dict[str, tuple[int, float]] = {}
        self._withdrawn: set[str] = set()
        # Per followed channel with a drain here, its drains' position last reported
        # (``Follow.delivered``, beside the read position, so that no node's writer trims
        # what the drain has yet to deliver; never withdrawn: a report goes stale,
        # DRAIN_STALE_MS), and when.
        self._reported_delivered: dict[str, tuple[int, float]] = {}
        # Followed channels appended to since the last report: the ones it looks at, but
        # for a look at every follow each REPORT_HEARTBEAT (with 1,000 busy channels, a
        # look at each every REPORT_INTERVAL was 2-3 % of the node).
        self._moved: set[str] = set()
        self._lanes: dict[str, trio.CancelScope] = {}
        # Set by the drain leases: messages of a channel that its drains must announce (L10).
        self.on_loss: LossCallback | None = None
        # Set by the drain leases: a channel's stream started over (Redis lost data).
        self.on_rewind: Callable[[str], None] | None = None
        # Set by the data plane: a follow read further (its channel's pushback looks again).
        self.on_applied: Callable[[Follow], None] | None = None
        # A holder whose holds do not pause the follower (the data plane's pushback).
        self.exempt: object | None = None
        # Set by the data plane: whether this node's writer has entries of a channel in a
        # write Redis has not answered yet (``_apply`` leaves them to ``own_written``).
        self.writing: Callable[[str], bool] = lambda name: False
        self.entries_read = 0
        self.messages_read = 0
        # Of those, entries this node wrote itself and appended without reading them back.
        self.entries_own = 0
        # Entries a read carried past this node's own entries of a write not answered yet,
        # and left (the reply appends them): bytes Redis sent for nothing.
        self.entries_early = 0
        # Messages trimmed from a stream before this node read them (announced by L10).
        self.messages_trimmed = 0
        # Bytes of frames in the follows' ``waiting`` runs (``OWN_WAITING_BYTES``).
        self.waiting_bytes = 0
        # Whether every follow knows where it starts (``_resolve``).
        self._resolved_all = True
        # The blocking read waiting now (its number and when it began; None: none), the
        # number of the last one a follow was added during (it does not name it), and set
        # then (``_unblocker``).
        self._blocking: tuple[int, float] | None = None
        self._reads = 0
        self._unblock_read = 0
        self._unblock_wanted = trio.Event()
        # How long the blocking read waits (shorter where Redis refuses ``_unblocker``).
        self.read_block_ms = READ_BLOCK_MS

    def follow_of(self, channel: str) -> Follow | None:
        return self._follows.get(channel)

    def delivered_through(self, channel: str) -> int | None:
        """How far this node's slowest drain of ``channel`` has delivered (None: none runs
        here)."""
        follow = self._follows.get(channel)
        if follow is None or follow.delivered < 0:
            return None
        return follow.delivered

    def read_through(self, channel: str) -> int | None:
        """The sequence this node has read ``channel``'s stream through (None: it does not
        follow it, or does not know yet where it starts)."""
        follow = self._follows.get(channel)
        return follow.last_seq if follow is not None and follow.resolved else None

    def __contains__(self, channel: str) -> bool:
        return channel in self._follows

    @property
    def reads(self) -> int:
        """Blocking reads sent so far (tests)."""
        return self._reads

    @property
    def blocking_read(self) -> bool:
        """Whether the one-Redis blocking read waits now (tests)."""
        return self._blocking is not None

    @property
    def waiting_for_release(self) -> int:
        """Readers waiting for a held channel to be released (tests)."""
        return len(self._released_waits)

    def hold(self, channel: Channel, after: StreamId | None) -> Follow:
        """Follow ``channel``'s stream (from ``after`` unless already followed); release it
        with ``release``. ``after`` None: from whatever is newest once Redis answers."""
        follow = self._follows.get(channel.name)
        if follow is None or follow.channel is not channel:
            follow = Follow(
                channel.name,
                self.keys.stream(channel.name),
                channel,
                after,
                READER_SLACK * self.keep_messages,
            )
            self._follows[channel.name] = follow
            if not follow.resolved:
                self._resolved_all = False
            self._followed.set()
            for scope in self._released_waits:
                scope.cancel()
            if self._blocking is not None:
                self._unblock_read = self._blocking[0]
                self._unblock_wanted.set()
            self._wake_lane(self._lane_of(channel.name))
        follow.refs += 1
        return follow

    def release(self, follow: Follow) -> None:
        follow.refs -= 1
        if follow.refs <= 0 and self._follows.get(follow.name) is follow:
            # Its lane stops reading it at its next read (and ends when it has nothing left).
            del self._follows[follow.name]
            self._drop_waiting(follow)
            if self._reported.pop(follow.name, None) is not None:
                self._withdrawn.add(follow.name)
            # Its drains' report is left to go stale (DRAIN_STALE_MS), as when a drain stops
            # here (``_report``): a drain that stopped (the node stops, its lease moved)
            # resumes elsewhere from its checkpoint, which the stream keeps meanwhile.
            self._reported_delivered.pop(follow.name, None)

    # -- positions -----------------------------------------------------------------------------
    def note_delivered(self, follow: Follow, position: int) -> None:
        """The slowest drain of ``follow``'s channel running here has delivered through
        stream sequence ``position`` (-1: none runs here any more). A drain that began,
        or moved by ``report_step``, is looked at by the next report; any other change
        within a REPORT_HEARTBEAT."""
        before, follow.delivered = follow.delivered, position
        if position >= 0 and (before < 0 or abs(position - before) >= self.report_step):
            self._moved.add(follow.name)

    async def _report(self) -> None:
        """Tell the writers of every node how far this node has read each followed stream,
        and how far its drains of it have delivered (one call per shard), so that none
        trims what this node has not read or delivered yet."""
        errors = redis_errors()
        scan_at = 0.0
        step = self.report_step
        reported, delivered_reported = self._reported, self._reported_delivered
        while True:
            await trio.sleep(REPORT_INTERVAL)
            now = trio.current_time()
            full = now >= scan_at
            if not self._moved and not full and not self._withdrawn:
                continue  # nothing read since the last look: no position moved
            moved, self._moved = self._moved, set()
            follows = self._follows
            if full:
                scan_at = now + REPORT_HEARTBEAT
            parts: dict[str, list[Any]] = {
                name: [self.keys.readers(name), -1, -2] for name in self._withdrawn
            }
            for name in list(follows) if full else moved:
                follow = follows.get(name)
                if follow is None or not follow.resolved:
                    continue
                seq = follow.last_seq
                position = -2
                if report_due(reported.get(name), seq, now, step, self._paused(follow)):
                    position = seq
                delivered = follow.delivered
                shown = -2
                if delivered < 0:
                    # No drain of it runs here (any more): its last report goes stale.
                    delivered_reported.pop(name, None)
                elif report_due(
                    delivered_reported.get(name), delivered, now, step, seq - delivered >= step
                ):
                    shown = delivered
                if position != -2 or shown != -2:
                    parts[name] = [self.keys.readers(name), position, shown]
            if not parts:
                continue
            try:
                with trio.fail_after(CALL_TIMEOUT):
                    await self.connection.call_per_shard(
                        REPORT, (self.connection.node_id,), parts, "follow"
                    )
            except errors as exc:
                log.debug("data plane: read positions not reported: %s", exc)
                self._moved |= moved
                continue
            for name, (_, position, delivered) in parts.items():
                if position == -1:
                    self._withdrawn.discard(name)
                    continue
                if name not in follows:
                    continue
                if position >= 0:
                    reported[name] = (position, now)
                if delivered >= 0:
                    delivered_reported[name] = (delivered, now)

    # -- the lanes ------------------------------------------------------------------------------
    def start(self, nursery: trio.Nursery) -> None:
        """Read in ``nursery`` from now on (the data plane's ``run``), what is held already
        too."""
        self._nursery = nursery
        nursery.start_soon(self._report)
        nursery.start_soon(self._unblocker)
        for lane in {self._lane_of(name) for name in self._follows}:
            self._wake_lane(lane)

    def stop(self) -> None:
        self._nursery = None

    async def _unblocker(self) -> None:
        """End the blocking read early once a follow it does not name was added, when it
        has waited NEW_FOLLOW_WAIT (the lane then reads every follow again)."""
        errors = redis_errors()
        refused = error_replies()
        while True:
            await self._unblock_wanted.wait()
            self._unblock_wanted = trio.Event()
            blocking = self._blocking
            if blocking is None or blocking[0] != self._unblock_read:
                continue  # it ended meanwhile: the next read names the new follow
            await trio.sleep_until(blocking[1] + NEW_FOLLOW_WAIT)
            if self._blocking != blocking:
                continue
            try:
                with trio.fail_after(CALL_TIMEOUT):
                    await self.connection.unblock_read()
            except refused as exc:
                # An ACL without CLIENT UNBLOCK (@admin): the reads block as long as a new
                # follow may wait, as they did before it ended them.
                self.read_block_ms = int(NEW_FOLLOW_WAIT * 1000)
                log.warning(
                    "data plane: Redis refused CLIENT UNBLOCK (%s): the followers' blocking "
                    "read waits %d ms at most",
                    exc,
                    self.read_block_ms,
                )
                return
            except errors as exc:
                # The read still ends when its block runs out (READ_BLOCK_MS).
                log.debug("data plane: the blocking read was not ended early: %s", exc)

    def _lane_of(self, channel: str) -> str:
        # One reader for every followed stream (a blocking XREAD, or on a cluster a poll).
        return ""

    def _wake_lane(self, lane: str) -> None:
        # A running lane picks a new follow up at its next read (the blocking read is ended
        # for it: ``_unblocker``).
        if lane not in self._lanes and self._nursery is not None:
            try:
                self._nursery.start_soon(self._lane, lane)
            except RuntimeError:
                return  # shutting down: nothing more is read
            self._lanes[lane] = trio.CancelScope()

    async def _lane(self, lane: str) -> None:
        connection = self.connection
        errors = redis_errors()
        backoff = Backoff()
        scope = self._lanes[lane]
        failed = False
        try:
            with scope:
                while True:
                    # (``_lane_of`` puts every follow in the one lane: all of them, without
                    # a look at each of 1,000 follows per read.)
                    follows = list(self._follows.values())
                    if not follows:
                        return
                    try:
                        if failed:
                            await self._check_lost_data(follows)
                            failed = False
                        if connection.cluster:
                            await self._poll_once(follows, lane)
                        else:
                            await self._read_once(follows, lane)
                    except errors as exc:
                        connection.link.lost(exc, "lane:" + lane)
                        failed = True
                        self._beacons.clear()  # every follow is polled to its top again
                        await connection.back_off(backoff)
                        continue
                    backoff.reset()
        finally:
            self._lanes.pop(lane, None)
            connection.link.ok("lane:" + lane)

    async def _check_lost_data(self, follows: list[Follow]) -> None:
        """After a lost connection: a channel whose sequence is now below what was read
        means Redis came back without its data (restarted without persistence, failed over
        to a stale replica). Its followers start over, or they would wait for ids the new
        stream reaches only much later."""
        connection = self.connection
        with trio.fail_after(CALL_TIMEOUT):
            async with connection.client.pipeline(transaction=False) as pipe:
                replies = [(f, pipe.get(self.keys.sequence(f.name))) for f in follows]
        connection.count_trip("other", connection.servers_of(f.name for f in follows))
        for follow, reply in replies:
            value = await reply
            if int(value or 0) < follow.last_seq:
                log.warning(
                    "data plane: the stream of %s went back from message %d to %d "
                    "(Redis lost data); following it from its start",
                    follow.name,
                    follow.last_seq,
                    int(value or 0),
                )
                follow.rewind()
                self._drop_waiting(follow)  # written to the stream Redis lost
                follow.written_through = 0
                if self.on_rewind is not None:
                    self.on_rewind(follow.name)

    async def _resolve(self, follows: list[Follow]) -> None:
        """Start each follow made without a position at its stream's newest entry. Most
        reads find every follow resolved: that is known without a look at each."""
        if self._resolved_all:
            return
        self._resolved_all = True  # a follow ``hold`` makes meanwhile clears it again
        try:
            for follow in follows:
                if not follow.resolved:
                    top = await self.history.top(follow.name)
                    follow.last, follow.last_seq, follow.start_seq = top, top[0], top[0]
                    follow.resolved = True
        except BaseException:
            self._resolved_all = False
            raise

    async def _poll_once(self, follows: list[Follow], lane: str) -> None:
        """Redis Cluster: the beacon of every shard (``_changed``), then the newest entry
        id of the follows on shards whose beacon moved (one script call per shard), then
        one non-blocking read of each stream whose newest entry this node has not read,
        pipelined (one round trip per shard); then wait ``POLL_BUSY``, or ``POLL_IDLE``
        (``POLL_QUIET`` once nothing was found for ``QUIET_AFTER``)."""
        connection = self.connection
        await self._resolve(follows)
        self._followed = trio.Event()
        for follow in follows:
            if follow.waiting:
                self._take_waiting(follow)
        held = [f for f in follows if self._paused(f)]
        if held:
            for follow in held:
                follow.shard = None  # written meanwhile: polled to its top once released
            follows = [f for f in follows if not self._paused(f)]
            if not follows:
                await self._wait_released(held)
                return
        now = trio.current_time()
        self._leave_to_writer(follows, now)
        if any(f.own_due > now for f in follows):
            for follow in follows:
                if follow.own_due > now:
                    follow.shard = None  # polled to its top once the writer has answered
            follows = [f for f in follows if f.own_due <= now]
            if not follows:
                await trio.sleep(POLL_BUSY)
                return
        polled, seen, shard_of = await self._changed(follows)
        tops: dict[str, Any] = {}
        if polled:
            with trio.fail_after(CALL_TIMEOUT):
                tops = await connection.call_per_shard(
                    TOPS, (), {f.name: [self.keys.top(f.name)] for f in polled}, "follow"
                )
        self._beacons.update(seen)
        for follow in polled:
            follow.shard = shard_of.get(follow.name)
        moved = [f for f in polled if _moved(f, tops[f.name])]
        busy = full = False
        if moved:
            count = read_count(len(moved))
            with trio.fail_after(CALL_TIMEOUT):
                async with connection.client.pipeline(transaction=False) as pipe:
                    replies = [(f, pipe.xread({f.key: f.last_id()}, count=count)) for f in moved]
            connection.count_trip("follow", connection.servers_of(f.name for f in moved))
            for follow, reply in replies:
                found = await reply
                if found and self._follows.get(follow.name) is follow:
                    for entries in found.values():
                        self._apply(follow, entries)
                        busy = True
                        full = full or len(entries) >= count
                if _moved(follow, tops[follow.name]):
                    # Not read to the top it had (a read's count, or held part way): its
                    # beacon may not move again, so it is polled to its top next time.
                    follow.shard = None
        connection.link.ok("lane:" + lane)
        now = trio.current_time()
        self._busy = busy
        if busy:
            self._found_at = now
        if full:
            # A stream had more than one read takes: no pause, or a busy channel would
            # fall behind its trimming.
            await trio.lowlevel.checkpoint()
        elif busy:
            await trio.sleep(POLL_BUSY)
        else:
            quiet = now - self._found_at >= QUIET_AFTER
            with trio.move_on_after(POLL_QUIET if quiet else POLL_IDLE):
                await self._followed.wait()

    async def _changed(
        self, follows: list[Follow]
    ) -> tuple[list[Follow], dict[str, bytes | None], dict[str, str | None]]:
        """Which of ``follows`` to poll to their top. After a poll that found entries, all.
        Else those of a shard whose beacon moved since its follows were last polled (or was
        never seen), those polled last under another shard or marked to be (``Follow.shard``
        None), those called alone or on a shard with no beacon, and ``SWEEP_SLICE`` more in
        turn; one GET per shard, pipelined. Returns them, the beacons read (recorded once
        the poll succeeded) and each follow's shard."""
        connection = self.connection
        if self._busy:
            # The last poll found entries: the beacons have surely moved, and asking them
            # would cost a round trip more per poll under load. Every follow is polled.
            self._beacons.clear()
            return follows, {}, {}
        by_node = connection.shards(f.name for f in follows)
        beacons = {node: connection.beacon(node) for node in by_node if node is not None}
        keys = {node: key for node, key in beacons.items() if key is not None}
        values: dict[str, bytes | None] = {}
        if keys:
            with trio.fail_after(CALL_TIMEOUT):
                async with connection.client.pipeline(transaction=False) as pipe:
                    replies = {node: pipe.get(key) for node, key in keys.items()}
            connection.count_trip("follow", connection.servers_of_keys(keys.values()))
            for node, reply in replies.items():
                values[node] = await reply
        named = {f.name: f for f in follows}
        shard_of: dict[str, str | None] = {}
        polled: list[Follow] = []
        for shard, names in by_node.items():
            moved = (
                shard is None
                or shard not in keys
                or shard not in self._beacons  # not seen yet
                or self._beacons[shard] != values[shard]
            )
            for name in names:
                follow = named[name]
                shard_of[name] = shard
                if moved or follow.shard != shard:
                    polled.append(follow)
        if len(polled) < len(follows):
            chosen = {id(f) for f in polled}
            start = self._sweep_next % len(follows)
            for j in range(min(SWEEP_SLICE, len(follows))):
                follow = follows[(start + j) % len(follows)]
                if id(follow) not in chosen:
                    polled.append(follow)
            self._sweep_next = start + SWEEP_SLICE
        return polled, values, shard_of

    def _leave_to_writer(self, follows: list[Follow], now: float) -> None:
        """Leave out of this read every follow that has all of its own entries and whose
        channel the writer is writing now (``own_due``, until its reply or failure:
        ``own_written``, ``flushed``). Redis answers a read as soon as the write lands,
        often before the writer has its reply: the read would carry this node's own
        entries, frames and all, only for ``_apply`` to stop before them (with 1,000 busy
        channels a poll of the solo ones read back 13 MB at a time, a tenth to a third of
        every run's messages). Another node's entry before them comes with the reply
        (``own_written``'s ``prev``). A follow with something of its own still to read
        from the stream is read as before (a writer that writes its channel flush after
        flush would otherwise keep it from reading on)."""
        until = now + CALL_TIMEOUT
        for follow in follows:
            self._left_to_writer(follow, now, until)

    def _left_to_writer(self, follow: Follow, now: float, until: float) -> bool:
        """``_leave_to_writer`` for one follow (left until ``until``): whether it waits for
        the writer's reply now."""
        if follow.own_due <= now and follow.holds_own() and self.writing(follow.name):
            follow.own_due = until
        return follow.own_due > now

    def _paused(self, follow: Follow) -> bool:
        """Whether a consumer of the follow's ring holds its channel: the follower reads it
        no further until released. (The data plane's own hold, ``exempt``, is for the
        inputs: it asks the follower to read on.)"""
        return follow.channel.held_apart_from(self.exempt)

    async def _wait_released(self, held: list[Follow]) -> None:
        """Until one of ``held`` is no longer paused or a follow is added (``hold`` cancels
        the wait then). One held channel, the common case (a busy channel whose drain holds
        it now and then), is waited for in this task: a nursery and two tasks per hold were
        6 % of the daemon (e2e c1-ch1 on Redis)."""
        if self._followed.is_set():
            return
        with trio.CancelScope() as scope:
            self._released_waits.add(scope)
            try:
                if len(held) == 1:
                    await held[0].channel.wait_released_apart_from(self.exempt)
                    return
                async with trio.open_nursery() as nursery:

                    async def released(follow: Follow) -> None:
                        await follow.channel.wait_released_apart_from(self.exempt)
                        nursery.cancel_scope.cancel()

                    for follow in held:
                        nursery.start_soon(released, follow)
            finally:
                self._released_waits.discard(scope)

    async def _read_once(self, follows: list[Follow], lane: str) -> None:
        """One Redis: one blocking read of every followed stream but the solo ones (what
        this node alone writes: its writer appended that already), which are read without
        blocking every ``POLL_IDLE`` with all the others."""
        connection = self.connection
        await self._resolve(follows)
        now = trio.current_time()
        # One pass over the follows (with 1,000 busy channels a pass per question was most
        # of the lane): the held ones are left out, those left to the writer's reply
        # (``_leave_to_writer``) wait for it, the rest are read; ``solo[k]`` says whether
        # ``ready[k]`` is one only this node writes.
        held: list[Follow] = []
        due: list[float] = []
        ready: list[Follow] = []
        solo: list[bool] = []
        until = now + CALL_TIMEOUT
        for follow in follows:
            if follow.waiting:
                self._take_waiting(follow)
            if self._paused(follow):
                held.append(follow)
            elif self._left_to_writer(follow, now, until):
                due.append(follow.own_due)
            else:
                ready.append(follow)
                solo.append(follow.solo(now))
        if held and not due and not ready:
            self._followed = trio.Event()
            await self._wait_released(held)
            return
        if due and not ready:
            # Until a reply wakes a follow of the blocking read, or the next poll
            # (every follow is due: its reply may come without a wake).
            self._read_wanted = trio.Event()
            poll_at = self._next_poll if self._next_poll > now else now + POLL_IDLE
            with trio.move_on_at(min(*due, poll_at)):
                await self._read_wanted.wait()
            return
        follows = ready
        wait = HELD_BLOCK_MS if held or due else self.read_block_ms
        block: int | None = wait
        if any(solo) and now >= self._next_poll:
            self._next_poll = now + POLL_IDLE
            block = None  # every followed stream, without blocking
            # Except the solo follows this node wrote since the last poll: another node's
            # entry that came before such a write was its reply's ``prev`` (``own_written``
            # then reads from the stream at once), and one after it is found by the next
            # write or the next poll (with 1,000 busy channels these reads of streams that
            # had nothing new were ~3 % of the node).
            polled, self._polled_at = self._polled_at, now
            follows = [
                f for f, alone in zip(ready, solo, strict=True) if not (alone and f.own_at > polled)
            ]
            if not follows:
                return
        elif any(solo):
            follows = [f for f, alone in zip(ready, solo, strict=True) if not alone]
            block = min(wait, max(1, int((self._next_poll - now) * 1000)))
            if not follows:
                # Nothing to block on: until the next poll, or a read wanted at once.
                # Woken, the lane waits for a held channel's release, or reads at once
                # what only the stream has (such a follow is not solo: the read that
                # blocks on it returns at once); neither is a poll of the solo ones.
                self._read_wanted = trio.Event()
                with trio.move_on_at(self._next_poll):
                    await self._read_wanted.wait()
                return
        streams = {f.key: f.last_id() for f in follows}
        if block is not None:
            self._reads += 1
            self._blocking = (self._reads, now)
        try:
            with trio.fail_after(READ_BLOCK_MS / 1000 + CALL_TIMEOUT):
                found = await connection.read_streams(streams, read_count(len(streams)), block)
        finally:
            self._blocking = None
        connection.link.ok("lane:" + lane)
        if not found:
            return
        by_key = {f.key: f for f in follows}
        for key, entries in found.items():
            read = by_key.get(key.decode() if isinstance(key, bytes) else key)
            if read is None or self._follows.get(read.name) is not read:
                continue  # released (or replaced) while the read was out
            self._apply(read, entries)

    def own_written(
        self, channel: str, prev: StreamId | None, written: list[tuple[StreamId, Outgoing]]
    ) -> None:
        """This node's writer wrote ``written`` (ids and ``(n, frames, lost, since)``) to
        ``channel``'s stream right after entry ``prev``: a follow that had read exactly up
        to ``prev`` appends them from here instead of reading them back from Redis (the
        stream order is kept: no entry can lie between). Otherwise, or from where its
        channel is held, the follow reads them from the stream as any other node's."""
        follow = self._follows.get(channel)
        if follow is None:
            _release(written)
            return
        # The lane may be asleep until ``own_due``: a follow it left to this reply is read
        # on at once if it is in the blocking read (not solo); a solo one at its next poll
        # (the lane wakes for that: ``_read_once``), not a ``CALL_TIMEOUT`` later.
        left_to_reply = follow.own_due > 0
        follow.own_due = 0.0
        follow.written_through = max(follow.written_through, written[-1][0][0])
        # This node writes the channel: once the follow has it all, its own writes need not
        # wake the blocking read (``solo``), whether these came from here or were read.
        follow.own_at = trio.current_time()
        if prev is not None and follow.resolved:
            waiting = follow.waiting
            if (
                not waiting
                and prev == follow.last
                and not self._paused(follow)
                and _at_hand(written)
            ):
                # Right after what the follow has read, its channel not held: appended now,
                # without going through ``waiting`` (with 1,000 busy channels, every flush).
                self._append_own(follow, written)
                if follow.last < written[-1][0]:
                    # Held part way: the rest waits for the release (or, past the bound,
                    # is read back from the stream).
                    rest = [_without_frames(item) for item in written if item[0] > follow.last]
                    size = _size(rest)
                    if self.waiting_bytes + size <= OWN_WAITING_BYTES:
                        waiting.append((follow.last, rest))
                        self.waiting_bytes += size
                    else:
                        _release(rest)  # read back from the stream
            elif not waiting or waiting[-1][1][-1][0] == prev:
                size = _size(written)
                if self.waiting_bytes + size <= OWN_WAITING_BYTES:
                    waiting.append((prev, [_without_frames(item) for item in written]))
                    self.waiting_bytes += size
                else:
                    self._drop_waiting(follow)  # read back from the stream
                    _release(written)
            else:
                self._drop_waiting(follow)  # not consecutive: read back from the stream
                _release(written)
            self._take_waiting(follow)
        else:
            _release(written)  # read back from the stream
        if follow.last_seq < follow.written_through:
            # The lane takes it: from ``waiting`` once the channel is released (no read),
            # or from the stream at once when it is not waiting right after ``last``.
            self._read_wanted.set()
        elif left_to_reply and not follow.solo(follow.own_at):
            self._read_wanted.set()

    def flushed(self, channels: Iterable[str]) -> None:
        """The writer's write of ``channels`` ended (answered or failed): a follow left to
        its reply (``own_due``) is read again if the reply did not append what it found."""
        for name in channels:
            follow = self._follows.get(name)
            if follow is not None and follow.own_due:
                follow.own_due = 0.0
                self._read_wanted.set()

    def _take_waiting(self, follow: Follow) -> None:
        """Append what of ``follow.waiting`` comes right after what it has read, until its
        channel is held; forget what it read from the stream meanwhile."""
        waiting = follow.waiting
        while waiting:
            prev, written = waiting[0]
            if written[-1][0] <= follow.last:
                self._forget_waiting(waiting.pop(0)[1])  # read from the stream meanwhile
                continue
            if prev != follow.last or self._paused(follow):
                return
            if not _at_hand(written):
                self._drop_waiting(follow)  # read back from the stream
                return
            waiting.pop(0)
            self.waiting_bytes -= _size(written)  # released as they are appended
            self._append_own(follow, written)
            if follow.last < written[-1][0]:
                # Held again part way: the rest waits for the next release.
                rest = [item for item in written if item[0] > follow.last]
                waiting.insert(0, (follow.last, rest))
                self.waiting_bytes += _size(rest)
                return

    def _append_own(self, follow: Follow, written: list[tuple[StreamId, Outgoing]]) -> None:
        read = self.entries_read
        self._append(follow, written, _own_body)
        self.entries_own += self.entries_read - read

    def _forget_waiting(self, written: list[tuple[StreamId, Outgoing]]) -> None:
        self.waiting_bytes -= _size(written)
        _release(written)

    def _drop_waiting(self, follow: Follow) -> None:
        for _, written in follow.waiting:
            self._forget_waiting(written)
        follow.waiting.clear()

    def _apply(self, follow: Follow, entries: Any) -> None:
        """Append ``entries`` (as XREAD gives them) to the follow's ring (``_append``).

        This node's own entries are taken from memory where they can be: first what waits
        there (``waiting``), and a read that reaches entries of a write whose reply the
        writer has not had yet (Redis serves a blocked XREAD as soon as the write lands,
        often before the writer's reply is read) stops before them: the reply follows at
        once and appends them without parsing their frames (``own_written``); the follow
        is read no further until then (``own_due``). Reading them back instead cost a
        one-channel flood of 8 connections a third of its rate whenever the channel had
        been held once (the follow was then in the blocking read for good)."""
        node = self.connection.node_id.encode()
        if follow.waiting:
            self._take_waiting(follow)
        if self.writing(follow.name):
            written_through = follow.written_through
            for k, entry in enumerate(entries):
                if (
                    entry.field_values.get(b"node") == node
                    and parse_id(entry.identifier)[0] > written_through
                ):
                    self.entries_early += len(entries) - k
                    entries = entries[:k]
                    follow.own_due = trio.current_time() + CALL_TIMEOUT
                    break
        for entry in entries:
            if entry.field_values.get(b"node") != node:
                follow.foreign_at = trio.current_time()
                break
        self._append(
            follow, ((parse_id(e.identifier), e.field_values) for e in entries), decode_entry
        )

    def _append(
        self,
        follow: Follow,
        entries: Iterable[tuple[StreamId, Any]],
        decode: Callable[[Any], EntryBody | None],
    ) -> None:
        """Append ``entries`` to the follow's ring, in order, until its channel is held: a
        consumer then has more than it takes at once, and what is left is read again from
        the stream once it is released (the pushback rule of one node, issue 18: the stream
        keeps what a consumer would take instead of the ring lapping it)."""
        lost_total = 0
        since = self.wall_clock()
        appended = 0
        channel = follow.channel
        for entry_id, raw in entries:
            if self._paused(follow):
                break
            if entry_id <= follow.last:
                continue
            body = decode(raw)
            if body is None:
                self.malformed.skipped(follow.name, entry_id)
                follow.append(entry_id, Batch())  # read past it
                continue
            if body.n:
                first = entry_id[0] - body.n + 1
                skip = 0
                if first > follow.last_seq + 1:
                    # Trimmed before this node read it: the stream ids say exactly how many.
                    lost_total += first - follow.last_seq - 1
                    self.messages_trimmed += first - follow.last_seq - 1
                elif first <= follow.last_seq and body.parts is None:
                    # The follow began inside this entry (from a drain's checkpoint, or the
                    # end of its carried backlog): what comes before its start is had.
                    skip = follow.last_seq - first + 1
                _deepen(follow.ring, body.n)
                got = follow.append(entry_id, body.batch, body.parts, skip)
                lost_total += max(0, body.n - skip - got)  # frames that would not parse
                appended += got
                if got:
                    # Its consumers look at their backlog now (and may hold the channel).
                    channel.notify()
            else:
                if body.lost:
                    lost_total += body.lost
                    if body.since is not None:
                        since = min(since, body.since)
                follow.append(entry_id, Batch())
            self.entries_read += 1
        self.messages_read += appended
        self._moved.add(follow.name)
        if lost_total and self.on_loss is not None:
            self.on_loss(follow.name, lost_total, since)
        if self.on_applied is not None:
            self.on_applied(follow)
        event, follow.advanced = follow.advanced, None
        if event is not None:
            event.set()


def _deepen(ring: ChannelRing, entry: int) -> None:
    """Make ``ring`` hold at least ``RING_ENTRIES`` entries of ``entry`` messages before one
    is appended whole (up to its ceiling, ``keep``). A channel of small entries keeps a
    small ring (``redis_ring_messages``)."""
    if RING_ENTRIES * entry > ring.max_messages:
        ring.deepen(RING_ENTRIES * entry)


def _moved(follow: Follow, top: Any) -> bool:
    """Whether a stream has an entry past what ``follow`` read, by its top key's value
    (-1: not known, the shard refused: read it)."""
    if top == -1:
        return True
    if not top:
        return False  # nothing written yet (or only by a node that keeps no top key)
    try:
        return parse_id(top) > follow.last
    except ValueError:
        return True


def _own_body(sent: Outgoing) -> EntryBody:
    if sent.n == 0:
        return EntryBody(0, Batch(), sent.lost, sent.since)
    if sent.kept is not None:
        return EntryBody(sent.n, Batch(), parts=sent.kept)
    return EntryBody(sent.n, parse_body(sent.frames, MAX_WIRE_FRAME))


def _release(written: list[tuple[StreamId, Outgoing]]) -> None:
    """This node's entries ``written`` are appended, or will be read back from the stream:
    where routing kept them may let go of them."""
    for _, sent in written:
        if sent.kept is not None:
            for part in sent.kept:
                part.release()


def _at_hand(written: list[tuple[StreamId, Outgoing]]) -> bool:
    """Whether every one of this node's entries ``written`` can be appended from memory:
    their routed ranges still where routing put them (a staging ring laps, or lets go of
    what waited too long), or their frames."""
    return all(sent.kept is None or all(part.held() for part in sent.kept) for _, sent in written)


def _size(written: list[tuple[StreamId, Outgoing]]) -> int:
    """Bytes an own entry's messages take while waiting (its frames' size, kept or not)."""
    return sum(sent.nbytes for _, sent in written)


def _without_frames(item: tuple[StreamId, Outgoing]) -> tuple[StreamId, Outgoing]:
    """An own entry to keep waiting: with its routed batches kept, not its frames too."""
    entry_id, sent = item
    if sent.kept is None:
        return item
    return entry_id, sent._replace(frames=b"", size=len(sent.frames))
