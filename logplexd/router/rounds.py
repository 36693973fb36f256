"""``PumpRounds``: when a pump (one task writing for many consumers) writes which channel.

A pump serves many channels' consumers from one task (the drain pump, the tail pump): a
channel with new messages is *dirty* and lingers, so one write carries many messages; once
the oldest dirty channel has lingered ``current_linger``, every dirty channel is written in
one round. A channel that must not wait (enough gathered, held, removed, more left after a
round) is *urgent* and is written in the next round at once. Between rounds the pump's task
passes a checkpoint, so inputs and other tasks run even when every write succeeds.

With many quiet channels a round costs about a syscall and some Python per channel whatever
the message rate, so the linger grows with the cost of a round (``adaptive_linger``).

A flood's end is not worth a linger: once a daemon that was busy (its loop's thread on the
CPU ``BUSY_SHARE`` of the time since the linger before began, for ``BUSY_SPAN`` times the
idle cushion at least) has had nothing to do for a fiftieth of the linger (``idle_after``,
at least 1 ms), the dirty channels are written at once. 1,000 channels' last messages
otherwise waited out a 55-100 ms linger on an idle loop, a tenth of a 1 M-message run
(bench/e2e c8-ch1000-d1-120: 1.10x the rate with this). Under a steady load that leaves
the loop idle now and then a pump still lingers: writing at every idle moment doubled the
CPU per message of 1,000 channels at 200,000 msgs/s.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from .registry import Channel

try:
    # trio's own idle detection, public as trio.testing.wait_all_tasks_blocked; imported
    # from where it lives because trio.testing imports pytest when it is installed (70 ms
    # and a test framework in a daemon's process).
    from trio._core import wait_all_tasks_blocked as _wait_all_tasks_blocked
except ImportError:  # pragma: no cover - a trio that moved it
    from trio.testing import wait_all_tasks_blocked as _wait_all_tasks_blocked

# A lingering round may take at most this share of the time between two such rounds.
ROUND_SHARE = 0.2

# The share of a linger, and the least real time, every task of the daemon must have been
# blocked (no input arrived, nothing runnable) before a linger ends early; and the share of
# the time before that its loop must have been on the CPU.
IDLE_SHARE = 0.02
MIN_IDLE = 0.001
BUSY_SHARE = 0.75
# ... over at least this many times the idle cushion: a few busy milliseconds (a burst, the
# setting up of a connection) before an idle moment are not a flood that ended.
BUSY_SPAN = 10


def idle_after(linger: float) -> float:
    """How long the daemon must have been idle before a linger of ``linger`` ends early."""
    return max(MIN_IDLE, linger * IDLE_SHARE)


async def _wait_idle(cushion: float) -> None:
    # Costs the loop nothing while tasks are runnable or I/O arrives.
    await _wait_all_tasks_blocked(cushion)


def flood_ended(span: float, cpu: float, cushion: float) -> bool:
    """Whether a loop that used ``cpu`` seconds of ``span`` before being idle for
    ``cushion`` was busy: a flood that ended, not a steady load's idle moment."""
    return span >= BUSY_SPAN * cushion and cpu >= BUSY_SHARE * span


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

    async def run(self, write: Callable[[Channel], None]) -> None:
        """Call ``write(channel)`` for the channels of each round, forever."""
        while True:
            if not self._dirty and not self._urgent:
                await self._work.wait()
                self._work = trio.Event()
                continue
            idle = False
            if not self._urgent and self._dirty:
                cushion = idle_after(self.current_linger)
                # Busy since the linger before this one began: a flood that ends right
                # after a round still counts as one.
                wall, cpu = self._since
                self._since = (time.perf_counter(), self._cpu_clock())
                with trio.move_on_at(self._dirty_since + self.current_linger) as scope:
                    self._linger_scope = scope
                    try:
                        await _wait_idle(cushion)
                        span = time.perf_counter() - wall - cushion
                        idle = flood_ended(span, self._cpu_clock() - cpu, cushion)
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
            started = time.perf_counter()
            for channel in channels:
                self._dirty.pop(channel, None)
                write(channel)
            self.rounds += 1
            if lingered:
                self.current_linger = adaptive_linger(
                    self.linger, time.perf_counter() - started, self.max_linger
                )
            await trio.lowlevel.checkpoint()
