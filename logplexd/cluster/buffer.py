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
# One flush (one round trip) carries at most this much, so a catch-up after an outage is
# a series of bounded requests.
FLUSH_MAX_BYTES = 8 * 1024 * 1024


@dataclass(slots=True)
class Entry:
    channel: str
    blob: bytes
    messages: int


@dataclass(slots=True)
class Loss:
    """Messages of one channel dropped before reaching Redis, since ``since`` (wall clock)."""

    count: int = 0
    since: float = 0.0


@dataclass(slots=True)
class Flush:
    """What one round trip writes: per channel the blobs (each at most ENTRY_MAX_BYTES,
    with its message count) and the losses to announce."""

    entries: dict[str, list[tuple[bytes, int]]] = field(default_factory=dict)
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
        # Totals since start, for metrics and tests.
        self.pushed = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries or self._losses)

    def push(self, channel: str, blob: bytes, messages: int, now: float) -> None:
        if messages <= 0:
            return
        self._entries.append(Entry(channel, blob, messages))
        self.queued[channel] = self.queued.get(channel, 0) + messages
        self.messages += messages
        self.nbytes += len(blob)
        self.pushed += messages
        self._trim(now)

    def lose(self, channel: str, messages: int, now: float) -> None:
        """Count messages lost before they could even be buffered."""
        if messages <= 0:
            return
        loss = self._losses.get(channel)
        if loss is None:
            loss = self._losses[channel] = Loss(0, now)
        loss.count += messages
        self.dropped += messages

    def _trim(self, now: float) -> None:
        while self._entries and (self.messages > self.max_messages or self.nbytes > self.max_bytes):
            old = self._entries.popleft()
            self._unqueue(old.channel, old.messages)
            self.messages -= old.messages
            self.nbytes -= len(old.blob)
            self.lose(old.channel, old.messages, now)

    def _unqueue(self, channel: str, messages: int) -> None:
        left = self.queued.get(channel, 0) - messages
        if left > 0:
            self.queued[channel] = left
        else:
            self.queued.pop(channel, None)

    def take(
        self,
        max_bytes: int = FLUSH_MAX_BYTES,
        entry_max: int = ENTRY_MAX_BYTES,
        entry_max_messages: int | None = None,
    ) -> Flush:
        """Remove the oldest entries (up to ``max_bytes``, at least one) and every pending loss.

        Consecutive blobs of one channel are joined up to ``entry_max`` bytes (and
        ``entry_max_messages`` messages), so a flush writes few, large stream entries.
        """
        flush = Flush(losses=self._losses)
        self._losses = {}
        entries = self._entries
        while entries and (not flush.taken or flush.nbytes + len(entries[0].blob) <= max_bytes):
            entry = entries.popleft()
            self._unqueue(entry.channel, entry.messages)
            flush.taken.append(entry)
            flush.messages += entry.messages
            flush.nbytes += len(entry.blob)
        self.messages -= flush.messages
        self.nbytes -= flush.nbytes
        # Group per channel, keeping each channel's order; join small blobs.
        pending: dict[str, tuple[list[bytes], int, int]] = {}
        for entry in flush.taken:
            parts, size, count = pending.get(entry.channel, ([], 0, 0))
            if parts and (
                size + len(entry.blob) > entry_max
                or (entry_max_messages is not None and count + entry.messages > entry_max_messages)
            ):
                flush.entries.setdefault(entry.channel, []).append((b"".join(parts), count))
                parts, size, count = [], 0, 0
            parts.append(entry.blob)
            pending[entry.channel] = (parts, size + len(entry.blob), count + entry.messages)
        for channel, (parts, _, count) in pending.items():
            flush.entries.setdefault(channel, []).append((b"".join(parts), count))
        return flush

    def restore(self, flush: Flush, now: float) -> None:
        """Give back a flush that was not written: first in line again, then re-bounded."""
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
        self._trim(now)
