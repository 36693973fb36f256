"""The routing index in Redis mode: local ingestion goes to Redis, readers see the stream.

Routing is the same native ``dispatch`` as on one node, but a token points at the channel's
*staging* ring instead of the ring readers use. After each routed batch, what each touched
staging ring received is read back (one native copy), encoded as one octet-counted blob
(one native call) and buffered for the writer: per batch and channel a few Python
operations, never one per message. The readers' ring (``Channel.ring``) is filled by the
stream follower only, so a tail or drain on any node sees every node's messages once, in
stream order.

Routing reports a staging ring only when Python has something to do for it (its
``wake_at``): its first message since it was last sent (it joins the rings the writer
collects), the message that makes it worth sending at once, and every message while its
channel is held (the input must learn that it waits). So with 1,000 channels round-robin a
routed batch costs some Python per channel and flush, not per channel and batch.

The staging ring also is this node's local history of a channel it does not follow: when
Redis is unreachable, history reads fall back to it (``local_history``). A followed
channel's own ring is that history; its staging ring keeps only what is unsent.

With an ``UnsentLedger`` each staging ring mirrors its head into a slot of a file, and the
writer adds what Redis stored of the channel: what the previous process routed and never
wrote (a ``kill -9``) is written as a loss marker when the channel is made again.
"""

from __future__ import annotations

from ..native import Batch, ChannelRing, dispatch, dispatch_to, octet_frames_from_ring
from ..router import Channel, Registry, Releasable, RouteCounts
from ._pushback import STAGING_KEEPS
from ._stream import StreamId
from ._unsent import UnsentLedger, UnsentSlot
from .plane import DataPlane

# Past this share of the outbound buffer, routed messages wait in their staging rings
# instead of going to the buffer: with 1,000 channels the staging rings together hold more
# than the whole buffer, and collecting them at once overflowed it (the buffer drops its
# oldest: lost, with an L10). The writer is then behind on every channel; the pushback
# holds (from half full) keep the staging rings, up to twice what the stream keeps, from
# being lapped. Not while Redis is away: the buffer then takes everything and drops its oldest.
STAGING_WAITS_AT = 0.75
# A staging ring is at least this deep, whatever ``channel_buffer_messages`` is: one routed
# batch (a 128 KB read, a POST body) goes into it whole, and a ring smaller than that lapped
# itself before the writer could take anything (lost, with an L10, at 40 messages a
# channel). Rings grow on demand, so this costs nothing until used.
STAGING_MIN_MESSAGES = 16384
STAGING_MIN_BYTES = 4 * 1024 * 1024
# When the staging rings hold more unsent messages than a flush takes (the writer is the
# bottleneck), a ring with less than this share of what sends it at once (``_send_at``: a
# stream entry, 4,096 messages with the defaults, so 512) is left for a later flush once
# the buffer is COLLECT_FLOOR full, at most COLLECT_SKIPS flushes in a row (like any ring,
# it is sent at once when it reaches ``_send_at``). Each flush then carries fewer, fuller
# channels, and what a flush costs per channel (its command part, reply, settle, append,
# the drains' wake-up and write) is paid less often: with 1,000 busy channels a flush
# carried ~200 messages a channel, now ~460, at 1.21x the rate and 0.87x the CPU
# (bench/RESULTS.md, "Session of 2026-12-06 (thirteenth)"). Under the bound everything
# goes at once, so a node that keeps up delays nothing.
COLLECT_MIN_SHARE = 8
COLLECT_FLOOR = 0.25
COLLECT_SKIPS = 4


class _Staging:
    """The ``owner`` of a staging ring: which channel it is, and what was already sent."""

    __slots__ = ("name", "cursor", "channel", "appended", "skipped", "slot")

    def __init__(self, name: str, slot: UnsentSlot | None = None) -> None:
        self.name = name
        # Where the ring's head and what Redis stored of it are kept across a kill -9.
        self.slot = slot
        self.cursor = 0
        # Flushes in a row that left this ring's few unsent messages for later (``collect``).
        self.skipped = 0
        # The readers' channel (set once it exists): whether a consumer holds it.
        self.channel: Channel | None = None
        # Where the last range this node's follow appended from here ended: what lies
        # before it is no longer needed for that.
        self.appended = 0


class _StagedRange:
    """Messages ``first`` to ``end`` of a staging ring, sent to the writer and kept there
    until this node's follow appends them to the channel's ring once written (a
    ``KeptRange``): one copy, ring to ring, instead of copying them out into a batch to
    keep and then into the ring."""

    __slots__ = ("ring", "first", "end")

    def __init__(self, ring: ChannelRing, first: int, end: int) -> None:
        self.ring = ring
        self.first = first
        self.end = end

    def held(self) -> bool:
        return bool(self.ring.tail <= self.first)

    def append_to(self, ring: ChannelRing) -> int:
        got = int(ring.append_range(self.ring, self.first, self.end))
        self.release()
        return got

    def release(self) -> None:
        # Let go of them at once (what comes before went the same way, or was read back):
        # the staging ring holds what is unsent, or sent and not appended yet. Not while
        # the channel's own ring is empty: the staging ring is then its local history.
        staging = self.ring.owner
        if staging.appended < self.end:
            staging.appended = self.end
            channel = staging.channel
            if channel is not None and len(channel.ring):
                self.ring.discard(min(self.end, staging.cursor))


def _unsent_in(ring: ChannelRing) -> int:
    """Messages a staging ring holds that were not sent to the writer yet."""
    staging = ring.owner
    return int(ring.head - staging.cursor) if isinstance(staging, _Staging) else 0


class ClusterRegistry(Registry):
    def __init__(
        self,
        plane: DataPlane,
        history_messages: int,
        history_bytes: int,
        buffer_messages: int | None = None,
        buffer_bytes: int | None = None,
        *,
        ring_messages: int | None = None,
        ledger: UnsentLedger | None = None,
    ) -> None:
        """``buffer_messages`` is what the stream keeps of a channel (``keep``): the
        staging rings' depth follows it. ``ring_messages`` (``redis_ring_messages``) is
        the depth a readers' ring starts at, a cache of the stream (at least the history,
        at most ``buffer_messages``); the follow deepens it up to ``keep`` to hold two of
        the largest entries it appends (``_deepen`` in ``_follow.py``). A drain it laps
        reads on from the stream (``StreamRefill``)."""
        super().__init__(
            history_messages, history_bytes, buffer_messages, buffer_bytes, self._held_changed
        )
        # ``buffer_messages`` stays ``keep`` (the rings' ceiling, the staging rings' unit).
        self.ring_messages = self.buffer_messages
        if ring_messages is not None:
            self.ring_messages = max(min(ring_messages, self.buffer_messages), history_messages)
        self.plane = plane
        self.staging: dict[str, ChannelRing] = {}
        # Staging rings with unsent messages, left for the writer to collect.
        self._unsent: dict[ChannelRing, None] = {}
        self._piece_limits = plane.piece_limits()
        plane.collect_with(self.collect, lambda: self.totals.routed)
        # An opened ledger (``UnsentLedger.open``): what a kill -9 took is told.
        self.ledger = ledger
        if ledger is not None:
            plane.account_with(self._accounted)

    def _new_ring(self) -> ChannelRing:
        return ChannelRing(self.ring_messages, self.buffer_bytes, self.buffer_messages)

    def ensure_channel(self, name: str) -> Channel:
        if name not in self.staging:
            # It holds what was not sent yet (up to ``HOLD_KEEPS`` x the channel buffer
            # while the pushback holds, ``ChannelPushback``, plus the routed batches that
            # pass the mark) and the newest ``history_messages`` (``local_history``); what
            # is older is let go as it is sent (``_send``). ``STAGING_KEEPS`` x as deep as
            # the channel buffer, and at least one routed batch (one read, one POST body),
            # so nothing is evicted between routing and reading it back; rings grow on
            # demand, so that costs only what is held. Made first: a firehose channel's
            # copies are routed to it (_firehose_ring).
            ring = ChannelRing(
                max(STAGING_KEEPS * self.buffer_messages, STAGING_MIN_MESSAGES),
                max(STAGING_KEEPS * self.buffer_bytes, STAGING_MIN_BYTES),
            )
            ring.owner = _Staging(name, self._ledger_slot(name, ring))
            self.staging[name] = ring
        channel = super().ensure_channel(name)
        ring = self.staging[name]
        ring.owner.channel = channel
        self._rearm(ring)
        return channel

    def _ledger_slot(self, name: str, ring: ChannelRing) -> UnsentSlot | None:
        """The new staging ring's slot in the ledger; what the previous process routed to
        the channel and never wrote goes to the writer as lost (a marker: an L10)."""
        if self.ledger is None:
            return None
        slot, lost, since = self.ledger.slot(name, self.plane.wall_clock())
        if slot is not None:
            ring.mirror_head(slot.head)
        if lost:
            # ``after``: the previous process's last write may be in the stream past it.
            self.plane.lose(name, lost, since, None if slot is None else slot.after)
        return slot

    def _accounted(self, channel: str, messages: int, through: StreamId) -> None:
        ring = self.staging.get(channel)
        if ring is not None and isinstance(ring.owner, _Staging) and ring.owner.slot:
            ring.owner.slot.account(messages, self.plane.wall_clock(), through)

    def _held_changed(self, channel: Channel) -> None:
        ring = self.staging.get(channel.name)
        if ring is not None:
            self._rearm(ring)

    def _rearm(self, ring: ChannelRing) -> None:
        """Set when routing next reports ``ring`` (see the module's docstring)."""
        staging = ring.owner
        channel = staging.channel
        if channel is not None and channel.held:
            ring.wake_at = 0
        elif ring in self._unsent:
            ring.wake_at = staging.cursor + self._send_at(ring)
        else:
            ring.wake_at = ring.head + 1

    def _send_at(self, ring: ChannelRing) -> int:
        """Unsent messages that make ``ring`` go to the writer at once: a stream entry's
        worth (``DataPlane.entry_messages``, a quarter of ``keep``), or fewer that fill an
        eighth of its bytes. A quieter ring waits to be collected with the next flush: one
        read and one encode per channel and flush, not per routed batch (with 1,000
        channels round-robin each syslog read touches most of them with a message or two,
        and sending each per batch starved the follower's reads of the event loop). It was
        256 messages: a busy channel then cost a read, an encode and a buffer entry per 256
        messages, which the flush joined again (bench/RESULTS.md, "Session of
        2026-12-04")."""
        entry = self.plane.entry_messages
        n = len(ring)
        if not n:
            return entry
        return max(1, min(entry, (ring.max_bytes // 8) // max(1, ring.nbytes // n)))

    def drop_channel(self, name: str) -> Channel | None:
        ring = self.staging.pop(name, None)
        if ring is not None:
            self._unsent.pop(ring, None)  # deleted with the channel, as its stream is
            staging = ring.owner
            if self.ledger is not None and isinstance(staging, _Staging) and staging.slot:
                ring.mirror_head(None)
                self.ledger.release(staging.slot)
        dropped = super().drop_channel(name)
        if dropped is not None:
            self.plane.forget(name)
        return dropped

    def add_token(self, channel_name: str, token: str, name: str) -> None:
        super().add_token(channel_name, token, name)
        encoded = self._names[name]
        firehosed = self._firehosed(channel_name, name)
        self.table.add(token.encode(), self.staging[channel_name], encoded, firehosed)

    def _firehose_ring(self, channel: Channel) -> ChannelRing:
        # Copies go through Redis like any routed message: every node's readers see them.
        return self.staging[channel.name]

    def local_history(self, channel: Channel, n: int | None = None) -> Batch:
        """History from what this node holds (Redis unreachable): the followed ring if it
        has anything, else the messages this node ingested itself."""
        limit = self.history_messages if n is None else min(n, self.history_messages)
        if len(channel.ring):
            return channel.ring.last(limit, self.history_bytes)
        staging = self.staging.get(channel.name)
        return staging.last(limit, self.history_bytes) if staging is not None else Batch()

    # -- the hot path --------------------------------------------------------------------
    def route(self, batch: Batch, start: int = 0, *, until_held: bool = True) -> RouteCounts:
        """As on one node (from ``start``), but whole: a channel this batch fed that a
        local consumer holds (its drains would take more than the follower has given them)
        is reported held, so the input waits: the channel's stream then keeps what its
        consumers have not taken. So is the outbound gate while it is closed (the writer is
        behind on every channel, ``OutboundGate``), for a batch that routed anything."""
        routed, unknown, touched = dispatch(batch, self.table, self.firehose, start)
        held: list[Releasable] | None = None
        unsent = self._unsent
        # While Redis is away the writer collects nothing: the outbound buffer (with its
        # bound and its exact loss count) takes every batch at once, as it always did.
        at_once = self.plane.failure is not None
        for ring in touched:
            staging = ring.owner
            if not isinstance(staging, _Staging):
                continue
            if ring.head - staging.cursor >= self._send_at(ring):
                self._send(ring)
            elif ring not in unsent:
                if not unsent:
                    self.plane.wake_writer()
                unsent[ring] = None
                self._rearm(ring)
            channel = staging.channel
            if channel is not None and channel.held:
                if held is None:
                    held = []
                held.append(channel)
        if at_once and unsent:
            self.collect()  # every ring with unsent messages is there
        self.totals.routed += routed
        self.totals.unknown_token += unknown
        gate = self.plane.pushback.gate
        if gate.closed and routed:
            held = [gate] if held is None else [*held, gate]
        return RouteCounts(routed, unknown, () if held is None else tuple(held))

    def route_to(
        self,
        batch: Batch,
        channel: Channel,
        token: str | None = None,
        start: int = 0,
        *,
        until_held: bool = True,
    ) -> RouteCounts:
        """As on one node, but whole, as ``route``: a channel a local consumer holds is
        reported held once the body is routed (its consumers hold the channel, not the
        staging ring)."""
        ring = self.staging.get(channel.name)
        if ring is None:
            return RouteCounts()
        firehose = self.firehose
        if firehose is None:
            routed = dispatch_to(batch, self.table, ring, None, False, start)
        else:
            before = firehose.total
            routed = dispatch_to(
                batch, self.table, ring, firehose, self._token_firehosed(token), start
            )
            if firehose.total != before:
                for copies in firehose.rings:
                    self._send(copies)  # nothing new in one: nothing sent
        if routed:
            self._send(ring)
        self.totals.routed += routed
        return RouteCounts(routed, 0, self.waits_for(channel))

    def waits_for(self, channel: Channel) -> tuple[Releasable, ...]:
        """The channel while a consumer holds it, and the outbound gate while it is closed
        (``OutboundGate``: the buffer is over half full)."""
        gate = self.plane.pushback.gate
        held = super().waits_for(channel)
        return (*held, gate) if gate.closed else held

    def collect(self) -> None:
        """Send the staging rings' unsent messages to the writer (before each flush): all of
        them while they fit in the flush; past that the fullest first, and a ring with
        few (``COLLECT_MIN_SHARE``) waits for a later flush once the buffer holds enough
        for this one (``COLLECT_FLOOR``), at most ``COLLECT_SKIPS`` flushes in a row."""
        unsent, self._unsent = self._unsent, {}
        plane = self.plane
        buffer = plane.buffer
        backlog = {ring: _unsent_in(ring) for ring in unsent}
        room = STAGING_WAITS_AT * buffer.max_messages - buffer.messages
        if plane.failure is not None or sum(backlog.values()) <= room:
            for ring in unsent:
                self._send(ring)
            return
        for ring in sorted(unsent, key=backlog.__getitem__, reverse=True):
            staging = ring.owner
            if (
                isinstance(staging, _Staging)
                and staging.skipped < COLLECT_SKIPS
                and buffer.filled() >= COLLECT_FLOOR
                and 0 < backlog[ring] < self._send_at(ring) // COLLECT_MIN_SHARE
            ):
                staging.skipped += 1
                self._unsent[ring] = None  # its wake_at stays where _rearm set it
                continue
            self._send(ring)

    def _send(self, ring: ChannelRing) -> Channel | None:
        """Buffer what ``ring`` (a staging ring) received for the writer; its channel."""
        self._unsent.pop(ring, None)
        staging = ring.owner
        if not isinstance(staging, _Staging):
            return None
        staging.skipped = 0
        channel = staging.channel
        if ring.head == staging.cursor:
            self._rearm(ring)
            return channel
        if self.plane.failure is None and self.plane.buffer.filled() >= STAGING_WAITS_AT:
            self._unsent[ring] = None  # collected with a later flush
            self._rearm(ring)
            if channel is not None:
                self.plane.pushback.routed(channel)
            return channel
        # In pieces no larger than one stream entry may be, nor than a quarter of the buffer
        # (``DataPlane.piece_limits``), and only until the buffer is STAGING_WAITS_AT full:
        # the rest waits here (one ring holds more than a small buffer, which would drop its
        # oldest to take it all).
        plane = self.plane
        followed = plane.follows(staging.name)
        piece_messages, piece_bytes = self._piece_limits
        while ring.head > staging.cursor:
            if plane.failure is None and plane.buffer.filled() >= STAGING_WAITS_AT:
                self._unsent[ring] = None  # collected with a later flush
                break
            frames, n, staging.cursor, lost = octet_frames_from_ring(
                ring, staging.cursor, piece_messages, piece_bytes
            )
            if lost:
                plane.lose(staging.name, int(lost))
            kept = _StagedRange(ring, staging.cursor - n, staging.cursor) if followed else None
            plane.enqueue(staging.name, frames, n, kept)
        # Sent is kept as local history until the channel's own ring holds anything (it is
        # followed here: ``local_history`` then reads that ring), and for a followed
        # channel until its follow has appended it or read it back (``_StagedRange``; what
        # the ring laps is read back), but not while Redis is away: kept, what is sent
        # during an outage would fill every channel's staging ring while the writer cannot
        # move. A staging ring that keeps only what its follow has yet to take stays as
        # small as a flush or two and warm (with 1,000 followed channels, keeping a whole
        # channel buffer of history doubled the memory the node touched per message).
        history_start = ring.head
        if channel is None or not len(channel.ring):
            history_start -= self.history_messages
        if followed and plane.failure is None:
            history_start = min(history_start, staging.appended)
        if ring.tail < min(staging.cursor, history_start):
            ring.discard(min(staging.cursor, history_start))
        self._rearm(ring)
        if channel is not None:
            self.plane.pushback.routed(channel)
        return channel
