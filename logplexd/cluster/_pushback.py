"""Pushback in Redis mode: hold a channel's local inputs while this node is behind on it.

On one node the ring is the only place a message waits, and a drain that would take more
holds the channel (``Channel.hold``). In Redis mode a message this node routed waits in two
more places before a local consumer gets it: the outbound buffer (and the flush in flight),
then the stream, until the follower has read it. The stream keeps the newest ``keep``
messages of a channel (``channel_buffer_messages``), and up to 4 x ``keep`` for a follower
that is behind (``APPEND``, which then answers ``behind`` and the writer keeps the rest).
``ChannelPushback`` holds the channel once this node's share of that wait passes
``HOLD_KEEPS`` x ``keep`` (or its writer keeps entries for a follower far behind, filling
the buffer) and releases it below half of that: the inputs feeding the channel then stop
reading (TCP flow control reaches the producer) and ``POST /logs`` waits, as for a drain
on one node. The unwritten part waits in the channel's staging ring (``ClusterRegistry``),
``STAGING_KEEPS`` x ``keep`` deep: room for the routed batches that pass the mark.

The outbound buffer is bounded as a whole too (``redis_buffer_messages``/``_bytes``), and
with many channels each can be well under its own share of ``keep`` while together they fill
it. Once something is routed while it is more than half full, the writer is the bottleneck
of every channel that feeds it: ``OutboundGate`` closes, and every input that routes waits
on it (``RouteCounts.held``) until the buffer is under a quarter again. One gate instead of
a hold per routed channel: with 1,000 busy channels each routed batch then reported hundreds
of held channels to Python, and each input waited on each of them (bench/RESULTS.md,
"Session of 2026-12-06 (eighth)"). While the buffer is over a quarter no channel is released
either; a channel that caught up meanwhile is looked at again with the rest once it is under.

It never holds while Redis is unreachable: an outage is not this node being slow, and the
outbound buffer then drops its oldest entries with an exact loss marker instead of stalling
every producer for as long as the outage lasts (docs/SCALING.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import trio

from ..router import Channel

# A channel is held once this node is this many ``keep``s behind on it (released at half).
# Against holding at one, two took a one-connection flood at 1.11x the messages a second
# (15 of 20 pairs faster) and 0.95x the CPU (bench/RESULTS.md, "Session of 2026-12-06
# (seventh)"); three against two, 1.05x with one connection and 1.03x with eight on one
# channel, a third fewer holds ("Session of 2026-12-07 (second)"). It stays under what the
# stream keeps for a follower behind (``READER_SLACK``, 4): what a routed batch passes the
# mark by must fit in between.
HOLD_KEEPS = 3
# How deep a channel's staging ring is, in ``keep``s: the hold mark, plus room for the
# routed batches that pass it.
STAGING_KEEPS = HOLD_KEEPS + 1


class OutboundGate:
    """Closed by ``ChannelPushback`` once something is routed while this node's outbound
    buffer is over half full, opened once it is under a quarter: meanwhile every input that
    routes anything waits (``wait_released``, as on a held channel)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.closed = False
        self._opened: trio.Event | None = None
        self.closings = 0  # times it closed (metrics and tests)
        self._clock = clock
        self._closed_at = 0.0
        self._closed_for = 0.0

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.closings += 1
            self._closed_at = self._clock()

    def open(self) -> None:
        if self.closed:
            self._closed_for += self._clock() - self._closed_at
        self.closed = False
        opened, self._opened = self._opened, None
        if opened is not None:
            opened.set()

    @property
    def closed_seconds(self) -> float:
        """How long the gate has been closed in all, the closing in progress included:
        the time every input of this node waited for its writer."""
        if self.closed:
            return self._closed_for + self._clock() - self._closed_at
        return self._closed_for

    async def wait_released(self) -> None:
        """Return once the gate is open (at once when it is)."""
        while self.closed:
            if self._opened is None:
                self._opened = trio.Event()
            await self._opened.wait()


class ChannelPushback:
    """The holder of channels this node is behind on. ``behind(name)`` counts, for one
    channel, the messages this node routed but has not written yet plus those it wrote
    that its follower (if it follows the channel) has not read back yet."""

    def __init__(
        self,
        keep: int,
        behind: Callable[[str], int],
        reachable: Callable[[], bool],
        filled: Callable[[], float] = lambda: 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The stream never trims what this node's follower has not read (APPEND's floor,
        # up to 4 x ``keep``), and the staging ring the unwritten part waits in is
        # ``STAGING_KEEPS`` x ``keep`` deep, so up to ``HOLD_KEEPS`` x ``keep`` behind loses
        # nothing.
        self.high = max(1, HOLD_KEEPS * keep)
        self.low = self.high // 2
        self._behind = behind
        self._reachable = reachable
        # How full the outbound buffer is, 0 to 1 (the larger of messages and bytes).
        self._filled = filled
        # Whether every held channel is to be looked at once the buffer is under a quarter
        # full: progress came while it was fuller, and was not looked at then.
        self._look_at_all = False
        self.held: dict[str, Channel] = {}
        # Closed while the outbound buffer is over half full (the inputs wait on it).
        self.gate = OutboundGate(clock)
        # Called when a channel is held or the gate closes: inputs now wait for the writer
        # (which then ends its linger, ``Writer.hurry``).
        self.on_hold: Callable[[], None] | None = None
        # Times a channel was held or the gate closed (metrics and tests).
        self.holds = 0

    def routed(self, channel: Channel) -> None:
        """After this node buffered messages of ``channel`` for the writer."""
        if not self._reachable():
            return
        if self._filled() > 0.5:
            if not self.gate.closed:
                self.gate.close()
                self._held_now()
            return
        name = channel.name
        if name not in self.held and self._behind(name) > self.high:
            self.held[name] = channel
            channel.hold(self)
            self._held_now()

    def _held_now(self) -> None:
        self.holds += 1
        if self.on_hold is not None:
            self.on_hold()

    def taken(self) -> None:
        """The writer took a flush out of the outbound buffer (it is being sent): the gate
        opens if that left the buffer under a quarter full. It waited for the flush's first
        reply before: with 1,000 busy channels a flush of ~150,000 messages takes 15-20 ms
        to send (Redis runs it as it reads it), and every input waited meanwhile, ~0.3 s of
        a 2.5 s flood. The flush in flight is bounded as the buffer is (``FLUSH_SHARE``, and
        the buffer's bound in messages): the memory held is what it was once its first
        reply came, and given back it fits beside what was routed meanwhile
        (``OutboundBuffer.restore``). With the deeper readers' rings
        (``redis_ring_messages`` 8192), 1.13x the rate at 0.94x the CPU from empty, 1.19x
        at 0.81x at the steady state (bench/RESULTS.md, "Session of 2026-12-07
        (eleventh)")."""
        if self.gate.closed and self._filled() <= 0.25:
            self.gate.open()

    def progressed(self, names: Iterable[str]) -> None:
        """After a flush was written (or a follower read further) for ``names``."""
        if not self.held and not self.gate.closed:
            return
        if not self._reachable():
            self.release_all()
            return
        if self._filled() > 0.25:
            # The writer is behind on every channel it has. ``names`` may have caught up
            # meanwhile and see no progress of their own again (their last flush landed):
            # looked at with the rest once the buffer is under a quarter, or they would
            # stay held for good.
            self._look_at_all = True
            return
        self.gate.open()
        if self._look_at_all:
            # Under a quarter again: every held channel is looked at once.
            self._look_at_all = False
            names = list(self.held)
        for name in names:
            channel = self.held.get(name)
            if channel is not None and self._behind(name) <= self.low:
                del self.held[name]
                channel.release(self)

    def release_all(self) -> None:
        self.gate.open()
        held, self.held = self.held, {}
        for channel in held.values():
            channel.release(self)
