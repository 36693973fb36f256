"""``TailPump``: one task that writes the live lines of every tail on a plain TCP connection.

A tail as its own task wakes for each few lines: a task switch, cancel scopes, an h11 event
and trio's ``send_all`` per chunk, about 15 µs. With 1,000 channels fed round-robin that
was the whole cost (py-spy, ``bench/tails.py`` syslog-c8-ch1000: the tails' send path was
57 % of the samples, at 57 k lines/s and a full core). Here a following tail whose HTTP
server offers a ``DirectSink`` parks its task and is *attached*: the router marks its
channel (``ChannelConsumer``), and the pump, once per linger (``PumpRounds``, adaptive, at
most ``MAX_TAIL_LINGER``: a tail is read by a person), reads the ring from each attached
tail's cursor, encodes the lines natively and writes them framed with one non-blocking
``os.write``. Tails of one channel at the same cursor with the same filters share one read
and one encoding.

What is not that fast path goes back to the tail's own task: a write the socket did not
take whole (the task sends the rest under the server's send timeout, judged slow by
``TailHolds`` after ``slow_after``), an error (the client is gone), a removed channel, the
end of its time, a keep-alive due. Pushback is the tails' rule (``TailHolds``): a tail
behind by ``high_water`` holds its channel's inputs until it is back under half of that.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import trio

from ..native import l11_line, session_lines
from ..router import NEVER, Channel, PumpRounds
from ..web import DirectSink
from .pushback import TailHold, TailHolds
from .sse import sse_event

TAIL_READ_MESSAGES = 1024
TAIL_READ_BYTES = 256 * 1024
# After a wake-up a tail gathers lines this long (unless this many are already waiting):
# one chunk of many lines costs little more to send than a chunk of one.
TAIL_LINGER_SECONDS = 0.01
TAIL_LINGER_MESSAGES = 256
# The longest the pump lingers however costly its rounds: a tail is read by a person.
# bench/tails.py, 1,000 channels round-robin, p99 at 100 k msgs/s: 30 ms at 15 ms, 44 ms at
# 18 ms, 54-67 ms at 25 ms; lines/s at the readers 0.77-1.0 M at 15 ms, 0.63-0.69 M at 12 ms.
MAX_TAIL_LINGER = 0.015
# Chunks one tail may write in one round before the others get their turn.
MAX_WRITES_PER_ROUND = 4


class PumpedTail:
    """A following tail, written by the pump while its task is parked."""

    __slots__ = (
        "channel",
        "cursor",
        "ps",
        "source",
        "events",
        "sink",
        "hold",
        "wake",
        "partial",
        "error",
        "removed",
        "last_read_at",
        "sent_at",
    )

    def __init__(
        self,
        channel: Channel,
        cursor: int,
        sink: DirectSink,
        *,
        ps: bytes | None,
        source: bytes | None,
        events: bool,
        hold: TailHold | None,
        last_read_at: float,
    ) -> None:
        self.channel = channel
        self.cursor = cursor
        self.ps = ps
        self.source = source
        self.events = events
        self.sink = sink
        self.hold = hold
        self.wake = trio.Event()
        # Why it was handed back: framed bytes still to send, a write error, its channel
        # removed (and everything written).
        self.partial: bytes | None = None
        self.error: OSError | None = None
        self.removed = False
        # Wall clock of its last ring read (the L11 notice's time span).
        self.last_read_at = last_read_at
        # trio time it last sent something (an event stream's keep-alive is due after).
        self.sent_at = trio.current_time()


class TailPump:
    """Writes for every attached tail; the router's ``ChannelConsumer`` for their channels."""

    def __init__(
        self,
        *,
        holds: TailHolds | None = None,
        linger: float = TAIL_LINGER_SECONDS,
        linger_messages: int = TAIL_LINGER_MESSAGES,
        max_linger: float = MAX_TAIL_LINGER,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.holds = holds
        self.rounds = PumpRounds(linger, max_linger)
        self.linger_messages = max(1, linger_messages)
        self.wall_clock = wall_clock
        self._tails: dict[Channel, list[PumpedTail]] = {}
        # The lowest cursor of each channel's tails when the pump last wrote for it.
        self._marks: dict[Channel, int] = {}
        self.writes = 0
        self.handed_back = 0

    @property
    def attached(self) -> int:
        return sum(len(tails) for tails in self._tails.values())

    # -- the tail side --------------------------------------------------------------------
    async def park(self, tail: PumpedTail) -> None:
        """Let the pump write for ``tail`` until it hands it back (or we are cancelled).

        On return ``tail.partial``, ``tail.error`` or ``tail.removed`` say why; none set:
        cancelled (the caller's deadline, its keep-alive, a kill)."""
        channel = tail.channel
        tail.wake = trio.Event()
        self._tails.setdefault(channel, []).append(tail)
        base = self._marks.get(channel)
        self._marks[channel] = tail.cursor if base is None else min(base, tail.cursor)
        try:
            self.mark(channel)
            channel.rearm()
            await tail.wake.wait()
        finally:
            self._detach(tail)

    def _detach(self, tail: PumpedTail) -> None:
        channel = tail.channel
        tails = self._tails.get(channel)
        if tails is None or tail not in tails:
            return
        tails.remove(tail)
        if not tails:
            del self._tails[channel]
            del self._marks[channel]
            self.rounds.discard(channel)
            channel.unwatch(self)

    # -- the router side (Channel.notify) -----------------------------------------------------
    def mark(self, channel: Channel) -> None:
        """New messages (or a hold, or a removal) on a channel with attached tails."""
        if channel not in self._tails:
            return
        head = channel.ring.head
        base = self._marks[channel]
        removed = channel.ring.owner is None
        if head <= base and not removed:
            channel.watch(self, head + 1)
            return
        if removed or channel.held or head - base >= self.linger_messages:
            channel.watch(self, NEVER)  # until it is written
            self.rounds.urgent(channel)
        else:
            channel.watch(self, base + self.linger_messages)
            self.rounds.dirty(channel)

    # -- the task -----------------------------------------------------------------------------
    async def run(self) -> None:
        await self.rounds.run(self._write_channel)

    def _write_channel(self, channel: Channel) -> None:
        tails = self._tails.get(channel)
        if not tails:
            return
        now = self.wall_clock()
        sent_at = trio.current_time()
        # Tails at the same cursor with the same filters share a read and its encoding.
        shared: dict[tuple[int, bytes | None, bytes | None, bool], tuple[bytes, int, int]] = {}
        more = False
        for tail in list(tails):
            more = self._write(tail, now, sent_at, shared) or more
        if channel not in self._tails:
            return
        ring = channel.ring
        if ring.owner is None:
            for tail in list(self._tails[channel]):
                if tail.cursor >= ring.head:
                    tail.removed = True
                    self._hand_back(tail)
            return
        tails = self._tails.get(channel)
        if not tails:
            return
        base = self._marks[channel] = min(tail.cursor for tail in tails)
        if more:
            self.rounds.urgent(channel)
        elif not self.rounds.is_urgent(channel):
            channel.watch(self, max(base, ring.head) + 1)
            channel.rearm()

    def _write(
        self,
        tail: PumpedTail,
        now: float,
        sent_at: float,
        shared: dict[tuple[int, bytes | None, bytes | None, bool], tuple[bytes, int, int]],
    ) -> bool:
        """Write what ``tail`` has to read; True if more is left after this round's share."""
        ring = tail.channel.ring
        holds, hold = self.holds, tail.hold
        more = False
        for turn in range(MAX_WRITES_PER_ROUND + 1):
            if holds is not None and hold is not None:
                holds.reading(hold, ring.head - tail.cursor)
            if ring.head <= tail.cursor:
                break  # caught up
            if turn == MAX_WRITES_PER_ROUND:
                more = True  # the rest in the next round, after the others
                break
            key = (tail.cursor, tail.ps, tail.source, tail.events)
            found = shared.get(key)
            if found is None:
                batch, cursor, lost = ring.read(tail.cursor, TAIL_READ_MESSAGES, TAIL_READ_BYTES)
                data = b""
                if lost:
                    notice = l11_line(lost, tail.last_read_at, now)
                    data = sse_event(notice) if tail.events else notice
                if len(batch):
                    lines, _count = session_lines(batch, tail.ps, tail.source, sse=tail.events)
                    data += lines
                found = (tail.sink.frame(data) if data else b"", cursor, lost)
                if not lost:  # a notice spans this tail's own time since its last read
                    shared[key] = found
            framed, tail.cursor, _lost = found
            tail.last_read_at = now
            if not framed:
                continue  # the filters took every line
            try:
                written = os.write(tail.sink.fd, framed)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                tail.error = exc
                self._hand_back(tail)
                return False
            self.writes += 1
            if written < len(framed):
                tail.partial = framed[written:]
                self._hand_back(tail)
                return False
            tail.sent_at = sent_at
        if holds is not None and hold is not None:
            holds.waiting(hold, tail.cursor)
        return more

    def _hand_back(self, tail: PumpedTail) -> None:
        self.handed_back += 1
        self._detach(tail)
        tail.wake.set()
