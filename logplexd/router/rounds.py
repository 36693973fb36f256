"""``PumpRounds``: when a pump (one task writing for many consumers) writes which channel.

A pump serves many channels' consumers from one task (the drain pump, the tail pump): a
channel with new messages is *dirty* and lingers, so one write carries many messages; once
the oldest dirty channel has lingered ``current_linger``, every dirty channel is written in
one round. A channel that must not wait (enough gathered, held, removed, more left after a
round) is *urgent* and is written in the next round at once. Between rounds the pump's task
passes a checkpoint, so inputs and other tasks run even when every write succeeds.

With many quiet channels a round costs about a syscall and some Python per channel whatever
the message rate, so the linger grows with the cost of a round (``adaptive_linger``).

A flood's end is not worth a linger. While it lingers a pump looks, every twentieth of the
linger (``look_interval``, at least 1 ms), at the CPU time the loop's thread used meanwhile:
when it used next to none the daemon is idle, and if before that it was busy (on the CPU
``BUSY_SHARE`` of the time since the linger before began, over ``BUSY_SPAN`` such looks at
least: ``flood_ended``) the dirty channels are written at once. 1,000 channels' last
messages otherwise waited out a 55-100 ms linger on an idle loop, a tenth of a 1 M-message
run (bench/e2e c8-ch1000-d1-120: 1.07x the rate with this). Under a steady load that
leaves the loop idle now and then a pump still lingers: writing at every idle moment
doubled the CPU per message of 1,000 channels at 200,000 msgs/s.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import trio

from .registry import Channel

# A lingering round may take at most this share of the time between two such rounds.
ROUND_SHARE = 0.2

# How often a lingering pump looks whether the daemon went idle: this share of the linger,
# never more often than MIN_IDLE (a look is a timer and a task step, ~10 us). A look that
# finds the loop's thread used at most IDLE_CPU of it finds the daemon idle.
IDLE_SHARE = 0.05
MIN_IDLE = 0.001
IDLE_CPU = 0.1
# Busy: on the CPU this share of the time since the linger before began, and that for at
# least this many looks (a few busy milliseconds, a burst or a connection's set-up, before
# an idle moment are not a flood that ended).
BUSY_SHARE = 0.75
BUSY_SPAN = 5


def look_interval(linger: float) -> float:
    """How often a pump lingering ``linger`` looks whether the daemon went idle."""
    return max(MIN_IDLE, linger * IDLE_SHARE)


def idle_over(cpu: float, span: float) -> bool:
    """Whether a loop whose thread used ``cpu`` seconds of the last ``span`` was idle."""
    return cpu <= IDLE_CPU * span


def flood_ended(span: float, cpu: float, look: float) -> bool:
    """Whether a loop that used ``cpu`` seconds of ``span`` before an idle ``look`` was
    busy: a flood that ended, not a steady load's idle moment."""
    return span >= BUSY_SPAN * look and cpu >= BUSY_SHARE * span


def adaptive_linger(base: float, round_seconds: float, max_linger: float) -> float:
    """How long a pump lingers after a round that took ``round_seconds``: ``base`` (the
    configured linger) unless the round would then take more than ``ROUND_SHARE`` of the
    time, never past ``max_linger`` (nor below ``base``)."""
    return min(max(base, round_seconds / ROUND_SHARE), max(base, max_linger))


class PumpRounds:
    """The dirty and urgent channels of one pump, and its loop (``run``)."""

    def __init__(
        self,
        linger: float,
        max_linger: float,
        *,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self.linger = linger
        self.max_linger = max_linger
        # The linger in force: ``linger``, longer while rounds are costly.
        self.current_linger = linger
        # Insertion order: the oldest dirty channel first.
        self._dirty: dict[Channel, None] = {}
        self._urgent: dict[Channel, None] = {}
        self._dirty_since = 0.0
        self._work = trio.Event()
        # The scope of the pump's linger, cancelled by ``urgent``.
        self._linger_scope: trio.CancelScope | None = None
        # The loop thread's CPU time (tests give one that does not depend on the machine's
        # load: a busy loop that other processes preempt is on the CPU less of the time).
        self._cpu_clock = cpu_clock
        # When the last linger began: (real time, CPU time).
        self._since = (time.perf_counter(), cpu_clock())
        self.rounds = 0
        # Rounds written because the daemon was idle before the linger was out.
        self.idle_rounds = 0

    async def _flood_ended(self, look: float, since: tuple[float, float]) -> bool:
        """Look every ``look`` seconds until the loop's thread used (next to) no CPU in one;
        then whether it was busy before that, since ``since`` (real time, CPU time)."""
        clock = self._cpu_clock
        while True:
            started, used = time.perf_counter(), clock()
            await trio.sleep(look)
            if idle_over(clock() - used, look):
                return flood_ended(started - since[0], used - since[1], look)

    def dirty(self, channel: Channel) -> None:
        """``channel`` has new messages: write it with the next lingering round."""
        if channel not in self._dirty:
            if not self._dirty:
                self._dirty_since = trio.current_time()
            self._dirty[channel] = None
        self._work.set()

    def urgent(self, channel: Channel) -> None:
        """Write ``channel`` in the next round, without lingering."""
        self._urgent[channel] = None
        if self._linger_scope is not None:
            self._linger_scope.cancel()
        self._work.set()

    def is_urgent(self, channel: Channel) -> bool:
        return channel in self._urgent

    def discard(self, channel: Channel) -> None:
        self._dirty.pop(channel, None)
        self._urgent.pop(channel, None)

    async def run(
        self,
        write: Callable[[Channel], None],
        *,
        started: Callable[[int], None] | None = None,
        finish: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Call ``write(channel)`` for the channels of each round, forever: after
        ``started(n)`` (a round of ``n`` channels), before ``finish()`` (what a pump
        gathered in the round and writes at its end)."""
        while True:
            if not self._dirty and not self._urgent:
                await self._work.wait()
                self._work = trio.Event()
                continue
            idle = False
            if not self._urgent and self._dirty:
                # Busy since the linger before this one began: a flood that ends right
                # after a round still counts as one.
                since = self._since
                self._since = (time.perf_counter(), self._cpu_clock())
                with trio.move_on_at(self._dirty_since + self.current_linger) as scope:
                    self._linger_scope = scope
                    try:
                        idle = await self._flood_ended(look_interval(self.current_linger), since)
                        if not idle:
                            await trio.sleep_forever()  # the linger's deadline ends it
                    finally:
                        self._linger_scope = None
            self._work = trio.Event()
            lingered = bool(self._dirty) and (
                idle or trio.current_time() >= self._dirty_since + self.current_linger
            )
            if idle:
                self.idle_rounds += 1
            if lingered:
                channels = list(self._dirty)
                channels.extend(c for c in self._urgent if c not in self._dirty)
                self._dirty.clear()
            else:
                channels = list(self._urgent)
            self._urgent.clear()
            began = time.perf_counter()
            if started is not None:
                started(len(channels))
            for channel in channels:
                self._dirty.pop(channel, None)
                write(channel)
            if finish is not None:
                await finish()
            self.rounds += 1
            if lingered:
                self.current_linger = adaptive_linger(
                    self.linger, time.perf_counter() - began, self.max_linger
                )
            await trio.lowlevel.checkpoint()
