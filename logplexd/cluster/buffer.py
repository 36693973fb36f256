"""The outbound buffer between ingestion and Redis: bounded, never blocking, counting loss.

Sans-IO. Ingestion ``push``es one entry per routed batch and channel (the frames already
encoded as one octet-counted blob) and returns at once, whatever Redis is doing. The writer
``take``s everything buffered, sends it in one pipelined round trip, and on failure gives
it back with ``restore`` (in front of anything newer, so order is kept).

When the buffer is over its bound (messages or bytes), the *oldest* entries are dropped
whole and their messages counted per channel: Redis being slow or down must cost the
oldest lines, never block a syslog connection, and the loss must be announced exactly.
``take`` hands those counts over too; the writer turns them into loss markers in the
channel's stream, from which every drain of that channel (on whichever node owns it) sends
the L10 notice with that count.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# Documented defaults (docs/configuration.md: redis_buffer_messages / redis_buffer_bytes).
DEFAULT_MAX_MESSAGES = 200_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# One Redis stream entry holds at most this much: a long outage then becomes a few large
# XADDs per channel instead of one entry that a reader must take in one piece.
ENTRY_MAX_BYTES = 1024 * 1024
# One flush (one round trip) carries at most half of what the buffer may hold (its byte
# bound, as ``size`` counts), so a catch-up after an outage is a series of bounded requests,
# and yet one flush takes a buffer that holds its channels' inputs (half full,
# ``ChannelPushback``) under the quarter that releases them: with an eighth (8 MB of the
# default 64), 1,000 busy channels stayed held through two round trips, the node idle
# while Redis worked (e2e c8-ch1000 on Redis, 1 M messages: 1.30x the rate at 0.79x the CPU
# with half; over 3 M messages even: the gain is in the first million).
FLUSH_SHARE = 2
# And never more than this, whatever the buffer's bound: Redis holds a MULTI's commands in
# memory until EXEC and then runs it whole, every other client waiting meanwhile.
FLUSH_MAX_BYTES = 64 * 1024 * 1024


@dataclass(slots=True)
class Entry:
    """One routed batch of a channel: its frames encoded (``blob``), and, for a channel this
    node follows, the routed batch itself (``kept``: appended to the follow's ring once
    written, without parsing ``blob`` again; it counts as many bytes again)."""

    channel: str
    blob: bytes
    messages: int
    kept: object = None
    # Nonzero: given back by a flush that may have run (``restore(regroup=False)``); joined
    # only with entries of the same group, so that it is sent as the same stream entries.
    group: int = 0

    @property
    def size(self) -> int:
        return len(self.blob) * (1 if self.kept is None else 2)


@dataclass(slots=True)
class Loss:
    """Messages of one channel dropped before reaching Redis, since ``since`` (wall clock).
    ``prior`` of them a previous process routed, and may have written after all past the
    stream entry ``after`` (a write stored, its reply never read: ``UnsentLedger``); the
    writer looks there before it tells them."""

    count: int = 0
    since: float = 0.0
    prior: int = 0
    after: tuple[int, int] | None = None


@dataclass(slots=True)
class Flush:
    """What one round trip writes: per channel the blobs (each at most ENTRY_MAX_BYTES,
    with its message count and the ``kept`` batches it joins, None unless every one was
    kept) and the losses to announce."""

    entries: dict[str, list[tuple[bytes, int, list[object] | None]]] = field(default_factory=dict)
    losses: dict[str, Loss] = field(default_factory=dict)
    messages: int = 0
    nbytes: int = 0
    taken: list[Entry] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.taken or self.losses)


class OutboundBuffer:
    def __init__(
        self, max_messages: int = DEFAULT_MAX_MESSAGES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("the outbound buffer needs room for at least one message")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._entries: deque[Entry] = deque()
        self.messages = 0
        self.nbytes = 0
        self._losses: dict[str, Loss] = {}
        # Messages buffered per channel (what a channel's pushback counts as not written).
        self.queued: dict[str, int] = {}
        # Channels whose entries Redis refused, and until when ``take`` leaves theirs be
        # (monotonic time): in the buffer still, in order, counted, but not taken.
        self._deferred: dict[str, float] = {}
        # Totals since start, for metrics and tests.
        self.pushed = 0
        self.dropped = 0
        self._groups = 0
        # How many times its bounds the buffer may hold before it drops its oldest: 2 from
        # a flush given back with ``slack`` 2 (``restore``) until a take brings it under
        # its bounds again, 1 otherwise.
        self._slack = 1

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries or self._losses)

    def filled(self) -> float:
        """How full the buffer is, 0 to 1: the larger of its messages' and bytes' share."""
        return max(self.messages / self.max_messages, self.nbytes / self.max_bytes)

    def push(
        self, channel: str, blob: bytes, messages: int, now: float, kept: object = None
    ) -> None:
        if messages <= 0:
            return
        entry = Entry(channel, blob, messages, kept)
        self._entries.append(entry)
        self.queued[channel] = self.queued.get(channel, 0) + messages
        self.messages += messages
        self.nbytes += entry.size
        self.pushed += messages
        self._trim(now, self._slack)

    def lose(
        self, channel: str, messages: int, now: float, after: tuple[int, int] | None = None
    ) -> None:
        """Count messages lost before they could even be buffered; with ``after``, messages
        a previous process may have written past that entry (``Loss.prior``)."""
        if messages <= 0:
            return
        loss = self._losses.get(channel)
        if loss is None:
            loss = self._losses[channel] = Loss(0, now)
        loss.count += messages
        loss.since = min(loss.since, now)
        if after is not None:
            loss.prior += messages
            loss.after = after
        self.dropped += messages

    def _trim(self, now: float, slack: int = 1) -> None:
        max_messages, max_bytes = slack * self.max_messages, slack * self.max_bytes
        while self._entries and (self.messages > max_messages or self.nbytes > max_bytes):
            old = self._entries.popleft()
            self._unqueue(old.channel, old.messages)
            self.messages -= old.messages
            self.nbytes -= old.size
            self.lose(old.channel, old.messages, now)

    def _unqueue(self, channel: str, messages: int) -> None:
        left = self.queued.get(channel, 0) - messages
        if left > 0:
            self.queued[channel] = left
        else:
            self.queued.pop(channel, None)

    def defer(self, channel: str, until: float) -> None:
        """Leave ``channel``'s entries and losses in the buffer, in order, until ``until``
        (``take``'s ``now``): Redis refused them; the other channels go on."""
        self._deferred[channel] = until

    def _expire(self, now: float) -> None:
        for channel, until in list(self._deferred.items()):
            if until <= now:
                del self._deferred[channel]

    def ready(self, now: float) -> bool:
        """Whether ``take(now=now)`` would take anything."""
        self._expire(now)
        if not self._deferred:
            return bool(self)
        deferred = self._deferred
        return any(c not in deferred for c in self._losses) or any(
            e.channel not in deferred for e in self._entries
        )

    def next_due(self) -> float | None:
        """When the first deferred channel may be taken again (None: none is deferred)."""
        return min(self._deferred.values(), default=None)

    def take(
        self,
        max_bytes: int | None = None,
        entry_max: int = ENTRY_MAX_BYTES,
        entry_max_messages: int | None = None,
        now: float = float("inf"),
    ) -> Flush:
        """Remove the oldest entries (up to ``max_bytes``, by default half the buffer's byte
        bound, ``FLUSH_SHARE``, at most ``FLUSH_MAX_BYTES``; at least one) and every pending
        loss, but those of channels deferred past ``now`` (``defer``).

        Consecutive blobs of one channel are joined up to ``entry_max`` bytes (and
        ``entry_max_messages`` messages), so a flush writes few, large stream entries.
        """
        self._expire(now)
        if max_bytes is None:
            max_bytes = max(ENTRY_MAX_BYTES, min(FLUSH_MAX_BYTES, self.max_bytes // FLUSH_SHARE))
        if self._deferred:
            return self._take_around(max_bytes, entry_max, entry_max_messages)
        flush = Flush(losses=self._losses)
        self._losses = {}
        self._take_into(flush, max_bytes)
        self._group(flush, entry_max, entry_max_messages)
        self._unslack()
        return flush

    def _unslack(self) -> None:
        if self.filled() <= 1:
            self._slack = 1

    def _take_around(self, max_bytes: int, entry_max: int, entry_max_messages: int | None) -> Flush:
        """``take`` while channels are deferred: theirs stay, in order (rare: a full scan)."""
        deferred = self._deferred
        flush = Flush(losses={c: v for c, v in self._losses.items() if c not in deferred})
        self._losses = {c: v for c, v in self._losses.items() if c in deferred}
        staying: deque[Entry] = deque()
        taking: deque[Entry] = deque()
        for entry in self._entries:
            (staying if entry.channel in deferred else taking).append(entry)
        self._entries = taking
        self._take_into(flush, max_bytes)
        staying.extend(self._entries)
        self._entries = staying
        self._group(flush, entry_max, entry_max_messages)
        self._unslack()
        return flush

    def _take_into(self, flush: Flush, max_bytes: int) -> None:
        # Nor more messages than the buffer's bound: a flush given back (``restore``, up to
        # twice the bounds) then never drops what was routed while it was in flight.
        entries, max_messages = self._entries, self.max_messages
        while entries and (
            not flush.taken
            or (
                flush.nbytes + entries[0].size <= max_bytes
                and flush.messages + entries[0].messages <= max_messages
            )
        ):
            entry = entries.popleft()
            self._unqueue(entry.channel, entry.messages)
            flush.taken.append(entry)
            flush.messages += entry.messages
            flush.nbytes += entry.size
        self.messages -= flush.messages
        self.nbytes -= flush.nbytes

    @staticmethod
    def _group(flush: Flush, entry_max: int, entry_max_messages: int | None) -> None:
        # Group per channel, keeping each channel's order; join small blobs.
        pending: dict[str, tuple[list[Entry], int, int]] = {}
        for entry in flush.taken:
            parts, size, count = pending.get(entry.channel, ([], 0, 0))
            if parts and (
                parts[-1].group != entry.group
                or size + len(entry.blob) > entry_max
                or (entry_max_messages is not None and count + entry.messages > entry_max_messages)
            ):
                flush.entries.setdefault(entry.channel, []).append(_joined(parts, count))
                parts, size, count = [], 0, 0
            parts.append(entry)
            pending[entry.channel] = (parts, size + len(entry.blob), count + entry.messages)
        for channel, (parts, _, count) in pending.items():
            flush.entries.setdefault(channel, []).append(_joined(parts, count))

    def restore(self, flush: Flush, now: float, slack: int = 1, *, regroup: bool = True) -> None:
        """Give back a flush that was not written: first in line again, then re-bounded
        to ``slack`` times the buffer's bounds (the oldest dropped past them, counted).
        A flush Redis did not answer is bounded as routed batches are (1); entries it
        answered for (a reader behind, a refusal) may take up to one buffer more, 2, until a
        take brings the buffer under its bounds again (batches routed meanwhile too: the
        inputs route on while a flush is in flight, and the gate holds them once the buffer
        is over half full, ``ChannelPushback``); dropping them was a loss the node made
        itself. Without ``regroup`` (a flush that may have run, its reply lost),
        its entries are joined again exactly as they were, never with newer ones."""
        if regroup:
            for entry in flush.taken:
                entry.group = 0
        else:
            self._groups += 1
            for entry in flush.taken:
                if not entry.group:
                    entry.group = self._groups
        self._entries.extendleft(reversed(flush.taken))
        for entry in flush.taken:
            self.queued[entry.channel] = self.queued.get(entry.channel, 0) + entry.messages
        self.messages += flush.messages
        self.nbytes += flush.nbytes
        for channel, loss in flush.losses.items():
            mine = self._losses.get(channel)
            if mine is None:
                self._losses[channel] = loss
            else:
                mine.count += loss.count
                mine.since = min(mine.since, loss.since)
                mine.prior += loss.prior
                mine.after = mine.after or loss.after
        self._slack = slack
        self._trim(now, slack)


def _joined(parts: list[Entry], count: int) -> tuple[bytes, int, list[object] | None]:
    blob = parts[0].blob if len(parts) == 1 else b"".join(entry.blob for entry in parts)
    kept = [entry.kept for entry in parts]
    return blob, count, None if any(k is None for k in kept) else kept
