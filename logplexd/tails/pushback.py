"""Pushback for tails (issue 18): a tail that takes what it is sent never gets lapped.

A tail reads its channel's ring through a cursor. When the producers outrun what the tail
path of logplexd sends (the reader would take more: every chunk it was sent went out at
once), the ring used to lap the tail, which then got an L11 for lines it would have taken.
Now such a tail *holds* its channel, as a drain does (``Channel.hold``): the inputs feeding
the channel stop reading until the tail is back under half of ``high_water``.

A tail whose reader refuses data is a slow consumer and must never stall a producer: a
chunk that is still being sent ``slow_after`` seconds after it was handed to the HTTP
writer makes the tail *slow*: its hold is released (by ``TailHolds.run``, since the tail's
own task is blocked in the send), and it holds nothing again until it has caught up. It is
then lapped and told with the exact L11, as before.
"""

from __future__ import annotations

import math

import trio

from ..router import Channel, high_water, pushback_for

# A send that takes longer is slow. Longer than a drain's ``slow_write_after``: a tail's
# reader is often a terminal across the Internet, and what a slow tail loses is lost (L11).
SLOW_AFTER = 0.1
# ``waiting``'s answer when the tail holds nothing: no head to stop lingering at.
NO_MARK = 2**64 - 1


class TailHold:
    """One tail's standing with its channel (a holder of ``Channel.hold``)."""

    __slots__ = ("channel", "guarding", "counted", "slow", "sending_since")

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        # A hold is set (pending or in effect) for this tail.
        self.guarding = False
        # This hold's taking effect was counted (``TailHolds.holds``).
        self.counted = False
        self.slow = False
        # When the chunk being sent was handed to the writer (None: not sending).
        self.sending_since: float | None = None


class TailHolds:
    """The tails' holds, and the one task that releases those of slow readers.

    Per tail: before each chunk goes to the HTTP writer, ``sending`` sets a hold that takes
    effect only if the ring's head passes the tail's cursor by ``high_water`` meanwhile
    (``Channel.hold_from``: the router applies it, so the inputs learn it with the batch
    that crosses the mark, not after the send). At the next read, ``reading`` releases it
    if the tail is back under half of that.
    """

    def __init__(self, *, pushback: bool = True, slow_after: float = SLOW_AFTER) -> None:
        # The daemon's default (``drain_overflow``); a channel's own overflow mode wins.
        self.pushback = pushback
        self.slow_after = slow_after
        self._sending: set[TailHold] = set()
        self._work = trio.Event()
        # Times a tail's hold took effect (it found its channel held by it at a read).
        self.holds = 0
        self.slow_verdicts = 0

    def open(self, channel: Channel) -> TailHold:
        return TailHold(channel)

    def reading(self, hold: TailHold, waiting: int) -> None:
        """Before a ring read that finds ``waiting`` messages unread."""
        channel = hold.channel
        caught_up = waiting <= high_water(channel.ring) // 2
        if caught_up:
            hold.slow = False  # it may hold again
        if hold.guarding and channel.held_by(hold):
            if not hold.counted:
                hold.counted = True
                self.holds += 1
            if caught_up:
                self._release(hold)
        # A guard still pending stays: the next ``sending``/``waiting`` moves its mark (no
        # await comes between), which costs a tail of a quiet channel one dict store a wake.

    def waiting(self, hold: TailHold, cursor: int) -> int:
        """The tail waits for lines past ``cursor`` (or lingers for more): guarded as while
        sending. Returns the head at which it should stop lingering and read."""
        self._guard(hold, cursor)
        return cursor + high_water(hold.channel.ring) if hold.guarding else NO_MARK

    def sending(self, hold: TailHold, cursor: int) -> None:
        """A chunk read up to ``cursor`` goes to the HTTP writer; ``sent`` follows once
        it is out."""
        hold.sending_since = trio.current_time()
        if self._guard(hold, cursor):
            self._sending.add(hold)
            self._work.set()

    def _guard(self, hold: TailHold, cursor: int) -> bool:
        channel = hold.channel
        if hold.slow or not pushback_for(channel, self.pushback):
            self._release(hold)
            return False
        if not channel.held_by(hold):
            hold.guarding = True
            channel.hold_from(hold, cursor + high_water(channel.ring))
        return True

    def sent(self, hold: TailHold) -> None:
        hold.sending_since = None
        self._sending.discard(hold)

    def close(self, hold: TailHold) -> None:
        self.sent(hold)
        self._release(hold)

    def _release(self, hold: TailHold) -> None:
        if hold.guarding:
            hold.guarding = False
            hold.counted = False
            hold.channel.release(hold)

    async def run(self) -> None:
        """Judge slow the guarding tails whose chunk is not out after ``slow_after``.
        Sleeps without a timer while no such tail is sending."""
        while True:
            if not self._sending:
                self._work = trio.Event()
                await self._work.wait()
                continue
            now = trio.current_time()
            due = math.inf
            for hold in list(self._sending):
                since = hold.sending_since
                if since is None or not hold.guarding:
                    self._sending.discard(hold)
                elif since + self.slow_after <= now:
                    hold.slow = True
                    self.slow_verdicts += 1
                    self._sending.discard(hold)
                    self._release(hold)
                else:
                    due = min(due, since + self.slow_after)
            if due < math.inf:
                await trio.sleep_until(due)
